//! Crash safety: SIGKILL the real binary at random points of import and export, 50 times.
//! Afterwards the store opens, every bundle an import reported is there and verifies, the
//! indexes agree with the bundles, and the drive is still importable.

use assert_cmd::cargo::cargo_bin;
use indicatif::ProgressBar;
use mycelium::adu::{self, FileMessage, Message};
use mycelium::fec::Policy;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::transport::folder::{self, ExportOptions, ImportOptions};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let by_dest: usize = recs
        .iter()
        .map(|(_, r)| r.destination.clone())
        .collect::<HashSet<_>>()
        .iter()
        .map(|d| {
            n.store
                .for_destination_node(&mycelium::bundle::Eid::parse(d).unwrap())
                .unwrap()
                .len()
        })
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
            };
            let an = Node::open(&a).unwrap();
            folder::export(&an, &d, &opts, &ProgressBar::hidden()).unwrap();
            drop(an);
            assert_eq!(import_fresh(&t.path().join(format!("c2-{i}")), &d).new, 300);
        }
    }
    assert!(killed >= 20, "only {killed} of 50 runs were interrupted");
}
