//! QUIC sync between real nodes on loopback: real RocksDB stores in temp dirs, real
//! quinn endpoints, Ed25519 raw-public-key TLS. Hostile peers are real QUIC clients that
//! misbehave on purpose.

use mycelium::adu::{self, Message};
use mycelium::bundle::Eid;
use mycelium::node::Node;
use mycelium::sync::wire::Frame;
use mycelium::time::DtnTime;
use mycelium::transport::quic::{self, QuicConfig, QuicError, SessionReport};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const DAY: u64 = 86_400_000;

fn text(node: &Node, to: &Eid, s: &str) -> [u8; 32] {
    let p = adu::encode_message(&Message::Text(s.into()));
    node.originate(to.clone(), p, DAY, DtnTime::now())
        .unwrap()
        .id()
        .key()
}

type Log = Arc<Mutex<Vec<(Option<Eid>, Result<SessionReport, String>)>>>;

/// Start serving `node` on loopback; returns its address, the session log and a stopper.
fn start_server(
    rt: &tokio::runtime::Runtime,
    node: Arc<Node>,
    allow: Option<Vec<[u8; 32]>>,
    cfg: QuicConfig,
) -> (SocketAddr, Log, oneshot::Sender<()>) {
    let _g = rt.enter();
    let ep = quic::server_endpoint(
        &node.identity,
        "127.0.0.1:0".parse().unwrap(),
        allow.map(|v| v.into_iter().collect()),
        &cfg,
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let log: Log = Arc::default();
    let l2 = log.clone();
    let (tx, rx) = oneshot::channel::<()>();
    rt.spawn(quic::serve(
        node,
        ep,
        cfg,
        move |peer, r| {
            l2.lock()
                .unwrap()
                .push((peer, r.map_err(|e| e.to_string())))
        },
        async {
            let _ = rx.await;
        },
    ));
    (addr, log, tx)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn node(dir: &tempfile::TempDir, name: &str) -> Node {
    Node::init(&dir.path().join(name)).unwrap()
}

#[test]
fn two_nodes_exchange_exactly_what_the_other_lacks_and_receipts_purge_copies() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let b = Arc::new(node(&dir, "b"));
    let c = node(&dir, "c");
    // a holds 3 messages for b and 2 for c; b holds 1 for a.
    let for_b: Vec<_> = (0..3)
        .map(|i| text(&a, &b.node_id(), &format!("hi b {i}")))
        .collect();
    let for_c: Vec<_> = (0..2)
        .map(|i| text(&a, &c.node_id(), &format!("hi c {i}")))
        .collect();
    let for_a = text(&b, &a.node_id(), "hi a");
    let rt = rt();
    let (addr, log, stop) = start_server(&rt, b.clone(), None, QuicConfig::default());

    let r = rt
        .block_on(quic::sync_with(
            &a,
            addr,
            Some(&b.node_id()),
            &QuicConfig::default(),
        ))
        .unwrap();
    assert_eq!(r.peer, Some(b.node_id()));
    assert_eq!(r.stats.we_lack, 1, "{r:?}");
    assert_eq!(r.stats.peer_lacks, 5, "{r:?}");
    assert_eq!(r.stats.bundles_out, 5);
    assert_eq!(r.new, 1);
    assert_eq!(r.delivered, 1, "a is the destination of b's message");
    // b got all five, delivered three to itself and carries two for c.
    for k in for_b.iter().chain(&for_c) {
        assert!(b.store.record(k).unwrap().is_some());
    }
    assert_eq!(b.inbox().unwrap().len(), 3);
    assert!(a.store.record(&for_a).unwrap().is_some());

    // Second sync: nothing but receipts moves. b's one receipt for its three deliveries
    // (receipts in bulk) reaches a, which drops its copies of the delivered bundles; a's
    // receipt reaches b, which drops for_a.
    let r2 = rt
        .block_on(quic::sync_with(
            &a,
            addr,
            Some(&b.node_id()),
            &QuicConfig::default(),
        ))
        .unwrap();
    assert_eq!(
        r2.new, 1,
        "one receipt from b for its three deliveries: {r2:?}"
    );
    assert_eq!(r2.purged, 3);
    assert_eq!(r2.stats.bundles_out, 1, "a's one receipt: {r2:?}");
    for k in &for_b {
        assert!(
            a.store.record(k).unwrap().is_none(),
            "a still carries a delivered bundle"
        );
    }
    for k in &for_c {
        assert!(
            a.store.record(k).unwrap().is_some(),
            "undelivered copies stay"
        );
    }
    assert!(b.store.record(&for_a).unwrap().is_none());
    // A third sync moves nothing at all.
    let r3 = rt
        .block_on(quic::sync_with(&a, addr, None, &QuicConfig::default()))
        .unwrap();
    assert_eq!(
        (r3.stats.bundles_out, r3.stats.bundles_in),
        (0, 0),
        "{r3:?}"
    );
    let _ = stop.send(());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|(p, r)| p.as_ref() == Some(&a.node_id()) && r.is_ok()));
    let peers = a.store.peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].1.sessions, 3);
}

