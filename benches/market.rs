//! Marketplace throughput: payments validated per second by the ledger, and tasks matched
//! per second, each twice: the rules alone (in memory), and the whole path on a real
//! RocksDB store (bundle read, signature check, ADU decode, rules, settlement or assignment
//! bundles signed, one synced commit per batch of 512).
//! Run: `cargo bench --bench market`.

use mycelium::adu::market::{self as m, Eligibility, JobKind, Limits, Offer, Payment, Task};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, Eid, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::market::engine::Engine;
use mycelium::market::{service, MemKv, Txn};
use mycelium::node::Node;
use mycelium::time::DtnTime;
use std::time::Instant;

const ACCOUNTS: usize = 100;

fn ids(n: usize, base: u8) -> Vec<Identity> {
    (0..n)
        .map(|i| {
            let mut seed = [base; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Identity::from_seed(seed)
        })
        .collect()
}

fn bundle(from: &Identity, to: Eid, seq: u64, payload: Vec<u8>, now: DtnTime) -> VerifiedBundle {
    BundleBuilder::new(to, CreationTimestamp { time: now, seq }, 86_400_000)
        .payload(payload)
        .sign(from)
        .expect("sign")
}

/// `n` payments between `people`, each one a signed bundle for the marketplace `to`.
fn payments(people: &[Identity], to: &Eid, n: usize, now: DtnTime) -> Vec<VerifiedBundle> {
    (0..n)
        .map(|i| {
            let a = &people[i % people.len()];
            let b = &people[(i * 7 + 1) % people.len()];
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let p = Payment {
                payer: a.node_id().to_string(),
                payee: b.node_id().to_string(),
                amount: 1 + (i as u64 % 5),
                nonce,
                refers: None,
                memo: String::new(),
            };
            bundle(a, to.clone(), i as u64, m::encode_payment(&p), now)
        })
        .collect()
}

fn task(i: usize, now: DtnTime) -> Task {
    Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: format!("input {i}").into_bytes(),
        limits: Limits {
            max_tokens: 0,
            max_ms: 1000,
        },
        reward: 1,
        deadline: now.0 + 86_400_000,
        redundancy: 3,
        who: Eligibility::Anyone,
    }
}

