//! The marketplace's ledger, three ways, on the same input in the same run: one RocksDB
//! marketplace; one front node on a 3-member etcd cluster (started here on loopback, as
//! the tests do); two front nodes on that cluster at once. For each: payments settled per
//! second and tasks matched per second (bundles already stored at the front nodes, the
//! whole `market process` path: read, verify, rules, settlement or assignment bundles
//! signed, the ledger commit), and the time from a payment's arrival to its settlement
//! bundle (median, p99) while payments arrive at a steady rate.
//! Run: `cargo bench --bench ledger` (needs `etcd`: scripts/setup.sh --tests).
//! `LEDGER_N` payments (default 3000), `LEDGER_TASKS` (default 600), `LEDGER_RATE`
//! payments/s offered for the latency run (default 200), for `LEDGER_SECS` (default 5).

#[path = "../tests/common/etcd.rs"]
mod etcd;

use mycelium::adu::market::{self as m, Eligibility, JobKind, Limits, Offer, Payment, Task};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, Eid, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::market::service::{self, Ledger};
use mycelium::market::Event;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn ids(n: usize, base: u8) -> Vec<Identity> {
    (0..n)
        .map(|i| {
            let mut seed = [base; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Identity::from_seed(seed)
        })
        .collect()
}

fn bundle(from: &Identity, to: Eid, seq: u64, payload: Vec<u8>, now: DtnTime) -> Vec<u8> {
    let vb: VerifiedBundle =
        BundleBuilder::new(to, CreationTimestamp { time: now, seq }, 86_400_000)
            .payload(payload)
            .sign(from)
            .expect("sign");
    vb.raw().to_vec()
}

/// Payment `i` (from a ring of people; each pays 1 credit): its ID and raw bundle.
fn payment(people: &[Identity], market: &Eid, i: usize, now: DtnTime) -> ([u8; 32], Vec<u8>) {
    let a = &people[i % people.len()];
    let b = &people[(i + 1) % people.len()];
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let p = Payment {
        payer: a.node_id().to_string(),
        payee: b.node_id().to_string(),
        amount: 1,
        nonce,
        refers: None,
        memo: String::new(),
    };
    let pl = m::encode_payment(&p);
    (
        m::payment_id(&pl),
        bundle(a, market.clone(), i as u64, pl, now),
    )
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

struct Setup {
    name: &'static str,
    fronts: Vec<(Node, Ledger)>,
}

fn setup(
    name: &'static str,
    dir: &std::path::Path,
    addr: Option<&str>,
    fronts: usize,
    people: &[Identity],
    now: DtnTime,
) -> Setup {
    let first = Node::init(&dir.join(format!("{name}-0"))).expect("init");
    let key_file = first.home.join(mycelium::node::KEY_FILE);
    let mut nodes = vec![first];
    for i in 1..fronts {
        let key = Identity::load(&key_file).expect("key");
        nodes.push(Node::init_as(&dir.join(format!("{name}-{i}")), key).expect("init"));
    }
    let fronts: Vec<(Node, Ledger)> = nodes
        .into_iter()
        .map(|n| {
            n.set_market(&n.node_id()).expect("market");
            let l = Ledger::open(&n, addr).expect("ledger");
            (n, l)
        })
        .collect();
    let (n, l) = &fronts[0];
    service::with_engine_on(n, l, now, false, |e| {
        for p in people {
            e.grant(&p.node_id().to_string(), 1_000_000, "bench")?;
        }
        Ok(())
    })
    .expect("grants");
    Setup { name, fronts }
}

/// Every front node runs the rules until none has anything left; returns the events.
fn run_all(s: &Setup, now: DtnTime) -> Vec<Event> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = s
            .fronts
            .iter()
            .map(|(n, l)| {
                sc.spawn(move || {
                    let mut ev = Vec::new();
                    loop {
                        let r = service::process_on(n, l, now, false, &mut |_, _| None)
                            .expect("process");
                        ev.extend(r.events);
                        if r.processed == 0 {
                            return ev;
                        }
                    }
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("front"))
            .collect()
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env("LEDGER_N", 3000) as usize;
    let tasks = env("LEDGER_TASKS", 600) as usize;
    let rate = env("LEDGER_RATE", 200);
    let secs = env("LEDGER_SECS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = etcd::Cluster::start(dir.path(), 3);
    let addr = cluster.addr();
    let now = DtnTime::now();
    let people = ids(100, 1);
    let workers = ids(30, 2);
    println!(
        "ledger: {n} payments, {tasks} tasks x 3 workers (30 offering), latency at {rate} \
         payments/s for {secs} s; etcd: 3 members on loopback ({addr})"
    );
    println!("| ledger | payments settled/s | tasks matched/s (assignments/3) | arrival→settlement median | p99 |");
    println!("|---|---|---|---|---|");
    let configs: [(&'static str, Option<&str>, usize); 3] = [
        ("RocksDB, one node", None, 1),
        ("etcd, one front node", Some(&addr), 1),
        ("etcd, two front nodes", Some(&addr), 2),
    ];
    for (name, addr, fronts) in configs {
        let s = setup(name, dir.path(), addr, fronts, &people, now);
        let market = s.fronts[0].0.node_id();
        let k = s.fronts.len();
        // Payments: stored at the front nodes (split between them), then settled.
        for i in 0..n {
            let (_, raw) = payment(&people, &market, i, now);
            s.fronts[i % k].0.receive(&raw, now).expect("receive");
        }
        let t = Instant::now();
        let ev = run_all(&s, now);
        let pay_s = t.elapsed().as_secs_f64();
        let ok = ev
            .iter()
            .filter(|e| matches!(e, Event::PaymentConfirmed { .. }))
            .count();
        assert_eq!(ok, n, "{name}: every payment once");
        // Tasks: offers first, then tasks; matched into assignments.
        let offer = Offer {
            kinds: vec![JobKind::Digest],
            models: vec![],
            capacity: 10_000,
        };
        for (i, w) in workers.iter().enumerate() {
            let raw = bundle(w, market.clone(), i as u64, m::encode_offer(&offer), now);
            for (f, _) in &s.fronts {
                f.receive(&raw, now).expect("offer");
            }
        }
        run_all(&s, now);
        for i in 0..tasks {
            let a = &people[i % people.len()];
            let raw = bundle(
                a,
                market.clone(),
                1_000_000 + i as u64,
                m::encode_task(&task(i, now)),
                now,
            );
            s.fronts[i % k].0.receive(&raw, now).expect("task");
        }
        let t = Instant::now();
        let ev = run_all(&s, now);
        let task_s = t.elapsed().as_secs_f64();
        let assigned = ev
            .iter()
            .filter(|e| matches!(e, Event::Assigned { .. }))
            .count();
        assert_eq!(assigned, 3 * tasks, "{name}: every task to three workers");
        // Latency: payments arrive at `rate`/s (alternating between front nodes); each
        // front node runs the rules whenever something new is stored, as the daemon does.
        let arrived: Arc<Mutex<HashMap<[u8; 32], Instant>>> = Default::default();
        let took: Arc<Mutex<Vec<f64>>> = Default::default();
        let done = AtomicBool::new(false);
        let total = (rate * secs) as usize;
        std::thread::scope(|sc| {
            for (f, l) in &s.fronts {
                let (arrived, took, done) = (arrived.clone(), took.clone(), &done);
                sc.spawn(move || {
                    loop {
                        // Read before the pass: a pass that began after the last arrival
                        // and found nothing means all is settled.
                        let finishing = done.load(Ordering::SeqCst);
                        let r = service::process_on(f, l, DtnTime::now(), false, &mut |_, _| None)
                            .expect("process");
                        let at = Instant::now();
                        for e in &r.events {
                            if let Event::PaymentConfirmed { payment, .. } = e {
                                if let Some(t0) = arrived.lock().unwrap().get(payment) {
                                    took.lock().unwrap().push((at - *t0).as_secs_f64() * 1e3);
                                }
                            }
                        }
                        if finishing && r.processed == 0 {
                            return;
                        }
                        if r.processed == 0 {
                            // Nothing new: look again in a millisecond (the daemon wakes
                            // on the store's announcement instead).
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
            }
            let t0 = Instant::now();
            for i in 0..total {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let (id, raw) = payment(&people, &market, n + i, DtnTime::now());
                arrived.lock().unwrap().insert(id, Instant::now());
                s.fronts[i % k]
                    .0
                    .receive(&raw, DtnTime::now())
                    .expect("receive");
            }
            done.store(true, Ordering::SeqCst);
        });
        let mut took = took.lock().unwrap().clone();
        assert_eq!(took.len(), total, "{name}: every payment settled");
        println!(
            "| {} | {:.0} | {:.0} | {:.1} ms | {:.1} ms |",
            s.name,
            n as f64 / pay_s,
            assigned as f64 / 3.0 / task_s,
            pct(&mut took, 0.5),
            pct(&mut took, 0.99)
        );
    }
}