#[test]
fn a_server_refuses_keys_off_its_allow_list_and_a_client_refuses_the_wrong_server() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let b = Arc::new(node(&dir, "b"));
    let stranger = node(&dir, "s");
    text(&a, &b.node_id(), "x");
    let rt = rt();
    let allow = vec![a.identity.public_key()];
    let (addr, log, _stop) = start_server(&rt, b.clone(), Some(allow), QuicConfig::default());
    // The stranger is refused in the handshake (TLS 1.3 client authentication: the
    // client learns it as the connection being closed); nothing is stored.
    let e = rt
        .block_on(quic::sync_with(
            &stranger,
            addr,
            None,
            &QuicConfig::default(),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    // A client that expects another node refuses b.
    let e = rt
        .block_on(quic::sync_with(
            &a,
            addr,
            Some(&stranger.node_id()),
            &QuicConfig::default(),
        ))
        .unwrap_err();
    assert!(matches!(e, QuicError::Connect { .. }), "{e}");
    assert!(b.store.is_empty().unwrap());
    // The allowed node still syncs.
    rt.block_on(quic::sync_with(
        &a,
        addr,
        Some(&b.node_id()),
        &QuicConfig::default(),
    ))
    .unwrap();
    assert_eq!(
        b.inbox().unwrap().len(),
        1,
        "the message arrived (and b issued a receipt)"
    );
    assert!(log.lock().unwrap().iter().any(|(_, r)| r.is_ok()));
}

/// A server whose finished sessions arrive on a channel (so tests wait for events, not
/// for time).
fn start_server_chan(
    rt: &tokio::runtime::Runtime,
    node: Arc<Node>,
    cfg: QuicConfig,
) -> (
    SocketAddr,
    std::sync::mpsc::Receiver<Result<SessionReport, String>>,
    oneshot::Sender<()>,
) {
    let _g = rt.enter();
    let ep =
        quic::server_endpoint(&node.identity, "127.0.0.1:0".parse().unwrap(), None, &cfg).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    rt.spawn(quic::serve(
        node,
        ep,
        cfg,
        move |_, r| {
            let _ = tx.lock().unwrap().send(r.map_err(|e| e.to_string()));
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    (addr, rx, stop_tx)
}

/// Connect as `id` and run `script` on a raw stream: a hostile peer with a valid key.
fn hostile<F, Fut>(
    rt: &tokio::runtime::Runtime,
    id: &mycelium::identity::Identity,
    addr: SocketAddr,
    script: F,
) where
    F: FnOnce(quinn::SendStream, quinn::RecvStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let ep = quic::client_endpoint(
            id,
            "127.0.0.1:0".parse().unwrap(),
            None,
            &QuicConfig::default(),
        )
        .unwrap();
        let conn = ep.connect(addr, "mycelium").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        script(send, recv).await;
        conn.close(0u32.into(), b"bye");
        ep.wait_idle().await;
    });
}

fn hello() -> Vec<u8> {
    Frame::Hello {
        version: 1,
        items: 0,
    }
    .encode()
}

#[test]
fn hostile_peers_are_cut_off_with_a_reason_and_nothing_stored_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(node(&dir, "server"));
    let honest = node(&dir, "honest");
    let evil = node(&dir, "evil");
    let kept = text(&server, &honest.node_id(), "already here");
    let rt = rt();
    let cfg = QuicConfig {
        frame_timeout: Duration::from_millis(800),
        ..QuicConfig::default()
    };
    let (addr, log, _stop) = start_server_chan(&rt, server.clone(), cfg);
    let next = || {
        log.recv_timeout(Duration::from_secs(30))
            .expect("no session report")
    };

    // 1. An oversized frame header: refused before anything is allocated.
    hostile(&rt, &evil.identity, addr, |mut s, mut r| async move {
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let _ = r.read_to_end(1 << 16).await;
    });
    let e = next().unwrap_err();
    assert!(e.contains("exceeds the limit"), "{e}");

    // 2. A malformed frame (unknown type).
    hostile(&rt, &evil.identity, addr, |mut s, mut r| async move {
        s.write_all(&hello()).await.unwrap();
        s.write_all(&[0, 0, 0, 1, 99]).await.unwrap();
        let _ = r.read_to_end(1 << 16).await;
    });
    let e = next().unwrap_err();
    assert!(e.contains("unknown frame type 99"), "{e}");

    // 3. A tampered bundle: signed by evil, one payload byte changed.
    let forged = {
        let p = adu::encode_message(&Message::Text("pay evil 1000".into()));
        let vb = evil
            .originate(server.node_id(), p, DAY, DtnTime::now())
            .unwrap();
        let mut raw = vb.raw().to_vec();
        let i = raw.len() - 10;
        raw[i] ^= 0x20;
        raw
    };
    hostile(&rt, &evil.identity, addr, move |mut s, mut r| async move {
        s.write_all(&hello()).await.unwrap();
        s.write_all(&Frame::Bundle(forged).encode()).await.unwrap();
        let _ = r.read_to_end(1 << 16).await;
    });
    let e = next().unwrap_err();
    assert!(e.contains("invalid bundle"), "{e}");

    // 4. Endless reconciliation: the same opening message over and over.
    let init = {
        use negentropy::{Negentropy, NegentropyStorageVector};
        let mut st = NegentropyStorageVector::new();
        st.seal().unwrap();
        let mut n = Negentropy::owned(st, 0).unwrap();
        n.initiate().unwrap()
    };
    hostile(&rt, &evil.identity, addr, move |mut s, mut r| async move {
        s.write_all(&hello()).await.unwrap();
        for _ in 0..200 {
            if s.write_all(&Frame::Recon(init.clone()).encode())
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = r.read_to_end(1 << 24).await;
    });
    let e = next().unwrap_err();
    assert!(e.contains("within 64 rounds"), "{e}");

    // 5. Slow loris: half a header, then silence.
    hostile(&rt, &evil.identity, addr, |mut s, mut r| async move {
        s.write_all(&[0, 0]).await.unwrap();
        let _ = r.read_to_end(1 << 16).await;
    });
    let e = next().unwrap_err();
    assert!(e.contains("sent nothing for"), "{e}");

    // 6. A peer that drops mid-transfer: Hello, then gone.
    hostile(&rt, &evil.identity, addr, |mut s, _r| async move {
        s.write_all(&hello()).await.unwrap();
        let _ = s.finish();
    });
    let e = next().unwrap_err();
    assert!(e.contains("closed") || e.contains("lost"), "{e}");

    // Through all of it: nothing stored was lost, nothing forged was stored, and an
    // honest peer still syncs.
    assert_eq!(server.store.len().unwrap(), 1);
    assert!(server.store.record(&kept).unwrap().is_some());
    let r = rt
        .block_on(quic::sync_with(
            &honest,
            addr,
            Some(&server.node_id()),
            &QuicConfig::default(),
        ))
        .unwrap();
    assert_eq!(r.new, 1);
    assert!(next().is_ok());
}

#[test]
fn spray_and_wait_hands_out_half_the_copies_then_waits_for_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let relays: Vec<Arc<Node>> = ["b", "c", "e"]
        .iter()
        .map(|n| Arc::new(node(&dir, n)))
        .collect();
    let d = Arc::new(node(&dir, "d"));
    let k = text(&a, &d.node_id(), "four copies at most");
    a.store.set_copies(&k, 4).unwrap();
    let rt = rt();
    let cfg = QuicConfig::default();
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for n in relays.iter().chain([&d]) {
        let (addr, _log, stop) = start_server(&rt, n.clone(), None, cfg.clone());
        addrs.push(addr);
        stops.push(stop);
    }
    let sync = |from: &Node, i: usize| {
        rt.block_on(quic::sync_with(from, addrs[i], None, &cfg))
            .unwrap()
    };
    // a (4) → b: b gets 2, a keeps 2; a (2) → c: c gets 1, a keeps 1.
    assert_eq!(sync(&a, 0).stats.bundles_out, 1);
    assert_eq!(relays[0].store.copies(&k).unwrap(), Some(2));
    assert_eq!(a.store.copies(&k).unwrap(), Some(2));
    assert_eq!(sync(&a, 1).stats.bundles_out, 1);
    assert_eq!(relays[1].store.copies(&k).unwrap(), Some(1));
    assert_eq!(a.store.copies(&k).unwrap(), Some(1));
    // With one copy left a waits: e gets nothing.
    assert_eq!(sync(&a, 2).stats.bundles_out, 0);
    assert!(relays[2].store.record(&k).unwrap().is_none());
    // c, holding its last copy, still hands it to the destination itself.
    assert_eq!(sync(&relays[1], 3).stats.bundles_out, 1);
    assert_eq!(d.inbox().unwrap().len(), 1);
}

#[test]
fn a_relay_carries_what_it_cannot_read_and_the_receipt_comes_home_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let r = Arc::new(node(&dir, "r"));
    let b = Arc::new(node(&dir, "b"));
    let now = DtnTime::now();
    // Everyone publishes a node record; a and b meet r, so records spread through r.
    for n in [&a, &*r, &*b] {
        n.publish_record(now).unwrap();
    }
    let rt = rt();
    let cfg = QuicConfig::default();
    let (r_addr, _l1, _s1) = start_server(&rt, r.clone(), None, cfg.clone());
    let (b_addr, _l2, _s2) = start_server(&rt, b.clone(), None, cfg.clone());
    let sync =
        |from: &Node, to: SocketAddr| rt.block_on(quic::sync_with(from, to, None, &cfg)).unwrap();
    sync(&b, r_addr); // b's record reaches r
    sync(&a, r_addr); // a learns b's key from r; r learns a's
    sync(&b, r_addr); // b learns a's key (to seal its receipt)
    let p = adu::encode_message(&Message::Text("only b may read this".into()));
    let (inner, outer) = a.send(b.node_id(), p, DAY, now, true).unwrap();
    let outer = outer.unwrap();
    let s = sync(&a, r_addr);
    assert_eq!(
        s.stats.bundles_out, 1,
        "only the sealed bundle travels: {s:?}"
    );
    // r holds it, cannot open it, and never saw the inner bundle.
    assert!(r.store.record(&outer.id().key()).unwrap().is_some());
    assert!(r.store.record(&inner.id().key()).unwrap().is_none());
    assert!(r.inbox().unwrap().is_empty());
    // r meets b: b opens it and answers with a sealed receipt.
    let s = sync(&r, b_addr);
    assert_eq!(s.delivered, 0);
    let inbox = b.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].record.source, a.node_id().to_string());
    assert!(
        b.store.of_kind("receipt").unwrap().is_empty()
            && b.store.of_kind("receipts").unwrap().is_empty(),
        "no receipt in clear"
    );
    // b keeps no copy of the outer bundle: its receipt reveals the delivery secret.
    assert!(b.store.record(&outer.id().key()).unwrap().is_none());
    // The sealed receipt goes back through r to a. Its envelope reveals the delivery
    // secret, so r drops the sealed copy it carried (without learning who got it), and a
    // drops both its travelling copy and, by the signed receipt inside, its private one.
    sync(&r, b_addr);
    assert!(
        r.store.record(&outer.id().key()).unwrap().is_none(),
        "the relay still carries a delivered sealed bundle"
    );
    let s = sync(&a, r_addr);
    assert_eq!(s.purged, 2, "{s:?}");
    assert!(a.store.record(&inner.id().key()).unwrap().is_none());
    assert!(a.store.record(&outer.id().key()).unwrap().is_none());
    assert!(
        r.store.of_kind("receipt").unwrap().is_empty()
            && r.store.of_kind("receipts").unwrap().is_empty(),
        "r never saw a clear receipt"
    );
}

