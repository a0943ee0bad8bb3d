//! Crash safety: SIGKILL the real binary at random points of import and export, 50 times,
//! of a feed ingest, 12 times, and the receiving daemon at random points of a sync, 12
//! times (small messages) and 10 times (large ones, in full batches). Afterwards the store
//! opens, every bundle an import reported is there and verifies, the indexes agree with
//! the bundles, the drive is still importable, and every delivery has its receipt.

use assert_cmd::cargo::cargo_bin;
use indicatif::ProgressBar;
use mycelium::adu::{self, FileMessage, Message};
use mycelium::fec::Policy;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::transport::broadcast::{self, PublishOptions};
use mycelium::transport::folder::{self, ExportOptions, ImportOptions};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::daemon::Daemon;

const WEEK: u64 = 7 * 24 * 3600 * 1000;

/// Deterministic pseudo-random fraction in [0, 1) for iteration `i`.
fn frac(i: u64) -> f64 {
    let h = blake3::hash(&i.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn fill(home: &Path, to_home: &Path) {
    let a = Node::init(home).unwrap();
    let b = Node::init(to_home).unwrap();
    let now = DtnTime::now();
    for i in 0..280 {
        let m = Message::Text(format!("crash test message {i}"));
        a.originate(b.node_id(), adu::encode_message(&m), WEEK, now)
            .unwrap();
    }
    for i in 0..20u8 {
        let m = Message::File(FileMessage {
            name: format!("f{i}"),
            media_type: "x/y".into(),
            data: vec![i; 200_000],
        });
        a.originate(b.node_id(), adu::encode_message(&m), WEEK, now)
            .unwrap();
    }
}

/// Run the CLI, killing it after `after` unless it ends first. Returns stdout if it ended.
fn run_or_kill(args: &[&str], home: &Path, after: Duration) -> Option<String> {
    let mut child = Command::new(cargo_bin("mycelium"))
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{args:?} failed on its own");
            let out = child.wait_with_output().unwrap();
            return Some(String::from_utf8(out.stdout).unwrap());
        }
        if start.elapsed() >= after {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return None;
        }
        std::thread::yield_now();
    }
}

/// The store opens, every bundle verifies, and the indexes agree with the records.
fn check_store(home: &Path) -> HashSet<[u8; 32]> {
    let n = Node::open(home).unwrap();
    let recs = n.store.records().unwrap();
    let keys: HashSet<[u8; 32]> = recs.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), recs.len());
    for k in &keys {
        let vb = n.store.get(k).unwrap().expect("record without bundle");
        assert_eq!(vb.id().key(), *k);
    }
    // By destination node (every sealed bundle's is `dtn://sealed/`).
    let by_dest: usize = recs
        .iter()
        .map(|(_, r)| {
            mycelium::bundle::Eid::parse(&r.destination)
                .unwrap()
                .node_id()
        })
        .collect::<HashSet<_>>()
        .iter()
        .map(|d| n.store.for_destination_node(d).unwrap().len())
        .sum();
    assert_eq!(by_dest, recs.len());
    keys
}

/// Import `drive` into a new node at `home`.
fn import_fresh(home: &Path, drive: &Path) -> folder::ImportReport {
    let c = Node::init(home).unwrap();
    let opts = ImportOptions {
        clean: false,
        now: DtnTime::now(),
    };
    folder::import(&c, drive, &opts, &ProgressBar::hidden()).unwrap()
}

fn time_of(args: &[&str], home: &Path) -> Duration {
    let t = Instant::now();
    run_or_kill(args, home, Duration::from_secs(600)).unwrap();
    t.elapsed()
}