fn rate(n: usize, s: f64) -> String {
    format!("{:.0}/s", n as f64 / s)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let now = DtnTime::now();
    let market = Identity::from_seed([9; 32]);
    let me = market.node_id().to_string();
    let people = ids(ACCOUNTS, 1);
    let workers = ids(100, 2);

    // ---- payments, rules only (already decoded), then decode + verify + rules
    let n = 20_000;
    let pays = payments(&people, &market.node_id(), n, now);
    let raws: Vec<Vec<u8>> = pays.iter().map(|v| v.raw().to_vec()).collect();
    let granted = || {
        let mut kv = MemKv::default();
        let mut e = Engine::new(Txn::new(&kv), &me, now.0);
        for p in &people {
            e.grant(&p.node_id().to_string(), 1_000_000, "bench")
                .expect("grant");
        }
        let (tx, _) = e.finish().expect("finish");
        let (w, _) = tx.into_parts();
        kv.apply(w);
        kv
    };
    let decoded: Vec<([u8; 32], String, Payment)> = pays
        .iter()
        .map(|v| {
            let pl = v.bundle().payload();
            (
                m::payment_id(pl),
                v.bundle().primary.source.node_id().to_string(),
                m::decode_payment(pl).expect("payment"),
            )
        })
        .collect();
    let kv = granted();
    let mut e = Engine::new(Txn::new(&kv), &me, now.0);
    let t = Instant::now();
    for (id, signer, p) in &decoded {
        e.on_payment(id, signer, p).expect("settle");
    }
    let rules_s = t.elapsed().as_secs_f64();
    let confirmed = e
        .events
        .iter()
        .filter(|x| matches!(x, mycelium::market::Event::PaymentConfirmed { .. }))
        .count();
    assert_eq!(confirmed, n, "every bench payment is valid");
    let kv = granted();
    let mut e = Engine::new(Txn::new(&kv), &me, now.0);
    let t = Instant::now();
    for raw in &raws {
        let vb = VerifiedBundle::decode(raw).expect("verify");
        let pl = vb.bundle().payload();
        let p = m::decode_payment(pl).expect("payment");
        e.on_payment(
            &m::payment_id(pl),
            &vb.bundle().primary.source.node_id().to_string(),
            &p,
        )
        .expect("settle");
    }
    let full_s = t.elapsed().as_secs_f64();
    println!("payments validated by the ledger ({n} payments, {ACCOUNTS} accounts):");
    println!(
        "  rules only (in memory)                         {}",
        rate(n, rules_s)
    );
    println!(
        "  decode + Ed25519 verify + rules (in memory)    {}",
        rate(n, full_s)
    );

    // ---- tasks matched, rules only
    let offer = Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 10_000,
    };
    let tasks = 10_000;
    let mut kv = granted();
    {
        let mut e = Engine::new(Txn::new(&kv), &me, now.0);
        for w in &workers {
            e.on_offer(&w.node_id().to_string(), &offer).expect("offer");
        }
        for i in 0..tasks {
            let a = &people[i % people.len()];
            let vb = bundle(
                a,
                market.node_id(),
                1_000_000 + i as u64,
                m::encode_task(&task(i, now)),
                now,
            );
            e.on_task(
                &vb.id().key(),
                &a.node_id().to_string(),
                vb.raw(),
                &task(i, now),
            )
            .expect("task");
        }
        let (tx, _) = e.finish().expect("finish");
        kv.apply(tx.into_parts().0);
    }
    let mut e = Engine::new(Txn::new(&kv), &me, now.0);
    let t = Instant::now();
    let made = e.match_open().expect("match");
    let match_s = t.elapsed().as_secs_f64();
    assert_eq!(made, tasks * 3);
    println!("tasks matched ({tasks} open tasks × 3 workers each, 100 workers):");
    println!(
        "  rules only (in memory)                         {} tasks, {} assignments",
        rate(tasks, match_s),
        rate(made, match_s)
    );

    // ---- the whole path on RocksDB
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::init(&dir.path().join("m")).expect("init");
    service::with_engine(&node, now, false, |e| {
        for p in &people {
            e.grant(&p.node_id().to_string(), 1_000_000, "bench")?;
        }
        Ok(())
    })
    .expect("grants");
    let n_store = 5_000;
    for vb in payments(&people, &node.node_id(), n_store, now) {
        node.receive(vb.raw(), now).expect("receive");
    }
    let t = Instant::now();
    let r = service::process(&node, now, false, &mut mycelium::worker::judge(&node.home))
        .expect("process");
    let store_pay_s = t.elapsed().as_secs_f64();
    assert_eq!(r.processed, n_store);
    let n_tasks = 2_000;
    let mut seq = 10_000_000;
    for w in &workers {
        seq += 1;
        let vb = bundle(w, node.node_id(), seq, m::encode_offer(&offer), now);
        node.receive(vb.raw(), now).expect("offer");
    }
    for i in 0..n_tasks {
        seq += 1;
        let a = &people[i % people.len()];
        let vb = bundle(a, node.node_id(), seq, m::encode_task(&task(i, now)), now);
        node.receive(vb.raw(), now).expect("task");
    }
    let t = Instant::now();
    let r = service::process(&node, now, false, &mut mycelium::worker::judge(&node.home))
        .expect("process");
    let store_task_s = t.elapsed().as_secs_f64();
    assert_eq!(r.processed, n_tasks + workers.len());
    println!("whole path on RocksDB (read, verify, rules, sign notices, synced commit per 512):");
    println!(
        "  payments validated and settled ({n_store}, 2 settlements signed each)  {}",
        rate(n_store, store_pay_s)
    );
    println!(
        "  tasks accepted and matched ({n_tasks}, 3 assignments + 1 escrow notice signed each)  {}",
        rate(n_tasks, store_task_s)
    );
}