#[test]
fn one_contact_cannot_fill_a_relay_with_sealed_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let flood = node(&dir, "flood");
    let relay = Arc::new(node(&dir, "relay"));
    let victim = mycelium::identity::Identity::from_seed([7; 32]);
    flood
        .store
        .set_contact(&victim.node_id().to_string(), &victim.seal_key().public())
        .unwrap();
    for i in 0..12 {
        let p = adu::encode_message(&Message::Text(format!("junk {i}")));
        flood
            .send(victim.node_id(), p, DAY, DtnTime::now(), true)
            .unwrap();
    }
    let rt = rt();
    let cfg = QuicConfig {
        sealed_quota: 5,
        ..QuicConfig::default()
    };
    let (addr, log, _stop) = start_server(&rt, relay.clone(), None, cfg);
    rt.block_on(quic::sync_with(&flood, addr, None, &QuicConfig::default()))
        .unwrap();
    let sealed = relay.store.of_kind("sealed").unwrap().len();
    assert_eq!(
        sealed, 5,
        "the relay took {sealed} sealed bundles from one contact"
    );
    let log = log.lock().unwrap();
    let r = log[0].1.as_ref().unwrap();
    assert_eq!(r.refused, 7);
}

/// A sealed bundle that arrives twice in one session, the second time before the first
/// is written, counts once against the contact's quota: the next new one still fits.
#[test]
fn a_repeated_sealed_bundle_counts_once_against_the_quota() {
    use mycelium::sync::drive::BundleIo;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let relay = node(&dir, "relay");
    let victim = mycelium::identity::Identity::from_seed([7; 32]);
    a.store
        .set_contact(&victim.node_id().to_string(), &victim.seal_key().public())
        .unwrap();
    let raw = sealed_for(&a, &victim.node_id(), 2);
    let mut io = quic::NodeIo::new(&relay, DtnTime::now(), None, 2);
    for r in [&raw[0], &raw[0], &raw[1]] {
        io.incoming(r.clone()).unwrap();
    }
    io.flush().unwrap();
    assert_eq!(io.report.refused, 0, "{:?}", io.report);
    assert_eq!(relay.store.of_kind("sealed").unwrap().len(), 2);
    // And the quota still holds: a third new one is refused.
    let p = adu::encode_message(&Message::Text("sealed 2".into()));
    a.send(victim.node_id(), p, DAY, DtnTime::now(), true)
        .unwrap();
    let third = a
        .store
        .of_kind("sealed")
        .unwrap()
        .into_iter()
        .find(|k| relay.store.get_raw(k).unwrap().is_none())
        .unwrap();
    io.incoming(a.store.get_raw(&third).unwrap().unwrap())
        .unwrap();
    io.flush().unwrap();
    assert_eq!(io.report.refused, 1);
    assert_eq!(relay.store.of_kind("sealed").unwrap().len(), 2);
}

