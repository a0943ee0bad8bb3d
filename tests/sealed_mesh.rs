//! Delivered sealed bundles stop travelling: a mesh of real nodes (RocksDB stores in temp
//! dirs) exchanging sealed messages over the real sync core (`Session` + the QUIC
//! transport's `NodeIo`, driven in memory by `run_pair`), with the real delivery rules.
//!
//! For each seed: 8 nodes that know each other's sealing keys, sealed messages between
//! random pairs, a random schedule of pairwise sessions (some cut after a few frames), then
//! a heal phase of full-mesh rounds. Asserted:
//! - every message reached its recipient's inbox exactly once;
//! - after the heal phase no node holds any copy of a delivered sealed message (its outer
//!   bundle): not the relays, not the sender, not the recipient; and the sender no longer
//!   holds its private inner copy either (the signed receipt inside told it);
//!
//! `SEALED_MESH_SEEDS=n` runs more seeds.

use mycelium::adu::{self, Message};
use mycelium::node::Node;
use mycelium::route::delivery::{Change, RouteStore};
use mycelium::sim::Rng;
use mycelium::sync::drive::run_pair;
use mycelium::sync::session::{Limits, Session};
use mycelium::time::DtnTime;
use mycelium::transport::quic::NodeIo;
use std::collections::{HashMap, HashSet};

const NODES: usize = 8;
const DAY: u64 = 86_400_000;

/// Nodes in `dir` that know each other's sealing keys (as their node records would
/// have taught them).
fn acquainted<const N: usize>(dir: &std::path::Path, names: [&str; N]) -> [Node; N] {
    let nodes = names.map(|n| Node::init(&dir.join(n)).unwrap());
    introduce(&nodes);
    nodes
}

fn introduce(nodes: &[Node]) {
    for x in nodes {
        for y in nodes {
            x.store
                .set_contact(&y.node_id().to_string(), &y.identity.seal_key().public())
                .unwrap();
        }
    }
}

/// `from` sends `text` sealed to `to`; the sealed (outer) bundle.
fn send_sealed(
    from: &Node,
    to: &Node,
    text: &str,
    now: DtnTime,
) -> mycelium::bundle::VerifiedBundle {
    let (_, outer) = from
        .send(
            to.node_id(),
            adu::encode_message(&Message::Text(text.into())),
            DAY,
            now,
            true,
        )
        .unwrap();
    outer.unwrap()
}

fn session(a: &Node, b: &Node, now: DtnTime, cut: Option<usize>) {
    let a_items = a
        .store
        .sync_items(&a.node_id(), Some(&b.node_id()), now)
        .unwrap();
    let b_items = b
        .store
        .sync_items(&b.node_id(), Some(&a.node_id()), now)
        .unwrap();
    let mut sa = Session::initiator(a_items, Limits::default()).unwrap();
    let mut sb = Session::responder(b_items, Limits::default()).unwrap();
    let mut ia = NodeIo::new(a, now, Some(b.node_id()), 10_000);
    let mut ib = NodeIo::new(b, now, Some(a.node_id()), 10_000);
    run_pair(&mut sa, &mut ia, &mut sb, &mut ib, cut)
        .map_err(|(side, e)| format!("{}: {e}", if side { "a" } else { "b" }))
        .unwrap();
}

fn run_seed(seed: u64) -> (usize, usize) {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ea1);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| Node::init(&dir.path().join(format!("n{i}"))).unwrap())
        .collect();
    introduce(&nodes);
    let now = DtnTime::now();
    // (sender, recipient, inner key, outer key)
    let mut sent = Vec::new();
    let mut outers = HashSet::new();
    let mut contacts = 0;
    for round in 0..40 {
        if round % 3 == 0 {
            let s = (rng.next_u64() % NODES as u64) as usize;
            let mut r = (rng.next_u64() % NODES as u64) as usize;
            if r == s {
                r = (r + 1) % NODES;
            }
            let text = format!("seed {seed} message {round}");
            let (inner, outer) = nodes[s]
                .send(
                    nodes[r].node_id(),
                    adu::encode_message(&Message::Text(text)),
                    DAY,
                    now,
                    true,
                )
                .unwrap();
            let outer = outer.unwrap().id().key();
            outers.insert(outer);
            sent.push((s, r, inner.id().key(), outer));
        }
        let a = (rng.next_u64() % NODES as u64) as usize;
        let b = (a + 1 + (rng.next_u64() % (NODES as u64 - 1)) as usize) % NODES;
        let cut = rng
            .next_u64()
            .is_multiple_of(4)
            .then(|| 3 + (rng.next_u64() % 6) as usize);
        session(&nodes[a], &nodes[b], now, cut);
        contacts += 1;
    }
    // Heal: full-mesh rounds.
    for _ in 0..3 {
        for a in 0..NODES {
            for b in 0..NODES {
                if a != b {
                    session(&nodes[a], &nodes[b], now, None);
                    contacts += 1;
                }
            }
        }
    }
    for (s, r, inner, outer) in &sent {
        let inbox: Vec<[u8; 32]> = nodes[*r].inbox().unwrap().iter().map(|i| i.key).collect();
        assert_eq!(
            inbox.iter().filter(|k| *k == inner).count(),
            1,
            "seed {seed}: message {} not delivered once",
            hex::encode(&inner[..6])
        );
        for (i, n) in nodes.iter().enumerate() {
            assert!(
                n.store.record(outer).unwrap().is_none(),
                "seed {seed}: node {i} (sender {s}, recipient {r}) still holds delivered sealed bundle {}",
                hex::encode(&outer[..6])
            );
        }
        assert!(
            nodes[*s].store.record(inner).unwrap().is_none(),
            "seed {seed}: the sender still holds its private copy"
        );
    }
    // Nothing a node carries is a sealed message that was delivered.
    let mut held: HashMap<[u8; 32], usize> = HashMap::new();
    for n in &nodes {
        for (k, _) in n.store.records().unwrap() {
            *held.entry(k).or_default() += 1;
        }
    }
    assert!(outers.iter().all(|o| !held.contains_key(o)));
    (sent.len(), contacts)
}

