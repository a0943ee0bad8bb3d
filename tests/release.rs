//! Releases as bundles: published on a feed that loses a quarter of its files, a release
//! reaches a node and `update` installs it over a binary (a copy in a temp dir), keeping the
//! old one for `--rollback`; forged, downgraded, partial and tampered releases are refused
//! with the reason and nothing changes; `spread` writes a stick a person with nothing can
//! start from and a node learns the release from; a daemon says an update waits and does
//! not install it.

use mycelium::adu::release::{self as ar, ReleaseChunk, ReleaseFile, ReleaseManifest};
use mycelium::node::Node;
use mycelium::release::{self, Machine, Status};
use mycelium::time::DtnTime;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::daemon::Daemon;
use common::{json, my};

/// The target the tests' releases are for (any machine can judge it with `--target`).
const TARGET: &str = "x86_64-unknown-linux-musl";

fn id(h: &Path) -> String {
    json(h, &["id"])["node_id"].as_str().unwrap().to_string()
}

fn init(h: &Path) -> String {
    my(h).arg("init").assert().success();
    id(h)
}

/// A stand-in Mycelium binary: a shell script that prints its version, padded past one
/// chunk with bytes the shell never reads (it exits first).
fn fake_binary(path: &Path, version: &str, pad: usize) -> Vec<u8> {
    let mut b = format!("#!/bin/sh\necho \"mycelium {version}\"\nexit 0\n").into_bytes();
    let mut x: u32 = version.bytes().map(u32::from).sum::<u32>() | 1;
    for _ in 0..pad {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.push((x >> 24) as u8);
    }
    std::fs::write(path, &b).unwrap();
    set_exec(path);
    b
}