#[test]
fn a_forged_receipt_neither_stops_nor_deletes_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let relay = node(&dir, "relay");
    let b = mycelium::identity::Identity::from_seed([5; 32]);
    let forger = node(&dir, "forger");
    let k = text(&a, &b.node_id(), "must get through");
    let raw = a.store.get_raw(&k).unwrap().unwrap();
    relay.receive(&raw, DtnTime::now()).unwrap();
    // The forger (not b) claims b received it, and for a bundle the relay never held.
    for target in [k, [9u8; 32]] {
        let rec = adu::encode_receipt(&adu::Receipt {
            bundle: target,
            created: 0,
            expires: DtnTime::now().0 + DAY,
            at: DtnTime::now().0,
        });
        let vb = forger
            .originate(a.node_id(), rec, DAY, DtnTime::now())
            .unwrap();
        relay.receive(vb.raw(), DtnTime::now()).unwrap();
    }
    assert!(
        relay.store.record(&k).unwrap().is_some(),
        "the relay dropped it"
    );
    let items = relay
        .store
        .sync_items(&relay.node_id(), None, DtnTime::now())
        .unwrap();
    assert!(
        items.iter().any(|i| i.key == k && i.sendable),
        "the relay stopped offering it"
    );
    assert!(
        items.iter().all(|i| i.key != [9u8; 32]),
        "an unverified tombstone entered the set"
    );
}

