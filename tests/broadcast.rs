//! The one-way broadcast feed: publish, lose and corrupt files, ingest what is left.

mod common;

use indicatif::ProgressBar;
use mycelium::adu::{self, Message};
use mycelium::node::Node;
use mycelium::sim::{self, Channel, Feed};
use mycelium::time::DtnTime;
use mycelium::transport::broadcast::{self, IngestOptions, PublishOptions};
use std::fs;
use std::path::{Path, PathBuf};

const WEEK: u64 = 7 * 24 * 3600 * 1000;

fn feed_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mfd"))
        .collect();
    v.sort();
    v
}

struct Setup {
    _t: tempfile::TempDir,
    market: Node,
    user: Node,
    feed: PathBuf,
    now: DtnTime,
    sent: usize,
}

/// The market holds `n` messages for the user and publishes them.
fn setup(n: usize, passes: u32) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let market = Node::init(&t.path().join("market")).unwrap();
    let user = Node::init(&t.path().join("user")).unwrap();
    let now = DtnTime::now();
    for i in 0..n {
        let text = format!("payment {i} {}", "x".repeat(300 + i % 700));
        market
            .originate(
                user.node_id(),
                adu::encode_message(&Message::Text(text)),
                WEEK,
                now,
            )
            .unwrap();
    }
    let feed = t.path().join("feed");
    let mut o = PublishOptions::new(now);
    o.passes = passes;
    o.symbol_size = 256;
    o.file_size = 4096;
    broadcast::publish(&market, &feed, &o, &ProgressBar::hidden()).unwrap();
    Setup {
        _t: t,
        market,
        user,
        feed,
        now,
        sent: n,
    }
}

fn ingest(s: &Setup, any: bool) -> broadcast::IngestReport {
    let o = IngestOptions {
        any_signer: any,
        now: s.now,
    };
    broadcast::ingest(&s.user, &s.feed, &o, &ProgressBar::hidden()).unwrap()
}

fn trust_market(s: &Setup) {
    s.user
        .store
        .add_trust(
            &s.market.node_id().to_string(),
            mycelium::store::TRUST_BROADCAST,
        )
        .unwrap();
}

#[test]
fn a_quarter_of_the_files_lost_and_a_burst_corrupted_still_delivers_everything() {
    let s = setup(300, 2);
    trust_market(&s);
    let files = feed_files(&s.feed);
    // 25% deleted at random (seeded), and a burst of 6 consecutive files corrupted.
    let mut rng = sim::Rng::new(7);
    let mut kept = Vec::new();
    for f in &files {
        if rng.unit() < 0.25 {
            fs::remove_file(f).unwrap();
        } else {
            kept.push(f.clone());
        }
    }
    for f in kept.iter().skip(10).take(6) {
        let mut b = fs::read(f).unwrap();
        let l = b.len();
        for x in &mut b[l / 3..l / 3 + 200] {
            *x ^= 0xa5;
        }
        fs::write(f, b).unwrap();
    }
    let r = ingest(&s, false);
    assert_eq!(
        r.new,
        s.sent,
        "problems: {:?}",
        &r.problems[..r.problems.len().min(5)]
    );
    assert!(r.loss_estimate() > 0.1, "{}", r.loss_estimate());
    assert!(!r.problems.is_empty());
    assert_eq!(s.user.inbox().unwrap().len(), s.sent);
    // A rerun is cheap: every intact file is already consumed, nothing new. The damaged
    // ones changed within the hour (a recorder may still be filling them): read again.
    let again = ingest(&s, false);
    assert_eq!(again.new, 0);
    assert_eq!(again.files_read, 6);
    assert_eq!(again.files_incomplete, 6);
    assert!(again.files_already_consumed > 0);
}

#[test]
fn untrusted_feeds_are_refused_until_trusted_or_any_signer() {
    let s = setup(20, 1);
    let r = ingest(&s, false);
    assert_eq!(r.new, 0);
    assert!(r
        .problems
        .iter()
        .any(|p| p.reason.contains("does not trust")));
    // nothing was consumed: trusting the publisher later makes the same files count
    trust_market(&s);
    assert_eq!(ingest(&s, false).new, 20);
    let s2 = setup(5, 1);
    assert_eq!(ingest(&s2, true).new, 5);
}