fn set_exec(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_version(path: &Path) -> String {
    let out = std::process::Command::new(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Files in `dir` other than `keep`, by name.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_release_on_a_lossy_feed_reaches_a_node_and_update_installs_it_then_rolls_back() {
    let t = tempfile::tempdir().unwrap();
    // P holds the release key; G, the uplink, publishes the feed; R receives it.
    let (p, g, r) = (t.path().join("p"), t.path().join("g"), t.path().join("r"));
    let p_id = init(&p);
    let g_id = init(&g);
    init(&r);

    // The publisher's dist/ (binaries of a few hundred kB: a multi-chunk binary is
    // installed in the next test, without a feed, which is slow to code unoptimised).
    let dist = t.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let new = fake_binary(&dist.join(format!("mycelium-{TARGET}")), "0.2.0", 600_000);
    fake_binary(
        &dist.join("mycelium-aarch64-unknown-linux-musl"),
        "0.2.0",
        1000,
    );
    let pubd = json(
        &p,
        &[
            "release",
            "publish",
            dist.to_str().unwrap(),
            "--version",
            "0.2.0",
            "--notes",
            "faster import",
        ],
    );
    assert_eq!(pubd["version"], "0.2.0");
    assert_eq!(pubd["bundles"], 3, "{pubd}"); // a chunk of each binary and the manifest

    // By stick to the uplink, then on a feed with half again as many symbols; every
    // fourth file is lost.
    let stick = t.path().join("stick");
    my(&p).arg("export").arg(&stick).assert().success();
    json(&g, &["import", stick.to_str().unwrap()]);
    let feed = t.path().join("feed");
    json(
        &g,
        &[
            "broadcast",
            "publish",
            feed.to_str().unwrap(),
            "--overhead",
            "0.5",
            "--file-size",
            "64KiB",
        ],
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&feed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{} feed files", files.len());
    let mut lost = 0;
    for f in files.iter().skip(1).step_by(4) {
        std::fs::remove_file(f).unwrap();
        lost += 1;
    }
    assert!(lost * 4 >= files.len() - 3, "{lost} of {}", files.len());

    // R takes G's feed, and releases from P: P's release is not one of G's bundles.
    my(&r)
        .args(["trust", "add", &g_id, "--broadcast"])
        .assert()
        .success();
    my(&r)
        .args(["trust", "add", &p_id, "--release"])
        .assert()
        .success();
    let ing = json(&r, &["broadcast", "ingest", feed.to_str().unwrap()]);
    assert!(ing["new"].as_u64().unwrap() >= 3, "{ing}"); // and the publisher's record
    assert!(ing["loss_estimate"].as_f64().unwrap() > 0.1, "{ing}");

    // The binary to replace: a copy of an old one in a temp dir.
    let bin_dir = t.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("mycelium");
    let old = fake_binary(&bin, "0.1.0", 10);
    let bin_s = bin.to_str().unwrap();
    let m = ["--target", TARGET, "--binary", bin_s];

    let check = json(&r, &[&["update", "--check"][..], &m].concat());
    assert_eq!(check["installed"], "0.1.0", "{check}");
    assert_eq!(check["ready"], "0.2.0", "{check}");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        old,
        "--check changed the binary"
    );

    let u = json(&r, &[&["update"][..], &m].concat());
    assert_eq!(u["installed"], "0.2.0", "{u}");
    assert_eq!(u["from"], "0.1.0");
    assert_eq!(std::fs::read(&bin).unwrap(), new);
    assert_eq!(run_version(&bin), "mycelium 0.2.0");
    assert_eq!(
        std::fs::read(bin_dir.join("mycelium.previous")).unwrap(),
        old
    );
    assert_eq!(names(&bin_dir), ["mycelium", "mycelium.previous"]);

    // Installed now: nothing to do, and a second update says why.
    let again = json(&r, &[&["update", "--check"][..], &m].concat());
    assert_eq!(again["installed"], "0.2.0", "{again}");
    assert!(again["ready"].is_null(), "{again}");
    let out = my(&r)
        .args([&["update"][..], &m].concat())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.2.0 is the version installed"), "{err}");

    // Rollback restores the old binary; the new one is kept as the previous.
    let rb = json(&r, &["update", "--rollback", "--binary", bin_s]);
    assert_eq!(rb["to"], "0.1.0", "{rb}");
    assert_eq!(std::fs::read(&bin).unwrap(), old);
    assert_eq!(run_version(&bin), "mycelium 0.1.0");
    assert_eq!(
        std::fs::read(bin_dir.join("mycelium.previous")).unwrap(),
        new
    );
    let after = json(&r, &[&["update", "--check"][..], &m].concat());
    assert_eq!(after["installed"], "0.1.0", "{after}");
    assert_eq!(after["ready"], "0.2.0", "{after}");
}

/// Copy every release bundle of `from` into `to`, but those `skip` says no to.
fn carry(from: &Node, to: &Node, skip: impl Fn(&[u8]) -> bool) -> usize {
    let now = DtnTime::now();
    let mut n = 0;
    for kind in [ar::KIND_RELEASE_CHUNK, ar::KIND_RELEASE] {
        for key in from.store.of_kind(kind).unwrap() {
            let vb = from.store.get(&key).unwrap().unwrap();
            if skip(vb.bundle().payload()) {
                continue;
            }
            to.receive(vb.raw(), now).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn forged_downgraded_partial_and_tampered_releases_are_refused_and_nothing_changes() {
    let t = tempfile::tempdir().unwrap();
    let (p, f, r) = (
        Node::init(&t.path().join("p")).unwrap(),
        Node::init(&t.path().join("f")).unwrap(),
        Node::init(&t.path().join("r")).unwrap(),
    );
    let p_id = p.node_id().node_id().to_string();
    r.store
        .add_trust(&p_id, mycelium::store::TRUST_RELEASE)
        .unwrap();
    let machine = Machine::of_target(TARGET).unwrap();
    let dir = t.path().join("bins");
    std::fs::create_dir_all(&dir).unwrap();
    let bin_dir = t.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("mycelium");
    let old = fake_binary(&bin, "0.1.0", 10);
    let publish = |node: &Node, version: &str, pad: usize| {
        let path = dir.join(format!("{version}-{}", node.node_id().node_name().unwrap()));
        fake_binary(&path, version, pad);
        release::publish(
            node,
            &[(TARGET.to_string(), path)],
            version,
            "",
            DtnTime::now(),
        )
        .unwrap()
    };
    // Nothing changed: the binary, no previous, no temporary files, no ledger note.
    let unchanged = |what: &str| {
        assert_eq!(std::fs::read(&bin).unwrap(), old, "{what}: binary changed");
        assert_eq!(names(&bin_dir), ["mycelium"], "{what}: files left");
        assert_eq!(
            release::installed_version(&r, &bin).unwrap().to_string(),
            "0.1.0",
            "{what}"
        );
    };
    let refused = |what: &str, expect: &str| {
        let e = release::update(&r, &machine, &bin).unwrap_err();
        assert!(
            matches!(e, release::ReleaseError::Refused(_)),
            "{what}: {e:?}"
        );
        assert!(e.to_string().contains(expect), "{what}: {e}");
        unchanged(what);
    };
    refused("nothing held", "no release is held here");

    // Forged: a release signed by a node not trusted for releases.
    publish(&f, "9.9.9", 10);
    carry(&f, &r, |_| false);
    refused("forged", "not trust");

    // A downgrade, and the version installed, from the trusted signer.
    publish(&p, "0.0.9", 10);
    publish(&p, "0.1.0", 10);
    carry(&p, &r, |_| false);
    refused(
        "downgrade",
        "0.0.9 refused: not newer than the installed 0.1.0",
    );
    refused("same version", "0.1.0 is the version installed");

    // Partial: one of the two chunks of 0.3.0 never arrives.
    let pr = publish(&p, "0.3.0", ar::CHUNK + 10);
    let lost = |payload: &[u8]| {
        ar::decode_chunk(payload).is_ok_and(|c| c.release == pr.id && c.index == 1)
    };
    carry(&p, &r, lost);
    refused("partial", "0.3.0 is partial: 1 of 2 chunks");

    // Tampered: the trusted signer's manifest names one binary, its chunks carry another of
    // the same size (a build swapped on the way to signing, or a damaged disk).
    let good = fake_binary(&dir.join("good"), "0.4.0", 100);
    let evil = fake_binary(&dir.join("evil"), "6.6.6", 100);
    assert_eq!(good.len(), evil.len());
    let m = ReleaseManifest {
        version: "0.4.0".into(),
        notes: String::new(),
        files: vec![ReleaseFile {
            target: TARGET.into(),
            size: good.len() as u64,
            hash: *blake3::hash(&good).as_bytes(),
        }],
    };
    let chunk = ReleaseChunk {
        release: m.id(),
        file: 0,
        index: 0,
        data: evil,
    };
    p.store_for_everyone(
        vec![ar::encode_chunk(&chunk), ar::encode_manifest(&m)],
        release::LIFETIME_MS,
        DtnTime::now(),
    )
    .unwrap();
    carry(&p, &r, lost);
    refused(
        "tampered",
        "0.4.0 refused: the x86_64-unknown-linux-musl binary does not match its manifest",
    );

    // Every release and its state, newest first.
    let seen = release::survey(&r, &machine, &ar::Version(0, 1, 0)).unwrap();
    let states: Vec<(String, Status)> = seen
        .iter()
        .map(|s| (s.version.clone(), s.status.clone()))
        .collect();
    assert!(
        matches!(states[0], (ref v, Status::Untrusted) if v == "9.9.9"),
        "{states:?}"
    );
    assert!(
        matches!(states[1], (ref v, Status::Bad(_)) if v == "0.4.0"),
        "{states:?}"
    );
    assert!(
        matches!(states[2], (ref v, Status::Partial { have: 1, need: 2, .. }) if v == "0.3.0"),
        "{states:?}"
    );
    assert_eq!(states[3], ("0.1.0".into(), Status::Installed));
    assert_eq!(states[4], ("0.0.9".into(), Status::NotNewer));

    // No binary for this machine: a release for another target only.
    let other = Machine::of_target("riscv64gc-unknown-linux-musl").unwrap();
    let e = release::update(&r, &other, &bin).unwrap_err().to_string();
    assert!(e.contains("has no binary for this machine"), "{e}");
    unchanged("other machine");

    // The missing chunk arrives: 0.3.0 installs, and only it.
    carry(&p, &r, |_| false);
    let u = release::update(&r, &machine, &bin).unwrap();
    assert_eq!(u.to, "0.3.0");
    assert_eq!(run_version(&bin), "mycelium 0.3.0");
    // Rolling back twice is a swap, not a loss.
    release::rollback(&r, &bin).unwrap();
    assert_eq!(std::fs::read(&bin).unwrap(), old);
    release::rollback(&r, &bin).unwrap();
    assert_eq!(run_version(&bin), "mycelium 0.3.0");
}

#[test]
fn spread_writes_what_a_person_needs_and_a_node_learns_the_release_from_it() {
    let t = tempfile::tempdir().unwrap();
    let (p, n) = (t.path().join("p"), t.path().join("n"));
    let p_id = init(&p);
    init(&n);
    let dist = t.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let x86 = fake_binary(&dist.join(format!("mycelium-{TARGET}")), "0.2.0", 5000);
    let arm = fake_binary(
        &dist.join("mycelium-aarch64-unknown-linux-musl"),
        "0.2.0",
        7000,
    );
    json(
        &p,
        &[
            "release",
            "publish",
            dist.to_str().unwrap(),
            "--version",
            "0.2.0",
        ],
    );
    // Nothing trusted, nothing complete: a node with no release has nothing to spread.
    let out = my(&n).args(["spread", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to spread"));

    let stick = t.path().join("stick");
    let s = json(&p, &["spread", stick.to_str().unwrap()]);
    assert_eq!(s["version"], "0.2.0", "{s}");
    let dir = stick.join("mycelium-0.2.0");
    assert_eq!(
        std::fs::read(dir.join(format!("mycelium-{TARGET}"))).unwrap(),
        x86
    );
    assert_eq!(
        std::fs::read(dir.join("mycelium-aarch64-unknown-linux-musl")).unwrap(),
        arm
    );
    // The checksum file checks with the standard tool.
    let sums = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&sums.stdout)
            .matches(": OK")
            .count(),
        2
    );
    let en = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    assert!(
        en.contains(&p_id) && en.contains("sha256sum -c SHA256SUMS"),
        "{en}"
    );
    let fa = std::fs::read_to_string(dir.join("README.fa.txt")).unwrap();
    assert!(fa.contains(&p_id) && fa.contains("به‌روزرسانی"), "{fa}");
    // A changed binary fails the check.
    let mut bad = x86.clone();
    bad[100] ^= 1;
    std::fs::write(dir.join(format!("mycelium-{TARGET}")), &bad).unwrap();
    let sums = std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!sums.status.success());

    // A node that imports the stick learns the release; trusted, it is ready to install.
    let imp = json(&n, &["import", stick.to_str().unwrap()]);
    assert_eq!(imp["new"], 3, "{imp}");
    let bin = t.path().join("old-mycelium");
    fake_binary(&bin, "0.1.0", 1);
    let m = ["--target", TARGET, "--binary", bin.to_str().unwrap()];
    let l = json(&n, &[&["release", "list"][..], &m].concat());
    assert_eq!(l["releases"][0]["status"], "untrusted", "{l}");
    my(&n)
        .args(["trust", "add", &p_id, "--release"])
        .assert()
        .success();
    let l = json(&n, &[&["release", "list"][..], &m].concat());
    assert_eq!(l["releases"][0]["status"], "ready", "{l}");
    let tl = json(&n, &["trust", "list"]);
    assert_eq!(tl[0]["release"], true, "{tl}");
    assert_eq!(tl[0]["broadcast"], false, "{tl}");
}

#[test]
fn a_daemon_says_an_update_waits_and_does_not_install_it() {
    let t = tempfile::tempdir().unwrap();
    let (p, r) = (t.path().join("p"), t.path().join("r"));
    let p_id = init(&p);
    init(&r);
    my(&r)
        .args(["trust", "add", &p_id, "--release"])
        .assert()
        .success();
    // A release for the machine the daemon runs on.
    let dist = t.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    fake_binary(&dist.join(format!("mycelium-{target}")), "99.0.0", 100);
    json(
        &p,
        &[
            "release",
            "publish",
            dist.to_str().unwrap(),
            "--version",
            "99.0.0",
        ],
    );
    let stick = t.path().join("stick");
    my(&p).arg("export").arg(&stick).assert().success();

    let exe = assert_cmd::cargo::cargo_bin("mycelium");
    let before = std::fs::read(&exe).unwrap();
    let d = Daemon::start(&r, &[]);
    let mut ev = d.events();
    json(&r, &["import", stick.to_str().unwrap()]);
    let w = ev.wait("the update notice", Duration::from_secs(60), |v| {
        v["type"] == "update_waiting"
    });
    assert_eq!(w["version"], "99.0.0", "{w}");
    assert_eq!(w["signer"], p_id.as_str(), "{w}");
    // Said in its log too.
    let said = std::iter::from_fn(|| d.stderr.recv_timeout(Duration::from_secs(60)).ok())
        .find(|l| l.contains("update waiting"));
    assert!(said.is_some_and(|l| l.contains("99.0.0")), "no log line");
    let status = mycelium::daemon::client::get(&r, "/api/status").unwrap();
    assert_eq!(status["update"]["version"], "99.0.0", "{status}");
    let st = json(&r, &["update", "--check"]);
    assert_eq!(st["ready"], "99.0.0", "{st}");
    drop(d);
    assert!(
        std::fs::read(&exe).unwrap() == before,
        "the daemon replaced its binary"
    );
}