#[test]
fn arrivals_beyond_one_batch_are_written_while_the_next_is_verified() {
    // Twenty 1 MiB messages: more than two full commit batches (8 MiB each), so the
    // receiver verifies each batch while the one before it is written; every bundle must
    // still be on disk when the sync ends, counted once and acknowledged once.
    let dir = tempfile::tempdir().unwrap();
    let a = node(&dir, "a");
    let b = Arc::new(node(&dir, "b"));
    let big: Vec<_> = (0..20)
        .map(|i| text(&a, &b.node_id(), &format!("{i:02}{}", "m".repeat(1 << 20))))
        .collect();
    let rt = rt();
    // Batches close only when full (or at `Done`), however slowly a debug build runs.
    let cfg = QuicConfig {
        batch_wait: Duration::from_secs(60),
        ..QuicConfig::default()
    };
    let (addr, log, stop) = start_server(&rt, b.clone(), None, cfg.clone());
    let r = rt
        .block_on(quic::sync_with(&a, addr, Some(&b.node_id()), &cfg))
        .unwrap();
    assert_eq!(r.stats.bundles_out, 20, "{r:?}");
    for k in &big {
        assert!(b.store.record(k).unwrap().is_some(), "b lacks a bundle");
    }
    assert_eq!(b.inbox().unwrap().len(), 20);
    // The receipts of all three batches come home and free a's copies.
    let r2 = rt
        .block_on(quic::sync_with(&a, addr, Some(&b.node_id()), &cfg))
        .unwrap();
    assert_eq!(r2.purged, 20, "{r2:?}");
    for k in &big {
        assert!(a.store.record(k).unwrap().is_none(), "a still carries one");
    }
    let _ = stop.send(());
    let log = log.lock().unwrap();
    let first = log[0].1.as_ref().unwrap();
    assert_eq!((first.new, first.delivered), (20, 20), "{first:?}");
}

