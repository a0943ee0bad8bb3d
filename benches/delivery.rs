//! Delivery as a person sees it: sealed messages, as `send` makes them, delivered to their
//! recipient (opened, stored in its inbox, receipts issued), by each medium, against
//! `cp -r` + `sync` of the same bytes in the same run:
//! 1. N sealed 1 KiB text messages by QUIC (loopback, the recipient serving), by stick
//!    (export, then import) and by feed (publish, then ingest);
//! 2. 100 sealed 1 MiB files by stick and by QUIC;
//! 3. the receipts: bytes that travel back per delivered bundle (bundle bytes, and UDP
//!    bytes with QUIC's own overhead), how many receipt bundles, and the copies they let
//!    the sender drop.
//!
//! Real RocksDB stores in a temp dir (`DELIVERY_DIR`, default the system's), synced
//! writes, every signature, stamp and seal checked. `DELIVERY_N` sets N (default 10,000),
//! `DELIVERY_BIG` the count of 1 MiB files (default 100).
//!
//! Run: `cargo bench --bench delivery`.
//!
//! Profiling one phase: `DELIVERY_PERF=<fifo>` (with `DELIVERY_PHASE` one of `export`,
//! `import`, `ingest`, `quic`) writes `enable`/`disable` around that phase into perf's
//! control fifo, for `perf record -D -1 --control fifo:<fifo> …`.

