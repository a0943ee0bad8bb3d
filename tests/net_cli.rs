//! The network commands as a user runs them: `serve` in the background, `sync`, `peers`,
//! `peer add`, `gateway --once` with a budget, and LAN discovery between two `serve`
//! processes. Waits are on the processes' own output, never on time.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
}

fn run(home: &Path, args: &[&str]) -> String {
    let out = bin().arg("--home").arg(home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run(home, &[&["--json"], args].concat())).unwrap()
}

fn init(home: &Path) -> String {
    run(home, &["init"]);
    run(home, &["id"]).trim().to_string()
}

/// A running `serve`, its address, and its stderr lines as they come.
struct Server {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(home: &Path, extra: &[&str]) -> Server {
        let mut child = bin()
            .arg("--home")
            .arg(home)
            .args(["--json", "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        let addr = v["listening"].as_str().unwrap().to_string();
        let (tx, log) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server { child, addr, log }
    }

    /// The next log line containing `needle` (panics after a generous timeout).
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("serve never logged {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

#[test]
fn serve_sync_peers_and_gateway_budget_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let _ida = init(&a);
    let idb = init(&b);
    for i in 0..3 {
        run(
            &a,
            &[
                "send",
                "--no-seal",
                "--to",
                &idb,
                "--text",
                &format!("hello {i}"),
            ],
        );
    }
    let server = Server::start(&b, &["--discovery", "off"]);
    let v = json(&a, &["sync", &server.addr, "--expect", &idb]);
    // Three messages and a's node record out; b's node record back.
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(4), Some(1)),
        "{v}"
    );
    assert_eq!(v["peer"], idb.as_str());
    assert!(v["reconciliation"]["bytes_out"].as_u64().unwrap() > 0);
    assert!(v["wire_bytes"]["out"].as_u64().unwrap() > 0);
    server.wait_for("[sync]");

    // Known peers, by node ID.
    run(&a, &["peer", "add", &idb, &server.addr]);
    let peers = json(&a, &["peers"]);
    assert_eq!(peers[0]["node"], idb.as_str());
    assert_eq!(peers[0]["allowed"], true);
    assert_eq!(peers[0]["sessions"], 1);
    // Sync by node ID: the receipt for the three messages comes back (one, in bulk).
    let v = json(&a, &["sync", &idb]);
    assert_eq!(v["received"], 1, "{v}");
    assert_eq!(v["purged_by_receipts"], 3, "{v}");

    // A gateway with a tiny budget syncs once, then refuses to spend more today.
    run(
        &a,
        &[
            "send",
            "--no-seal",
            "--to",
            &idb,
            "--text",
            "over the uplink",
        ],
    );
    let g = json(
        &a,
        &[
            "gateway",
            "--upstream",
            &server.addr,
            "--once",
            "--budget-mb",
            "1",
        ],
    );
    assert_eq!(g["sent"], 1, "{g}");
    let used = g["used_today"].as_u64().unwrap();
    assert!(used > 0 && used < 1_000_000, "{g}");
    drop(server);
    // Budget spent (1 MB of a 0 MB allowance): no connection is even attempted.
    let g = json(
        &a,
        &[
            "gateway",
            "--upstream",
            "127.0.0.1:9",
            "--once",
            "--budget-mb",
            "0",
        ],
    );
    assert!(g["skipped"].as_str().unwrap().contains("budget"), "{g}");
    // A sync to nowhere fails with a clear error, quickly.
    let out = bin()
        .arg("--home")
        .arg(&a)
        .args(["sync", "dtn://notanode/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Mycelium node ID"));
}

#[test]
fn two_serving_nodes_find_each_other_on_the_lan_and_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let _ida = init(&a);
    let idb = init(&b);
    run(
        &a,
        &["send", "--no-seal", "--to", &idb, "--text", "found you"],
    );
    // A private group and port for this test, so parallel runs do not meet.
    let port = 40000 + (std::process::id() % 20000) as u16;
    let group = format!("239.255.70.78:{port}");
    let sa = Server::start(&a, &["--discovery", &group]);
    let sb = Server::start(&b, &["--discovery", &group]);
    // Each hears the other's beacon and syncs; the message reaches b.
    let line = sb.wait_for("[sync]");
    let line2 = sa.wait_for("[discovery] synced with neighbour");
    drop((sa, sb));
    assert!(line.contains("received") || line.contains("sent"), "{line}");
    assert!(line2.contains("synced"), "{line2}");
    let inbox = json(&b, &["inbox"]);
    let texts = inbox.to_string();
    assert!(texts.contains("found you"), "{texts}");
}