/// `n` sealed text messages from `a` to `to`, as `send` makes them: their bytes.
fn sealed_for(a: &Node, to: &Eid, n: usize) -> Vec<Vec<u8>> {
    for i in 0..n {
        let p = adu::encode_message(&Message::Text(format!("sealed {i}")));
        a.send(to.clone(), p, DAY, DtnTime::now(), true).unwrap();
    }
    let raw: Vec<Vec<u8>> = a
        .store
        .of_kind("sealed")
        .unwrap()
        .iter()
        .map(|k| a.store.get_raw(k).unwrap().unwrap())
        .collect();
    assert_eq!(raw.len(), n);
    raw
}

/// What `a` still holds of its own messages (private copies and sealed outers).
fn own_copies(a: &Node) -> usize {
    a.store.of_kind("sealed").unwrap().len() + a.store.of_kind("message").unwrap().len()
}

/// `b`'s sealed receipts (a v2 recipient keeps no sealed outer of what it received, so
/// every sealed bundle it holds is a receipt it made), given to `a`.
fn receipts_home(b: &Node, a: &Node) -> usize {
    let keys = b.store.of_kind("sealed").unwrap();
    for k in &keys {
        a.receive(&b.store.get_raw(k).unwrap().unwrap(), DtnTime::now())
            .unwrap();
    }
    keys.len()
}

