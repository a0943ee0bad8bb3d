//! Moving bundles between test nodes, and a worker that answers with an output of the
//! test's choosing (a cheat, or another engine's answer).
#![allow(dead_code)]

use mycelium::adu::market as m;
use mycelium::node::Node;
use mycelium::time::DtnTime;

/// Everything `from` would hand on (not its private insides) arrives at `to`.
pub fn carry(from: &Node, to: &Node, now: DtnTime) {
    let private = from.store.private_keys().unwrap();
    for (key, _) in from.store.records().unwrap() {
        if private.contains(&key) {
            continue;
        }
        let raw = from.store.get_raw(&key).unwrap().unwrap();
        let _ = to.receive(&raw, now);
    }
}

/// `x` answers every assignment it holds with `output`, signed, for `market`.
pub fn answer_with(x: &Node, market: &Node, output: &[u8], now: DtnTime) {
    for key in x.store.of_kind(m::KIND_ASSIGNMENT).unwrap() {
        let vb = x.store.get(&key).unwrap().unwrap();
        if vb.bundle().primary.destination.node_id() != x.node_id() {
            continue;
        }
        let a = m::decode_assignment(vb.bundle().payload()).unwrap();
        let t = mycelium::bundle::VerifiedBundle::decode(&a.task_bundle).unwrap();
        let r = m::TaskResult {
            task: t.id().key(),
            worker: x.node_id().to_string(),
            output: output.to_vec(),
            output_hash: *blake3::hash(output).as_bytes(),
            failed: None,
            used: m::Used::default(),
        };
        let c = x
            .compose(
                &[(Some(market.node_id()), m::encode_result(&r), 3_600_000)],
                now,
                false,
            )
            .unwrap();
        x.store
            .commit_ledger(&[], &c.bundles, &c.private, now)
            .unwrap();
    }
}