#[test]
fn partial_files_wait_and_partial_segments_persist_across_runs() {
    let s = setup(200, 1);
    trust_market(&s);
    let files = feed_files(&s.feed);
    let hold = s.feed.parent().unwrap().join("later");
    fs::create_dir_all(&hold).unwrap();
    // Half the files arrive now; of the rest, one is caught half-written.
    for f in &files[files.len() / 2..] {
        fs::rename(f, hold.join(f.file_name().unwrap())).unwrap();
    }
    let first = ingest(&s, false);
    assert_eq!(first.new, 0);
    assert!(s.user.store.partial_summary().unwrap().objects > 0);
    let later: Vec<PathBuf> = feed_files(&hold);
    let half = &later[0];
    let bytes = fs::read(half).unwrap();
    fs::write(
        s.feed.join(half.file_name().unwrap()),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let mid = ingest(&s, false);
    assert_eq!(mid.files_incomplete, 1);
    for f in &later {
        fs::rename(f, s.feed.join(f.file_name().unwrap())).unwrap();
    }
    let done = ingest(&s, false);
    assert_eq!(first.new + mid.new + done.new, 200);
    assert_eq!(s.user.store.partial_summary().unwrap().objects, 0);
}

#[test]
fn junk_truncated_huge_replayed_and_forged_files_are_refused() {
    let s = setup(50, 1);
    trust_market(&s);
    let files = feed_files(&s.feed);
    let d = &s.feed;
    fs::write(d.join("junk.mfd"), vec![0x42u8; 3000]).unwrap();
    let mut huge = b"MYCFEED1".to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&[0; 100]);
    fs::write(d.join("huge.mfd"), huge).unwrap();
    // A forger (not trusted) signs a file claiming the market's segment ids.
    let forger = Node::init(&s.feed.parent().unwrap().join("forger")).unwrap();
    let mut o = PublishOptions::new(s.now);
    o.symbol_size = 256;
    o.file_size = 4096;
    let fd = s.feed.parent().unwrap().join("forged");
    forger
        .originate(s.user.node_id(), b"not a payment".to_vec(), WEEK, s.now)
        .unwrap();
    broadcast::publish(&forger, &fd, &o, &ProgressBar::hidden()).unwrap();
    for f in feed_files(&fd) {
        fs::copy(
            &f,
            d.join(format!("zz-{}", f.file_name().unwrap().to_string_lossy())),
        )
        .unwrap();
    }
    // A header with one flipped bit: the signature fails.
    let mut b = fs::read(&files[0]).unwrap();
    b[150] ^= 1; // inside the signed list of record hashes
    fs::write(d.join("flipped.mfd"), b).unwrap();
    let r = ingest(&s, false);
    assert_eq!(r.new, 50);
    let has = |f: &str, why: &str| {
        assert!(
            r.problems
                .iter()
                .any(|p| p.file.contains(f) && p.reason.contains(why)),
            "{f}: {why} not in {:#?}",
            r.problems
        )
    };
    has("junk.mfd", "bad magic");
    has("huge.mfd", "more than the");
    has("flipped.mfd", "does not verify");
    has("zz-feed", "does not trust");
    // Replaying the same files (renamed copies) adds nothing and costs one header each.
    for f in &files {
        fs::copy(
            f,
            d.join(format!(
                "replay-{}",
                f.file_name().unwrap().to_string_lossy()
            )),
        )
        .unwrap();
    }
    let again = ingest(&s, false);
    assert_eq!(again.new, 0);
    assert_eq!(again.files_read, 0);
}

#[test]
fn twenty_percent_loss_thirty_percent_overhead_one_pass_recovers_99_percent() {
    // 1 MiB of 1 KiB bundles in 256 KiB segments, 256-byte symbols, 4 symbols a file:
    // the same files-per-segment as a 1 GiB day in 1 MiB files.
    let feed = Feed {
        bundles: 1024,
        bundle_size: 1024,
        segment_size: 256 * 1024,
        symbol_size: 256,
        per_file: 4,
    };
    let runs: Vec<f64> = (0..3)
        .map(|seed| sim::coded(&feed, 0.3, 1, Channel::Independent { loss: 0.2 }, seed)[0])
        .collect();
    let mean = runs.iter().sum::<f64>() / runs.len() as f64;
    assert!(mean >= 0.99, "recovered {runs:?}");
    // Without coding the same channel keeps only what was not lost.
    let p = sim::plain(&feed, 1, Channel::Independent { loss: 0.2 }, 1)[0];
    assert!(p < 0.9, "plain carousel recovered {p}");
}