#[test]
fn sigkill_during_import_and_export_loses_nothing_reported() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fill(&a, &b);
    let drive = t.path().join("drive");
    let full_export = time_of(&["export", drive.to_str().unwrap()], &a);

    // Import: one home, 25 interrupted runs.
    let scratch = t.path().join("scratch");
    Node::init(&scratch).unwrap();
    let full_import = time_of(&["import", drive.to_str().unwrap()], &scratch);
    let mut reported: HashSet<String> = HashSet::new();
    let mut killed = 0;
    for i in 0..25u64 {
        let after = full_import.mul_f64(frac(i) * 1.2);
        let out = run_or_kill(&["--json", "import", drive.to_str().unwrap()], &b, after);
        killed += usize::from(out.is_none());
        if let Some(out) = out {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            for k in v["stored"].as_array().unwrap() {
                reported.insert(k.as_str().unwrap().to_string());
            }
        }
        let keys = check_store(&b);
        for r in &reported {
            let mut k = [0u8; 32];
            hex::decode_to_slice(r, &mut k).unwrap();
            assert!(
                keys.contains(&k),
                "reported bundle {r} is gone after a kill"
            );
        }
    }
    assert!(killed >= 10, "only {killed} of 25 imports were interrupted");
    run_or_kill(
        &["import", drive.to_str().unwrap()],
        &b,
        Duration::from_secs(600),
    )
    .unwrap();
    {
        let n = Node::open(&b).unwrap();
        // All 300 bundles, besides the receipts b issued for those addressed to it.
        let originals = n
            .store
            .records()
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.kind != "receipts")
            .count();
        assert_eq!(originals, 300);
        assert_eq!(n.store.partial_summary().unwrap().objects, 0);
        // What a kill left stored and unsettled was settled by a later import: every
        // message delivered here has its receipt and tombstone.
        assert!(n.store.unsettled().unwrap().is_empty());
        let b_id = n.node_id().to_string();
        drop(n);
        inbox_all_marked_delivered(&b, &b_id);
    }

    // Export: 25 interrupted runs onto fresh drives; each drive must import cleanly.
    for i in 0..25u64 {
        let d = t.path().join(format!("drive-{i}"));
        let after = full_export.mul_f64(frac(100 + i) * 1.2);
        killed += usize::from(run_or_kill(&["export", d.to_str().unwrap()], &a, after).is_none());
        check_store(&a);
        if !d.join("mycelium").exists() {
            continue;
        }
        let r = import_fresh(&t.path().join(format!("c-{i}")), &d);
        assert!(
            r.rejected.is_empty(),
            "drive {i} after a kill: {:?}",
            r.rejected
        );
        // An export interrupted and run again completes the drive.
        if i % 8 == 0 {
            let opts = ExportOptions {
                for_node: None,
                max_bytes: None,
                policy: Policy::folder(0.25),
                now: DtnTime::now(),
                have_summary: true,
                node_records: false,
                only: None,
            };
            let an = Node::open(&a).unwrap();
            folder::export(&an, &d, &opts, &ProgressBar::hidden()).unwrap();
            drop(an);
            assert_eq!(import_fresh(&t.path().join(format!("c2-{i}")), &d).new, 300);
        }
    }
    assert!(killed >= 20, "only {killed} of 50 runs were interrupted");
}

/// Sealed messages from `a` to `b`, stored as `send` makes them; `a` and `b` know each
/// other's sealing keys.
fn fill_sealed(a_home: &Path, b_home: &Path, count: usize) {
    fill_sealed_with(a_home, b_home, count, |i| {
        Message::Text(format!("sealed crash test message {i}"))
    });
}

/// As [`fill_sealed`], message `i` being `message(i)`.
fn fill_sealed_with(
    a_home: &Path,
    b_home: &Path,
    count: usize,
    message: impl Fn(usize) -> Message,
) {
    let a = Node::init(a_home).unwrap();
    let b = Node::init(b_home).unwrap();
    a.store
        .set_contact(&b.node_id().to_string(), &b.identity.seal_key().public())
        .unwrap();
    b.store
        .set_contact(&a.node_id().to_string(), &a.identity.seal_key().public())
        .unwrap();
    let now = DtnTime::now();
    let out: Vec<_> = (0..count)
        .map(|i| (Some(b.node_id()), adu::encode_message(&message(i)), WEEK))
        .collect();
    let c = a.compose(&out, now, true).unwrap();
    assert_eq!(c.private.len(), count);
    let change = mycelium::route::delivery::Change {
        put: c.bundles,
        private: c.private,
        ..Default::default()
    };
    mycelium::route::delivery::RouteStore::commit(&a.store, change, now).unwrap();
}

