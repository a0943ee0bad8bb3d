//! Sync figures for the closing note of the QUIC sync issue:
//! 1. reconciliation of two sets of 100,000 bundle keys that differ by 100 (50 on each
//!    side): bytes and round trips, against sending the full id list (32 B a key);
//! 2. sync throughput over QUIC on loopback between two real nodes (RocksDB stores in
//!    temp dirs, synced writes, signatures verified on arrival) for 1 KiB and 1 MiB
//!    bundles, in MB/s and bundles/s;
//! 3. resuming after a cut at 50%: the first session stops half way (its byte budget),
//!    the next one reconciles and moves only the rest.
//!
//! Run: `cargo bench --bench sync`.

use mycelium::adu::{self, Message};
use mycelium::node::Node;
use mycelium::sync::drive::{run_pair, BundleIo};
use mycelium::sync::session::{Item, Limits, Session};
use mycelium::time::DtnTime;
use mycelium::transport::quic::{self, QuicConfig};
use std::sync::Arc;
use std::time::Instant;

struct NoBundles;
impl BundleIo for NoBundles {
    fn outgoing(&mut self, _: &[u8; 32]) -> Option<Vec<u8>> {
        None
    }
    fn incoming(&mut self, _: Vec<u8>) -> Result<[u8; 32], String> {
        Err("reconciliation only".into())
    }
}

fn key(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn item(i: u64) -> Item {
    Item {
        key: key(i),
        created_ms: 800_000_000_000 + i * 37,
        class: 2,
        for_peer: false,
        expires_ms: u64::MAX,
        size: 1024,
        sendable: false,
    }
}

fn reconciliation() {
    let n = 100_000u64;
    // Shared 0..n-50; a adds 50 of its own, b adds 50 others.
    let shared: Vec<Item> = (0..n - 50).map(item).collect();
    let mut a_items = shared.clone();
    a_items.extend((n..n + 50).map(item));
    let mut b_items = shared;
    b_items.extend((n + 50..n + 100).map(item));
    let t = Instant::now();
    let mut a = Session::initiator(a_items, Limits::default()).expect("initiator");
    let mut b = Session::responder(b_items, Limits::default()).expect("responder");
    let ex = run_pair(&mut a, &mut NoBundles, &mut b, &mut NoBundles, None)
        .map_err(|(_, e)| e)
        .expect("reconcile");
    let el = t.elapsed();
    let s = a.stats();
    let recon = s.recon_bytes_out + s.recon_bytes_in;
    let full = n * 32;
    println!("reconcile 100,000 vs 100,000 keys differing by 100 (50 each side):");
    println!(
        "  found: a lacks {}, b lacks {}; {} negentropy rounds, {} round trips in all (incl. Hello/Want/Done)",
        s.we_lack, s.peer_lacks, s.rounds, ex.round_trips
    );
    println!(
        "  reconciliation bytes {} ({} B of frames in all) vs full id list {} B: {:.1}x smaller; {:.0} ms CPU for both sides",
        recon,
        ex.bytes,
        full,
        full as f64 / recon as f64,
        el.as_secs_f64() * 1000.0
    );
}

fn fill(node: &Node, to: &mycelium::bundle::Eid, count: usize, size: usize) {
    let now = DtnTime::now();
    for i in 0..count {
        let mut data = vec![0u8; size];
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let p = adu::encode_message(&Message::File(adu::FileMessage {
            name: format!("f{i}"),
            media_type: "application/octet-stream".into(),
            data,
        }));
        node.originate(to.clone(), p, 86_400_000, now)
            .expect("originate");
    }
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

/// A source node holding `count` bundles of `size` bytes, and a served destination.
struct Pair {
    _dir: tempfile::TempDir,
    src: Node,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn pair(rt: &tokio::runtime::Runtime, count: usize, size: usize) -> Pair {
    let dir = tempfile::tempdir().expect("tmp");
    let src = Node::init(&dir.path().join("src")).expect("init");
    let dst = Arc::new(Node::init(&dir.path().join("dst")).expect("init"));
    // Addressed to a third node, so the receiver stores and carries them (no receipts).
    let far = mycelium::identity::Identity::generate().node_id();
    fill(&src, &far, count, size);
    let (addr, stop) = serve(rt, dst);
    Pair {
        _dir: dir,
        src,
        addr,
        stop,
    }
}

fn throughput(rt: &tokio::runtime::Runtime, count: usize, size: usize) {
    let Pair {
        _dir,
        src,
        addr,
        stop,
    } = pair(rt, count, size);
    let t = Instant::now();
    let r = rt
        .block_on(quic::sync_with(&src, addr, None, &QuicConfig::default()))
        .expect("sync");
    let el = t.elapsed().as_secs_f64();
    let _ = stop.send(());
    assert_eq!(r.stats.bundles_out as usize, count);
    let mb = r.stats.payload_bytes_out as f64 / 1e6;
    println!(
        "  {count} x {size} B: {:.2} s, {:.1} MB/s, {:.0} bundles/s (wire {:.1} MB)",
        el,
        mb / el,
        count as f64 / el,
        r.wire_tx as f64 / 1e6
    );
}

fn resume(rt: &tokio::runtime::Runtime, count: usize, size: usize) {
    let Pair {
        _dir,
        src,
        addr,
        stop,
    } = pair(rt, count, size);
    let total: u64 = (count * (size + 200)) as u64;
    let mut half = QuicConfig::default();
    half.limits.byte_budget = total / 2;
    let t = Instant::now();
    let r1 = rt
        .block_on(quic::sync_with(&src, addr, None, &half))
        .expect("first half");
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let r2 = rt
        .block_on(quic::sync_with(&src, addr, None, &QuicConfig::default()))
        .expect("resume");
    let second = t.elapsed().as_secs_f64();
    let _ = stop.send(());
    assert_eq!(
        (r1.stats.bundles_out + r2.stats.bundles_out) as usize,
        count
    );
    println!(
        "  {count} x {size} B cut after {} bundles ({:.2} s); resumed session: {} rounds, {} B of reconciliation, sent the other {} (none twice) in {:.2} s",
        r1.stats.bundles_out,
        first,
        r2.stats.rounds,
        r2.stats.recon_bytes_out + r2.stats.recon_bytes_in,
        r2.stats.bundles_out,
        second
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    reconciliation();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("sync over QUIC on loopback (real stores, synced writes, signatures checked):");
    throughput(&rt, 5000, 1024);
    throughput(&rt, 200, 1 << 20);
    println!("resume after a cut at 50%:");
    resume(&rt, 200, 1 << 20);
}