use indicatif::ProgressBar;
use mycelium::adu::{self, FileMessage, Message};
use mycelium::bundle::Eid;
use mycelium::fec::Policy;
use mycelium::node::Node;
use mycelium::route::delivery::{Change, RouteStore};
use mycelium::time::DtnTime;
use mycelium::transport::broadcast::{self, IngestOptions, PublishOptions};
use mycelium::transport::folder::{self, ExportOptions, ImportOptions};
use mycelium::transport::quic::{self, QuicConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const DAY: u64 = 86_400_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tell a `perf record --control fifo:…` to sample only while `phase` runs.
fn perf_ctl(phase: &str, on: bool) {
    let (Some(fifo), Ok(want)) = (
        std::env::var_os("DELIVERY_PERF"),
        std::env::var("DELIVERY_PHASE"),
    ) else {
        return;
    };
    if want == phase {
        let cmd: &[u8] = if on { b"enable\n" } else { b"disable\n" };
        std::fs::write(fifo, cmd).expect("perf control fifo");
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).expect("read dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("metadata");
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// Seconds for `cp -r src dst` and `sync`.
fn cp_sync(src: &Path, dst: &Path) -> f64 {
    let t = Instant::now();
    let ok = Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -r failed");
    assert!(Command::new("sync").status().expect("sync").success());
    t.elapsed().as_secs_f64()
}

/// The recipient: a new home (fresh store) with the recipient's identity, knowing the
/// sender's sealing key (as its node record would have taught it).
fn recipient(root: &Path, name: &str, key_file: &Path, sender: &Node) -> Node {
    let home = root.join(name);
    std::fs::create_dir_all(&home).expect("home");
    std::fs::copy(key_file, home.join("identity.key")).expect("key");
    let n = Node::open(&home).expect("open recipient");
    n.store
        .set_contact(
            &sender.node_id().to_string(),
            &sender.identity.seal_key().public(),
        )
        .expect("contact");
    n
}

/// Sealed messages from `from` to `to`, made and stored as `send` does.
fn send_sealed(from: &Node, to: &Eid, payloads: Vec<Vec<u8>>) {
    let now = DtnTime::now();
    for chunk in payloads.chunks(1000) {
        let out: Vec<(Option<Eid>, Vec<u8>, u64)> = chunk
            .iter()
            .map(|p| (Some(to.clone()), p.clone(), DAY))
            .collect();
        let c = from.compose(&out, now, true).expect("compose");
        assert_eq!(c.private.len(), chunk.len(), "every message sealed");
        let change = Change {
            put: c.bundles,
            private: c.private,
            ..Default::default()
        };
        RouteStore::commit(&from.store, change, now).expect("commit");
    }
}

fn inbox_len(n: &Node) -> usize {
    n.store
        .for_destination_node(&n.node_id())
        .expect("inbox")
        .len()
}

fn serve(
    rt: &tokio::runtime::Runtime,
    node: Arc<Node>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let _g = rt.enter();
    let cfg = QuicConfig::default();
    let ep = quic::server_endpoint(&node.identity, ([127, 0, 0, 1], 0).into(), None, &cfg)
        .expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(quic::serve(node, ep, cfg, |_, _| {}, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

struct Row {
    what: String,
    secs: f64,
    items: usize,
    bytes: u64,
    base_secs: f64,
}

impl Row {
    fn print(&self) {
        println!(
            "| {:<38} | {:>8.2} | {:>9.0} | {:>8.1} | {:>9.0} | {:>8.1} | {:>6.2} |",
            self.what,
            self.secs,
            self.items as f64 / self.secs,
            self.bytes as f64 / 1e6 / self.secs,
            self.items as f64 / self.base_secs,
            self.bytes as f64 / 1e6 / self.base_secs,
            self.secs / self.base_secs,
        );
    }
}

/// Deliver what `sender` holds for `key_file`'s node by stick, feed and QUIC (last: the
/// receipts that come back with the next sync let the sender drop its copies).
fn media(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    label: &str,
    sender: &Node,
    key_file: &Path,
    count: usize,
    feed: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let now = DtnTime::now();

    // Stick: export, then import at the recipient.
    let stick = root.join(format!("{label}-stick"));
    perf_ctl("export", true);
    let t = Instant::now();
    let e = folder::export(
        sender,
        &stick,
        &ExportOptions {
            for_node: None,
            max_bytes: None,
            policy: Policy::folder(0.25),
            now,
            have_summary: false,
            node_records: false,
            only: None,
        },
        &ProgressBar::hidden(),
    )
    .expect("export");
    let export_s = t.elapsed().as_secs_f64();
    perf_ctl("export", false);
    assert_eq!(e.bundles, count);
    let drive = dir_bytes(&stick);
    let base = cp_sync(&stick, &root.join(format!("{label}-stick-copy")));
    let b = recipient(root, &format!("{label}-b-stick"), key_file, sender);
    perf_ctl("import", true);
    let t = Instant::now();
    let i = folder::import(
        &b,
        &stick,
        &ImportOptions { clean: false, now },
        &ProgressBar::hidden(),
    )
    .expect("import");
    let import_s = t.elapsed().as_secs_f64();
    perf_ctl("import", false);
    assert_eq!(i.delivered, count, "{i:?}");
    assert_eq!(inbox_len(&b), count);
    rows.push(Row {
        what: format!("{label}: stick export"),
        secs: export_s,
        items: count,
        bytes: drive,
        base_secs: base,
    });
    rows.push(Row {
        what: format!("{label}: stick import (delivered)"),
        secs: import_s,
        items: count,
        bytes: drive,
        base_secs: base,
    });
    rows.push(Row {
        what: format!("{label}: stick export + import"),
        secs: export_s + import_s,
        items: count,
        bytes: drive,
        base_secs: base,
    });
    drop(b);

    if feed {
        let out = root.join(format!("{label}-feed"));
        let t = Instant::now();
        let p = broadcast::publish(
            sender,
            &out,
            &PublishOptions::new(now),
            &ProgressBar::hidden(),
        )
        .expect("publish");
        let publish_s = t.elapsed().as_secs_f64();
        let feed_bytes = dir_bytes(&out);
        let base = cp_sync(&out, &root.join(format!("{label}-feed-copy")));
        let b = recipient(root, &format!("{label}-b-feed"), key_file, sender);
        b.store
            .add_trust(
                &sender.node_id().to_string(),
                mycelium::store::TRUST_BROADCAST,
            )
            .expect("trust");
        perf_ctl("ingest", true);
        let t = Instant::now();
        let g = broadcast::ingest(
            &b,
            &out,
            &IngestOptions {
                any_signer: false,
                now,
            },
            &ProgressBar::hidden(),
        )
        .expect("ingest");
        let ingest_s = t.elapsed().as_secs_f64();
        perf_ctl("ingest", false);
        assert!(p.bundles >= count, "{p:?}");
        assert_eq!(inbox_len(&b), count, "{g:?}");
        rows.push(Row {
            what: format!("{label}: feed publish"),
            secs: publish_s,
            items: count,
            bytes: feed_bytes,
            base_secs: base,
        });
        rows.push(Row {
            what: format!("{label}: feed ingest (delivered)"),
            secs: ingest_s,
            items: count,
            bytes: feed_bytes,
            base_secs: base,
        });
        rows.push(Row {
            what: format!("{label}: feed publish + ingest"),
            secs: publish_s + ingest_s,
            items: count,
            bytes: feed_bytes,
            base_secs: base,
        });
    }
    // QUIC: the sender syncs with the recipient, which serves.
    let b = Arc::new(recipient(
        root,
        &format!("{label}-b-quic"),
        key_file,
        sender,
    ));
    let (addr, stop) = serve(rt, b.clone());
    perf_ctl("quic", true);
    let t = Instant::now();
    let r = rt
        .block_on(quic::sync_with(sender, addr, None, &QuicConfig::default()))
        .expect("sync");
    let quic_s = t.elapsed().as_secs_f64();
    perf_ctl("quic", false);
    assert_eq!(inbox_len(&b), count, "{r:?}");
    rows.push(Row {
        what: format!("{label}: QUIC sync (delivered)"),
        secs: quic_s,
        items: count,
        bytes: r.stats.payload_bytes_out,
        base_secs: base,
    });
    // The receipts come back with the next sync.
    let back = rt
        .block_on(quic::sync_with(sender, addr, None, &QuicConfig::default()))
        .expect("sync back");
    let _ = stop.send(());
    println!(
        "{label}: receipts for {count} deliveries: {} bundles, {} B of bundles ({:.1} B per delivery), {} B on the wire both ways in that sync ({:.1} B per delivery); {} copies dropped at the sender",
        back.stats.bundles_in,
        back.stats.payload_bytes_in,
        back.stats.payload_bytes_in as f64 / count as f64,
        back.wire_rx + back.wire_tx,
        (back.wire_rx + back.wire_tx) as f64 / count as f64,
        back.purged,
    );

    rows
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("DELIVERY_N", 10_000);
    let big = env_usize("DELIVERY_BIG", 100);
    let base: PathBuf = std::env::var_os("DELIVERY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("tmp");
    let root = dir.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The recipient's identity, in a key file copied into each fresh recipient home.
    let b0 = Node::init(&root.join("b0")).expect("init");
    let key_file = root.join("b0").join("identity.key");
    let b_id = b0.node_id();
    let b_xpk = b0.identity.seal_key().public();
    drop(b0);

    println!("delivery of sealed messages to their recipient ({n} x 1 KiB, {big} x 1 MiB)");
    println!(
        "| {:<38} | {:>8} | {:>9} | {:>8} | {:>9} | {:>8} | {:>6} |",
        "what", "s", "bundles/s", "MB/s", "cp bndl/s", "cp MB/s", "x cp"
    );
    println!(
        "|{:-<40}|{:->10}|{:->11}|{:->10}|{:->11}|{:->10}|{:->8}|",
        "", "", "", "", "", "", ""
    );

    let small = Node::init(&root.join("a-small")).expect("init");
    small
        .store
        .set_contact(&b_id.to_string(), &b_xpk)
        .expect("contact");
    let t = Instant::now();
    send_sealed(
        &small,
        &b_id,
        (0..n)
            .map(|i| {
                let mut text = format!("message {i} ");
                text.extend(std::iter::repeat_n('x', 1024 - text.len()));
                adu::encode_message(&Message::Text(text))
            })
            .collect(),
    );
    let made = t.elapsed().as_secs_f64();
    for row in media(&rt, root, "1 KiB", &small, &key_file, n, true) {
        row.print();
    }

    let large = Node::init(&root.join("a-large")).expect("init");
    large
        .store
        .set_contact(&b_id.to_string(), &b_xpk)
        .expect("contact");
    send_sealed(
        &large,
        &b_id,
        (0..big)
            .map(|i| {
                let mut data = vec![0u8; 1 << 20];
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                adu::encode_message(&Message::File(FileMessage {
                    name: format!("f{i}"),
                    media_type: "application/octet-stream".into(),
                    data,
                }))
            })
            .collect(),
    );
    for row in media(&rt, root, "1 MiB", &large, &key_file, big, false) {
        row.print();
    }
    println!(
        "(sealing the {n} small messages at the sender took {made:.1} s: {:.0} per second)",
        n as f64 / made
    );
}