#[test]
fn ingest_watch_picks_up_files_as_they_arrive() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let market = Node::init(&t.path().join("market")).unwrap();
    let user_home = t.path().join("user");
    let user_id = Node::init(&user_home).unwrap().node_id();
    let feed = t.path().join("feed");
    fs::create_dir_all(&feed).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("mycelium");
    let ok = std::process::Command::new(&bin)
        .arg("--home")
        .arg(&user_home)
        .args(["trust", "add", &market.node_id().to_string(), "--broadcast"])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut child = std::process::Command::new(&bin)
        .arg("--home")
        .arg(&user_home)
        .args(["--json", "broadcast", "ingest", "--watch"])
        .arg(&feed)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let next = || -> serde_json::Value {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("watch printed nothing for 2 minutes");
        serde_json::from_str(&line).unwrap()
    };
    // The first round runs on the empty folder.
    assert_eq!(next()["total_new"], 0);
    let now = DtnTime::now();
    for i in 0..30 {
        market
            .originate(
                user_id.clone(),
                adu::encode_message(&Message::Text(format!("p{i}"))),
                WEEK,
                now,
            )
            .unwrap();
    }
    let mut o = PublishOptions::new(now);
    o.symbol_size = 256;
    o.file_size = 4096;
    broadcast::publish(&market, &feed, &o, &ProgressBar::hidden()).unwrap();
    let mut total = 0;
    while total < 30 {
        total = next()["total_new"].as_u64().unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let user = Node::open(&user_home).unwrap();
    assert_eq!(user.inbox().unwrap().len(), 30);
}

#[test]
fn ingest_memory_does_not_grow_with_the_feed() {
    let t = tempfile::tempdir().unwrap();
    let market = Node::init(&t.path().join("market")).unwrap();
    let user_home = t.path().join("user");
    let user = Node::init(&user_home).unwrap();
    user.store
        .add_trust(
            &market.node_id().to_string(),
            mycelium::store::TRUST_BROADCAST,
        )
        .unwrap();
    let user_id = user.node_id();
    drop(user);
    let now = DtnTime::now();
    // 160 MiB of bundles: more than the memory the ingest may use (its memtables, block
    // cache and commit slices are bounded by constants).
    for i in 0..160u32 {
        let data: Vec<u8> = (0..1 << 20)
            .map(|j: u32| (j.wrapping_mul(31) ^ i) as u8)
            .collect();
        let m = Message::File(adu::FileMessage {
            name: format!("f{i}"),
            media_type: "x/y".into(),
            data,
        });
        market
            .originate(user_id.clone(), adu::encode_message(&m), WEEK, now)
            .unwrap();
    }
    let feed = t.path().join("feed");
    let mut o = PublishOptions::new(now);
    o.overhead = 0.1;
    broadcast::publish(&market, &feed, &o, &ProgressBar::hidden()).unwrap();
    let v = common::cli_json(&user_home, &["broadcast", "ingest"], &feed);
    assert_eq!(v["new"], 160);
    let feed_mib = v["bytes"].as_u64().unwrap() >> 20;
    let peak_mib = v["peak_memory_kib"].as_u64().unwrap() / 1024;
    eprintln!("ingest of a {feed_mib} MiB feed peaked at {peak_mib} MiB");
    assert!(feed_mib > 170);
    assert!(
        peak_mib < 150,
        "ingest of a {feed_mib} MiB feed peaked at {peak_mib} MiB"
    );
}

#[test]
fn since_limits_publish_to_recent_bundles_and_bad_options_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let market = Node::init(&t.path().join("m")).unwrap();
    let now = DtnTime::now();
    let old = DtnTime(now.0 - 3 * 24 * 3600 * 1000);
    // For someone else: what is addressed to the market itself has arrived and stays.
    let to = mycelium::identity::Identity::from_seed([9; 32]).node_id();
    market
        .originate(to.clone(), b"old".to_vec(), WEEK, old)
        .unwrap();
    market.originate(to, b"new".to_vec(), WEEK, now).unwrap();
    let mut o = PublishOptions::new(now);
    o.since = Some(DtnTime(now.0 - 24 * 3600 * 1000));
    let r = broadcast::publish(&market, &t.path().join("f"), &o, &ProgressBar::hidden()).unwrap();
    assert_eq!(r.bundles, 1);
    let mut bad = PublishOptions::new(now);
    bad.passes = 0;
    assert!(
        broadcast::publish(&market, &t.path().join("g"), &bad, &ProgressBar::hidden()).is_err()
    );
    let mut bad = PublishOptions::new(now);
    bad.symbol_size = 100;
    assert!(
        broadcast::publish(&market, &t.path().join("g"), &bad, &ProgressBar::hidden()).is_err()
    );
}