/// A copy of a delivered sealed bundle offered again (from a stick, a late peer) is
/// refused as already delivered, by relays that dropped it and by ones that never saw it.
#[test]
fn a_late_copy_of_a_delivered_sealed_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let [a, r, b, late] = acquainted(dir.path(), ["a", "r", "b", "late"]);
    let now = DtnTime::now();
    let outer = send_sealed(&a, &b, "hello", now);
    session(&a, &r, now, None); // r relays it
    session(&r, &b, now, None); // delivered; b's receipt is made
    session(&r, &b, now, None); // the receipt reaches r: r drops its copy
    assert!(r.store.record(&outer.id().key()).unwrap().is_none());
    session(&late, &r, now, None); // late never held it, but gets the receipt
    for n in [&r, &late, &b] {
        let got = n.receive(outer.raw(), now);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.to_string().contains("already confirmed delivery")),
            "{got:?}"
        );
        assert!(n.store.record(&outer.id().key()).unwrap().is_none());
    }
}

/// Only the real delivery secret drops a copy: a sealed bundle revealing made-up secrets,
/// or the secret of another bundle, leaves the relay's copy alone.
#[test]
fn made_up_delivery_secrets_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let [a, r, b] = acquainted(dir.path(), ["a", "r", "b"]);
    let now = DtnTime::now();
    let outer = send_sealed(&a, &b, "keep me", now);
    session(&a, &r, now, None);
    // A hostile node reveals 4096 random "secrets", and the tag itself (not a secret).
    let mut rng = Rng::new(7);
    let mut fake: Vec<[u8; 16]> = (0..4095)
        .map(|_| {
            let mut s = [0u8; 16];
            s[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            s[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            s
        })
        .collect();
    fake.push(mycelium::seal::tag_of(outer.bundle()).unwrap());
    let hostile = Node::init(&dir.path().join("h")).unwrap();
    let junk = hostile
        .compose(
            &[(
                Some(r.node_id()),
                adu::encode_message(&Message::Text("junk".into())),
                DAY,
            )],
            now,
            false,
        )
        .unwrap();
    let carrier = mycelium::seal::seal_revealing(
        &junk.bundles[0],
        &mycelium::seal::nobody(&mut rand_core::OsRng),
        now,
        &mut rand_core::OsRng,
        &fake,
    )
    .unwrap();
    RouteStore::commit(
        &hostile.store,
        Change {
            put: vec![carrier],
            ..Default::default()
        },
        now,
    )
    .unwrap();
    session(&hostile, &r, now, None);
    assert!(
        r.store.record(&outer.id().key()).unwrap().is_some(),
        "made-up secrets dropped a relay's copy"
    );
    // The real receipt still works afterwards.
    session(&r, &b, now, None);
    session(&r, &b, now, None);
    assert!(r.store.record(&outer.id().key()).unwrap().is_none());
}

#[test]
fn delivered_sealed_bundles_leave_every_node_after_healing() {
    let seeds = std::env::var("SEALED_MESH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4u64);
    let (mut msgs, mut contacts) = (0, 0);
    for seed in 0..seeds {
        let (m, c) = run_seed(seed);
        msgs += m;
        contacts += c;
    }
    println!("{seeds} seeds: {msgs} sealed messages, {contacts} sessions; no delivered copy left");
}
