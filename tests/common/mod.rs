#[allow(dead_code)]
pub mod browser;
#[allow(dead_code)]
pub mod daemon;
pub mod etcd;
pub mod market;
#[allow(dead_code)]
pub mod telegram;
pub mod vectors;

use std::path::Path;

/// Run `mycelium --home HOME --json ARGS... PATH` and parse its JSON output; fails the test
/// with the command's stderr if it does not succeed.
#[allow(dead_code)]
pub fn cli_json(home: &Path, args: &[&str], path: &Path) -> serde_json::Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
        .arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `mycelium` binary on home `home` (`MYCELIUM_HOME` cleared).
#[allow(dead_code)]
pub fn my(home: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("mycelium").unwrap();
    c.env_remove("MYCELIUM_HOME").arg("--home").arg(home);
    c
}

/// Run `mycelium --home HOME --json ARGS...` and parse its JSON output; fails the test
/// with the command's stderr if it does not succeed.
#[allow(dead_code)]
pub fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let out = my(home).arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