fn sync_cli(home: &Path, addr: &str) -> std::process::Child {
    Command::new(cargo_bin("mycelium"))
        .arg("--home")
        .arg(home)
        .args(["sync", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL the receiving daemon at random points of a sync of sealed messages, 12 times.
/// Arrivals are committed in batches, each delivery together with its receipt: after
/// every kill the store opens and agrees with its indexes, every message in the inbox is
/// tombstoned as delivered, and in the end every message arrived once and every one was
/// acknowledged (the sender drops all its copies), however the kills fell.
#[test]
fn sigkill_during_sync_loses_nothing_and_every_delivery_gets_its_receipt() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fill_sealed(&a, &b, 300);
    kill_syncs(t.path(), &a, &b, 300, 12, 200);
}

/// The same with 600 KiB messages, 24 of them: 14 MiB, so the receiver fills whole
/// batches (8 MiB) and verifies one while the one before it is written on a thread of its
/// own. A kill between the two loses only what was never counted or acknowledged.
#[test]
fn sigkill_during_a_sync_of_full_batches_loses_nothing_and_every_delivery_gets_its_receipt() {
    const COUNT: usize = 24;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fill_sealed_with(&a, &b, COUNT, |i| {
        let mut data = vec![0u8; 600 << 10];
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Message::File(FileMessage {
            name: format!("f{i}"),
            media_type: "application/octet-stream".into(),
            data,
        })
    });
    kill_syncs(t.path(), &a, &b, COUNT, 10, 400);
}

/// Sync `a` to a daemon at `b`, killing the daemon (SIGKILL) at a random point of each of
/// `rounds` syncs (fractions seeded from `seed`), checking the store after each; then let
/// the rest arrive and the receipts go home: `b` holds each of `count` messages once and
/// `a` none of its own.
fn kill_syncs(t: &Path, a: &Path, b: &Path, count: usize, rounds: u64, seed: u64) {
    // How long a whole sync takes, into a copy of b with b's identity.
    let scratch = t.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(b.join("identity.key"), scratch.join("identity.key")).unwrap();
    let d = Daemon::start(&scratch, &[]);
    let started = Instant::now();
    assert!(sync_cli(a, &d.addr()).wait().unwrap().success());
    let full = started.elapsed();
    d.stop();

    let b_id = Node::open(b).unwrap().node_id().to_string();
    let mut killed = 0;
    // A sync that ends before its kill says how long one takes now (less is left to send
    // after each round, and the first measure may have been taken on a busy machine).
    let mut full = full;
    for i in 0..rounds {
        let d = Daemon::start(b, &[]);
        let mut sync = sync_cli(a, &d.addr());
        let after = full.mul_f64(frac(seed + i) * 1.2);
        let start = Instant::now();
        let mut d = Some(d);
        loop {
            if sync.try_wait().unwrap().is_some() {
                full = full.min(start.elapsed());
                break;
            }
            if start.elapsed() >= after {
                if let Some(mut d) = d.take() {
                    d.child.kill().unwrap(); // SIGKILL
                    d.child.wait().unwrap();
                }
                killed += 1;
                // The sender would wait out QUIC's idle timeout for a peer that vanished.
                let _ = sync.kill();
                break;
            }
            std::thread::yield_now();
        }
        sync.wait().unwrap();
        if let Some(d) = d {
            d.stop();
        }
        check_store(b);
        inbox_all_marked_delivered(b, &b_id);
    }
    assert!(
        killed as u64 >= rounds / 3,
        "only {killed} of {rounds} syncs were interrupted"
    );

    // The rest arrives, and the receipts go home: the sender holds nothing of its own.
    let d = Daemon::start(b, &[]);
    assert!(sync_cli(a, &d.addr()).wait().unwrap().success());
    assert!(sync_cli(a, &d.addr()).wait().unwrap().success());
    d.stop();
    let n = Node::open(b).unwrap();
    let inbox = n.inbox().unwrap();
    assert_eq!(inbox.len(), count);
    let keys: HashSet<[u8; 32]> = inbox.iter().map(|i| i.key).collect();
    assert_eq!(keys.len(), count);
    // Every receipt a killed session owed was issued (at the daemon's next start).
    assert!(n.store.owed_marks().unwrap().is_empty());
    drop(n);
    let an = Node::open(a).unwrap();
    let left: Vec<_> = an
        .store
        .records()
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.kind == "message" || r.kind == "sealed")
        .collect();
    assert!(
        left.is_empty(),
        "the sender still holds {} of its messages: a delivery lost its receipt",
        left.len()
    );
}

/// Every message in `home`'s inbox is tombstoned as delivered by `me`.
fn inbox_all_marked_delivered(home: &Path, me: &str) {
    let n = Node::open(home).unwrap();
    let stones = n.store.tombstones().unwrap();
    for item in n.inbox().unwrap() {
        assert!(
            stones
                .iter()
                .any(|(k, s)| *k == item.key && s.signer == me && s.verified),
            "a message in the inbox is not marked delivered after a kill"
        );
    }
}

/// SIGKILL `broadcast ingest` of a feed of sealed messages at random points, 12 times.
/// Ingest stores rebuilt segments in batches and settles them (opens, delivers, makes the
/// receipts) in later commits; what a kill left stored and unsettled is settled by the
/// next ingest. After every kill the store agrees with its indexes and every message in
/// the inbox is marked delivered; in the end every message arrived once and the receipts,
/// carried home by a sync, let the sender drop every copy.
#[test]
fn sigkill_during_feed_ingest_loses_nothing_and_every_delivery_gets_its_receipt() {
    const COUNT: usize = 300;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fill_sealed(&a, &b, COUNT);
    let feed = t.path().join("feed");
    let (a_id, a_xpk) = {
        let an = Node::open(&a).unwrap();
        let o = PublishOptions::new(DtnTime::now());
        broadcast::publish(&an, &feed, &o, &ProgressBar::hidden()).unwrap();
        (an.node_id().to_string(), an.identity.seal_key().public())
    };
    let trusting = |home: &Path| {
        let n = Node::open(home).unwrap();
        n.store
            .add_trust(&a_id, mycelium::store::TRUST_BROADCAST)
            .unwrap();
        n.store.set_contact(&a_id, &a_xpk).unwrap();
    };
    trusting(&b);
    // How long a whole ingest takes, into a copy of b with b's identity.
    let scratch = t.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(b.join("identity.key"), scratch.join("identity.key")).unwrap();
    trusting(&scratch);
    let ingest = ["broadcast", "ingest", feed.to_str().unwrap()];
    let full = time_of(&ingest, &scratch);
    assert_eq!(Node::open(&scratch).unwrap().inbox().unwrap().len(), COUNT);

    let b_id = Node::open(&b).unwrap().node_id().to_string();
    let mut killed = 0;
    for i in 0..12u64 {
        let after = full.mul_f64(frac(300 + i) * 1.2);
        killed += usize::from(run_or_kill(&ingest, &b, after).is_none());
        check_store(&b);
        inbox_all_marked_delivered(&b, &b_id);
    }
    assert!(killed >= 5, "only {killed} of 12 ingests were interrupted");
    run_or_kill(&ingest, &b, Duration::from_secs(600)).unwrap();
    {
        let n = Node::open(&b).unwrap();
        let inbox = n.inbox().unwrap();
        assert_eq!(inbox.len(), COUNT);
        let keys: HashSet<[u8; 32]> = inbox.iter().map(|i| i.key).collect();
        assert_eq!(keys.len(), COUNT);
        assert!(n.store.unsettled().unwrap().is_empty());
    }
    inbox_all_marked_delivered(&b, &b_id);

    // The receipts go home with a sync: the sender holds nothing of its own.
    let d = Daemon::start(&b, &[]);
    assert!(sync_cli(&a, &d.addr()).wait().unwrap().success());
    assert!(sync_cli(&a, &d.addr()).wait().unwrap().success());
    d.stop();
    let an = Node::open(&a).unwrap();
    let left = an
        .store
        .records()
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.kind == "message" || r.kind == "sealed")
        .count();
    assert_eq!(
        left, 0,
        "the sender still holds {left} of its messages: a delivery lost its receipt"
    );
}