/// A session's batches are written as they come (here: each on the batch timer), and
/// what they delivered is acknowledged once, in one receipt at the session's end; until
/// then each delivery is marked owed on disk.
#[test]
fn a_session_acknowledges_what_its_batches_delivered_in_one_receipt_at_its_end() {
    use mycelium::sync::drive::BundleIo;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(&dir, "a"), node(&dir, "b"));
    let raw = sealed_for(&a, &b.node_id(), 6);
    assert_eq!(own_copies(&a), 12);
    let mut io = quic::NodeIo::new(&b, DtnTime::now(), Some(a.node_id()), 10_000);
    for (i, pair) in raw.chunks(2).enumerate() {
        for r in pair {
            io.incoming(r.clone()).unwrap();
        }
        io.flush_ahead().unwrap();
        // Delivered and on disk, the receipt owed: marked, not yet made.
        assert_eq!(io.report.delivered, 2 * (i as u64 + 1));
        assert_eq!(b.inbox().unwrap().len(), 2 * (i + 1));
        assert_eq!(b.store.owed_marks().unwrap().len(), 2 * (i + 1));
        assert!(b.store.of_kind("sealed").unwrap().is_empty());
    }
    // A session of this process owes them: the node leaves them to it.
    assert_eq!(b.pay_owed(DtnTime::now()).unwrap(), 0);
    io.flush().unwrap();
    drop(io);
    assert!(b.store.owed_marks().unwrap().is_empty());
    assert_eq!(
        receipts_home(&b, &a),
        1,
        "one receipt for the whole session"
    );
    assert_eq!(
        own_copies(&a),
        0,
        "the receipt acknowledges all six deliveries"
    );
}

/// A session stopped before its end (a crash, a cut without a last flush) leaves its
/// deliveries marked owed; the node issues their receipt when next started.
#[test]
fn receipts_a_stopped_session_owed_are_issued_when_the_node_next_starts() {
    use mycelium::sync::drive::BundleIo;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(&dir, "a"), node(&dir, "b"));
    let raw = sealed_for(&a, &b.node_id(), 3);
    let mut io = quic::NodeIo::new(&b, DtnTime::now(), Some(a.node_id()), 10_000);
    for r in &raw {
        io.incoming(r.clone()).unwrap();
    }
    io.flush_ahead().unwrap();
    drop(io);
    drop(b);
    let b = Node::open(&dir.path().join("b")).unwrap();
    assert_eq!(b.store.owed_marks().unwrap().len(), 3);
    assert!(b.store.of_kind("sealed").unwrap().is_empty());
    let settled = b.settle_unsettled(DtnTime::now()).unwrap();
    assert_eq!(settled.delivered, 0, "nothing is delivered twice");
    assert!(b.store.owed_marks().unwrap().is_empty());
    assert_eq!(b.inbox().unwrap().len(), 3);
    assert_eq!(receipts_home(&b, &a), 1);
    assert_eq!(own_copies(&a), 0);
    // Paid once: another start issues nothing more.
    assert_eq!(b.pay_owed(DtnTime::now()).unwrap(), 0);
}
