//! The Telegram bridge's cost on a gateway's sealed traffic: every sealed bundle the
//! gateway stores is tried against each linked chat's key (as any recipient tries its
//! own). Routes 200 sealed 1 KiB messages addressed to nobody on the bridge (the common
//! case at a relay: every chat is tried, none opens) with 0, 1, 10 and 100 linked chats,
//! and 200 addressed to one chat (opened, delivered to its store, receipt handed back).
//! Run: `cargo bench --bench telegram` (or `--profile release` to reuse a release build).

use mycelium::adu::{self, Message};
use mycelium::node::Node;
use mycelium::store::Stored;
use mycelium::telegram::chats::Chats;
use mycelium::time::DtnTime;
use std::sync::Arc;
use std::time::Instant;

const N: usize = 200;

/// `n` sealed messages from a fresh sender to `to`, stored at the gateway as a contact
/// would bring them; their commit announcements.
fn arrive(g: &Node, sender: &Node, to: &mycelium::bundle::Eid, n: usize) -> Vec<Stored> {
    let now = DtnTime::now();
    let out: Vec<_> = (0..n)
        .map(|i| {
            let text = format!("{i:04} {}", "x".repeat(1000));
            (
                Some(to.clone()),
                adu::encode_message(&Message::Text(text)),
                86_400_000,
            )
        })
        .collect();
    let c = sender.compose(&out, now, true).unwrap();
    let mut stored = Vec::new();
    for b in c
        .bundles
        .iter()
        .filter(|b| c.travelling.contains(&b.id().key()))
    {
        g.receive(b.raw(), now).unwrap();
        let r = g.store.record(&b.id().key()).unwrap().unwrap();
        stored.push(Stored {
            key: b.id().key(),
            kind: r.kind,
            source: r.source,
            destination: r.destination,
            size: r.size,
        });
    }
    stored
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let g = Arc::new(Node::init(&t.path().join("g")).unwrap());
    let sender = Node::init(&t.path().join("s")).unwrap();
    let elsewhere = Node::init(&t.path().join("r")).unwrap().node_id();
    let chats = Chats::new(g.clone());
    println!(
        "{:<34} {:>8} {:>12} {:>14}",
        "sealed 1 KiB bundles at the gateway", "chats", "µs/bundle", "µs/bundle/chat"
    );
    let passing = arrive(&g, &sender, &elsewhere, N);
    let mut linked = 0i64;
    for want in [0i64, 1, 10, 100] {
        let allow: Vec<i64> = (0..want).collect();
        while linked < want {
            chats.link(linked, None, &allow, DtnTime::now()).unwrap();
            linked += 1;
        }
        // Keys loaded once, as in a running bridge.
        chats.route_from_gateway(&passing[..1]).unwrap();
        let reps = 3;
        let t0 = Instant::now();
        for _ in 0..reps {
            let got = chats.route_from_gateway(&passing).unwrap();
            assert!(got.is_empty());
        }
        let per = t0.elapsed().as_secs_f64() * 1e6 / (reps * N) as f64;
        println!(
            "{:<34} {:>8} {:>12.1} {:>14}",
            "for someone else (relayed)",
            want,
            per,
            if want > 0 {
                format!("{:.1}", per / want as f64)
            } else {
                "-".into()
            }
        );
    }
    // For chat 0: each opened, delivered into the chat's store, the receipt handed back.
    let chat0 = chats.get(0).unwrap().unwrap().node.node_id();
    let mine = arrive(&g, &sender, &chat0, N);
    let t0 = Instant::now();
    let got = chats.route_from_gateway(&mine).unwrap();
    let per = t0.elapsed().as_secs_f64() * 1e6 / N as f64;
    assert_eq!(got.len(), 1);
    assert_eq!(chats.get(0).unwrap().unwrap().unpushed().unwrap().len(), N);
    println!(
        "{:<34} {:>8} {:>12.1} {:>14}",
        "for a chat (opened, delivered)", linked, per, "-"
    );
}
