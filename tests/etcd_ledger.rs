//! The marketplace on a replicated ledger: two front nodes (one marketplace identity, each
//! its own RocksDB home) share one ledger in a real 3-member etcd cluster started here on
//! loopback. Checked against one RocksDB marketplace fed the same input; a double spend
//! split across the front nodes; etcd members killed, quorum lost and restored; a front
//! node killed (SIGKILL) mid-run.

use mycelium::adu::market::{self as m, Eligibility, JobKind, Limits, Task};
use mycelium::bundle::Eid;
use mycelium::identity::Identity;
use mycelium::market::service::{self, Ledger};
use mycelium::market::{ledger::PaymentEntry, Event};
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::worker;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tempfile::TempDir;

mod common;
use common::etcd::Cluster;
use common::market::carry;

struct World {
    cluster: Cluster,
    /// Front nodes on the etcd ledger.
    a: Node,
    b: Node,
    la: Ledger,
    lb: Ledger,
    /// The same marketplace on its own RocksDB ledger: the reference.
    r: Node,
    users: Vec<Node>,
    workers: Vec<Node>,
    now: DtnTime,
    /// Last: removed after the nodes and etcd are gone.
    _dir: TempDir,
}

fn node_like(dir: &Path, name: &str, of: &Node) -> Node {
    let id = Identity::load(&of.home.join(mycelium::node::KEY_FILE)).unwrap();
    let n = Node::init_as(&dir.join(name), id).unwrap();
    n.set_market(&n.node_id()).unwrap();
    n
}

fn world(users: usize, workers: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let a = Node::init(&dir.path().join("front-a")).unwrap();
    a.set_market(&a.node_id()).unwrap();
    let b = node_like(dir.path(), "front-b", &a);
    let r = node_like(dir.path(), "reference", &a);
    let la = Ledger::open(&a, Some(&cluster.addr())).unwrap();
    let lb = Ledger::open(&b, Some(&cluster.addr())).unwrap();
    let mk = a.node_id();
    let mk_node = |name: String| {
        let n = Node::init(&dir.path().join(name)).unwrap();
        n.set_market(&mk).unwrap();
        n
    };
    let users = (0..users).map(|i| mk_node(format!("u{i}"))).collect();
    let workers = (0..workers).map(|i| mk_node(format!("w{i}"))).collect();
    World {
        _dir: dir,
        cluster,
        a,
        b,
        la,
        lb,
        r,
        users,
        workers,
        now: DtnTime::now(),
    }
}

impl World {
    /// Credits for `to` in both ledgers.
    fn grant(&self, to: &Node, amount: u64) {
        let to = to.node_id().to_string();
        service::with_engine_on(&self.a, &self.la, self.now, false, |e| {
            e.grant(&to, amount, "grant")
        })
        .unwrap();
        service::with_engine(&self.r, self.now, false, |e| e.grant(&to, amount, "grant")).unwrap();
    }

    fn etcd(&self) -> &mycelium::market::etcd::EtcdLedger {
        etcd_of(&self.la)
    }
}

fn etcd_of(l: &Ledger) -> &mycelium::market::etcd::EtcdLedger {
    match l {
        Ledger::Etcd(l) => l,
        Ledger::Local => unreachable!(),
    }
}

/// `from` signs `payload` for the marketplace; the raw bundle.
fn signed(from: &Node, market: &Node, payload: Vec<u8>, now: DtnTime) -> Vec<u8> {
    let c = from
        .compose(&[(Some(market.node_id()), payload, 3_600_000)], now, false)
        .unwrap();
    c.bundles[0].raw().to_vec()
}

fn payment(
    from: &Node,
    to: &Node,
    market: &Node,
    amount: u64,
    nonce: u32,
    now: DtnTime,
) -> Vec<u8> {
    payment_at(from, to, &market.node_id(), amount, nonce, now)
}

fn payment_to(from: &Node, to: &Node, market: &Eid, amount: u64, nonce: u32) -> Vec<u8> {
    payment_at(from, to, market, amount, nonce, DtnTime::now())
}

fn payment_at(
    from: &Node,
    to: &Node,
    market: &Eid,
    amount: u64,
    nonce: u32,
    now: DtnTime,
) -> Vec<u8> {
    let mut n = [0u8; 16];
    n[..4].copy_from_slice(&nonce.to_be_bytes());
    let p = m::Payment {
        payer: from.node_id().to_string(),
        payee: to.node_id().to_string(),
        amount,
        nonce: n,
        refers: None,
        memo: String::new(),
    };
    let c = from
        .compose(
            &[(Some(market.clone()), m::encode_payment(&p), 3_600_000)],
            now,
            false,
        )
        .unwrap();
    c.bundles[0].raw().to_vec()
}

fn digest_task(from: &Node, market: &Node, input: &[u8], now: DtnTime) -> Vec<u8> {
    let t = Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: input.to_vec(),
        limits: Limits {
            max_tokens: 0,
            max_ms: 60_000,
        },
        reward: 5,
        deadline: now.0 + 3_600_000,
        redundancy: 3,
        who: Eligibility::Anyone,
    };
    signed(from, market, m::encode_task(&t), now)
}

fn offer(w: &Node, market: &Node, now: DtnTime) -> Vec<u8> {
    let o = m::Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 64,
    };
    signed(w, market, m::encode_offer(&o), now)
}

/// `raws` arrive at `n`, one a millisecond apart (their order of arrival).
fn arrive(n: &Node, raws: &[Vec<u8>], now: DtnTime) {
    for (i, raw) in raws.iter().enumerate() {
        n.receive(raw, DtnTime(now.0 + i as u64)).unwrap();
    }
}

/// Both front nodes run the rules at the same time until neither has anything left.
fn process_both(w: &World) -> Vec<Event> {
    let judge = |n: &Node, l: &Ledger| {
        let mut events = Vec::new();
        loop {
            let r = service::process_on(n, l, w.now, false, &mut |_, _| None).unwrap();
            events.extend(r.events);
            if r.processed == 0 {
                return events;
            }
        }
    };
    let (ea, eb) = std::thread::scope(|s| {
        let ha = s.spawn(|| judge(&w.a, &w.la));
        let hb = s.spawn(|| judge(&w.b, &w.lb));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    ea.into_iter().chain(eb).collect()
}

fn process_ref(w: &World) -> Vec<Event> {
    service::process(&w.r, w.now, false, &mut |_, _| None)
        .unwrap()
        .events
}

/// What must agree: balances and credits issued, every payment's verdict (not its
/// position in the ledger, which depends on the order), every task's outcome, every
/// worker's record.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    accounts: BTreeMap<Vec<u8>, Vec<u8>>,
    payments: BTreeMap<Vec<u8>, PaymentVerdict>,
    tasks: BTreeMap<Vec<u8>, TaskOutcome>,
    workers: BTreeMap<Vec<u8>, String>,
}

/// Payer, payee, amount, accepted, reason.
type PaymentVerdict = (String, String, u64, bool, Option<String>);
/// Closed, accepted output hash, escrow left, workers with a valid answer.
type TaskOutcome = (bool, Option<Vec<u8>>, u64, BTreeSet<String>);
type Scan<'a> = &'a dyn Fn(&[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;

fn outcome(scan: Scan) -> Outcome {
    let mut accounts: BTreeMap<Vec<u8>, Vec<u8>> = scan(b"acct/").into_iter().collect();
    accounts.extend(scan(b"issued"));
    let payments = scan(b"pay/")
        .into_iter()
        .map(|(k, v)| {
            let e: PaymentEntry = ciborium::from_reader(v.as_slice()).unwrap();
            (k, (e.payer, e.payee, e.amount, e.accepted, e.reason))
        })
        .collect();
    let tasks = scan(b"task/")
        .into_iter()
        .map(|(k, v)| {
            let t: mycelium::market::engine::TaskState =
                ciborium::from_reader(v.as_slice()).unwrap();
            let paid: BTreeSet<String> = t
                .answers
                .iter()
                .filter(|a| a.valid)
                .map(|a| a.worker.clone())
                .collect();
            (
                k,
                (
                    t.closed,
                    t.accepted.map(|b| b.to_vec()),
                    t.escrow_left,
                    paid,
                ),
            )
        })
        .collect();
    let workers = scan(b"worker/")
        .into_iter()
        .map(|(k, v)| {
            let s: mycelium::market::engine::WorkerState =
                ciborium::from_reader(v.as_slice()).unwrap();
            (k, format!("{:?}", s.record))
        })
        .collect();
    Outcome {
        accounts,
        payments,
        tasks,
        workers,
    }
}

fn etcd_outcome(w: &World) -> Outcome {
    outcome(&|p| w.etcd().scan_latest(p).unwrap())
}

fn ref_outcome(w: &World) -> Outcome {
    outcome(&|p| w.r.store.ledger_scan(p).unwrap())
}

/// Bundles of `kind` signed by the marketplace in `nodes`' stores: key → (destination,
/// payload).
fn made_by(nodes: &[&Node], kind: &str) -> BTreeMap<[u8; 32], (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for n in nodes {
        for key in n.store.of_kind(kind).unwrap() {
            let vb = n.store.get(&key).unwrap().unwrap();
            let p = &vb.bundle().primary;
            if p.source.node_id() == n.node_id() {
                let to = p.destination.to_string();
                out.insert(key, (to, vb.bundle().payload().to_vec()));
            }
        }
    }
    out
}

/// How many settlement bundles each (payment, recipient) has: must be 1 everywhere.
fn settlements_per_payment(nodes: &[&Node]) -> BTreeMap<(String, String), usize> {
    let mut per = BTreeMap::new();
    for (to, p) in made_by(nodes, m::KIND_SETTLEMENT).into_values() {
        let s = m::decode_settlement(&p).unwrap();
        *per.entry((hex::encode(s.subject), to)).or_default() += 1;
    }
    per
}

#[test]
fn two_front_nodes_in_any_order_reach_the_ledger_one_rocksdb_marketplace_reaches() {
    let w = world(6, 3);
    for u in &w.users {
        w.grant(u, 100);
    }
    // Round 1: offers, tasks, payments (no two of them spend the same credits).
    let mut stream = Vec::new();
    for x in &w.workers {
        stream.push(offer(x, &w.a, w.now));
    }
    for (i, u) in w.users.iter().enumerate().take(4) {
        stream.push(digest_task(u, &w.a, format!("input {i}").as_bytes(), w.now));
    }
    let mut nonce = 0u32;
    for (i, u) in w.users.iter().enumerate() {
        for j in 1..=2 {
            nonce += 1;
            let to = &w.users[(i + j) % w.users.len()];
            stream.push(payment(u, to, &w.a, (i * 3 + j) as u64, nonce, w.now));
        }
    }
    // Front A hears them in one order, B in the reverse, the reference as A.
    arrive(&w.a, &stream, w.now);
    let reversed: Vec<Vec<u8>> = stream.iter().rev().cloned().collect();
    arrive(&w.b, &reversed, w.now);
    arrive(&w.r, &stream, w.now);
    let ev = process_both(&w);
    process_ref(&w);
    let confirmed = ev
        .iter()
        .filter(|e| matches!(e, Event::PaymentConfirmed { .. }))
        .count();
    assert_eq!(
        confirmed, 12,
        "each payment confirmed once, by one front node"
    );

    // Every assignment was made once, by one of them; the workers run what they got.
    let assignments = made_by(&[&w.a, &w.b], m::KIND_ASSIGNMENT);
    assert_eq!(
        assignments.len(),
        4 * 3,
        "one assignment per task and worker"
    );
    let mut results = Vec::new();
    for x in &w.workers {
        carry(&w.a, x, w.now);
        carry(&w.b, x, w.now);
        let r = worker::run_once(x, w.now, false).unwrap();
        assert_eq!(r.ran.len(), 4);
        for key in x.store.of_kind(m::KIND_RESULT).unwrap() {
            results.push(x.store.get_raw(&key).unwrap().unwrap());
        }
    }
    // Round 2: the results, again in two orders, at both front nodes at once.
    let later = DtnTime(w.now.0 + 10_000);
    arrive(&w.a, &results, later);
    let reversed: Vec<Vec<u8>> = results.iter().rev().cloned().collect();
    arrive(&w.b, &reversed, later);
    arrive(&w.r, &results, later);
    let ev = process_both(&w);
    process_ref(&w);
    let accepted = ev
        .iter()
        .filter(|e| matches!(e, Event::Accepted { .. }))
        .count();
    assert_eq!(accepted, 4, "each task accepted once");

    let (got, want) = (etcd_outcome(&w), ref_outcome(&w));
    assert!(got.payments.len() >= 12 + 6);
    assert!(got
        .tasks
        .values()
        .all(|t| t.0 && t.1.is_some() && t.3.len() == 3));
    assert!(got.accounts == want.accounts, "accounts");
    // Payments by verdict: the IDs of what the marketplace pays itself (rewards, refunds)
    // carry its ledger position, which depends on the order.
    let verdicts = |o: &Outcome| {
        let mut v: Vec<PaymentVerdict> = o.payments.values().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(verdicts(&got), verdicts(&want));
    assert!(got.tasks == want.tasks, "tasks");
    assert!(
        got.workers == want.workers,
        "workers {:?} {:?}",
        got.workers.values().collect::<Vec<_>>(),
        want.workers.values().collect::<Vec<_>>()
    );
    // Settlements: one per payment, whichever front node made it.
    let per_payment = settlements_per_payment(&[&w.a, &w.b]);
    assert!(per_payment.values().all(|&n| n == 1), "{per_payment:?}");
    assert!(per_payment.len() >= 2 * 12);
    // Nothing waits in the outbox, and nothing is left for either front node.
    assert!(w.etcd().outbox().unwrap().is_empty());
    assert!(process_both(&w).is_empty());
}

fn confirmed(ev: &[Event]) -> usize {
    ev.iter()
        .filter(|e| matches!(e, Event::PaymentConfirmed { .. }))
        .count()
}

fn balance(w: &World, n: &Node) -> u64 {
    balance_in(&w.la, n)
}

fn balance_in(l: &Ledger, n: &Node) -> u64 {
    let k = [b"acct/".as_slice(), n.node_id().to_string().as_bytes()].concat();
    etcd_of(l)
        .scan_latest(&k)
        .unwrap()
        .into_iter()
        .find(|(key, _)| *key == k)
        .map_or(0, |(_, v)| {
            u64::from_be_bytes(v.as_slice().try_into().unwrap())
        })
}

#[test]
fn a_double_spend_presented_to_both_front_nodes_at_once_is_confirmed_once() {
    let w = world(8, 0);
    let (payers, payees) = w.users.split_at(4);
    let mut nonce = 0;
    for round in 0..3u64 {
        for p in payers {
            w.grant(p, 10);
        }
        let now = DtnTime(w.now.0 + round * 1000);
        for (i, p) in payers.iter().enumerate() {
            nonce += 2;
            let first = payment(p, &payees[i], &w.a, 10, nonce, now);
            let second = payment(p, &payees[(i + 1) % 4], &w.a, 10, nonce + 1, now);
            w.a.receive(&first, now).unwrap();
            w.b.receive(&second, now).unwrap();
        }
        let ev = process_both(&w);
        assert_eq!(confirmed(&ev), 4, "one of each pair: {ev:#?}");
        let refused: Vec<&String> = ev
            .iter()
            .filter_map(|e| match e {
                Event::PaymentRejected { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 4, "{ev:#?}");
        assert!(refused.iter().all(|r| r.contains("insufficient funds")));
        for p in payers {
            assert_eq!(balance(&w, p), 0);
        }
    }
    let paid: u64 = payees.iter().map(|p| balance(&w, p)).sum();
    assert_eq!(paid, 3 * 4 * 10, "every credit moved once");
}

/// `n` payments of 1 credit round a ring of users (each granted enough).
fn ring(w: &World, n: u32, first_nonce: u32, now: DtnTime) -> Vec<Vec<u8>> {
    let k = w.users.len();
    (0..n)
        .map(|i| {
            let from = &w.users[i as usize % k];
            let to = &w.users[(i as usize + 1) % k];
            payment(from, to, &w.a, 1, first_nonce + i, now)
        })
        .collect()
}

/// Process on `n` until nothing is left, riding out errors (etcd electing a leader);
/// returns the events and how many steps failed.
fn settle(n: &Node, l: &Ledger, now: DtnTime) -> (Vec<Event>, usize) {
    let (mut events, mut failed) = (Vec::new(), 0);
    loop {
        match service::process_on(n, l, now, false, &mut |_, _| None) {
            Ok(r) if r.processed == 0 => return (events, failed),
            Ok(r) => events.extend(r.events),
            Err(e) => {
                failed += 1;
                assert!(failed < 20, "{e}");
            }
        }
    }
}

#[test]
fn etcd_losing_a_member_mid_run_or_its_quorum_loses_nothing_and_settles_once() {
    let mut w = world(10, 0);
    for u in &w.users {
        w.grant(u, 1_000);
    }
    let payments = ring(&w, 600, 1, w.now);
    arrive(&w.a, &payments, w.now);
    // The leader dies as soon as the first batch has committed.
    let seq_key = format!("mycelium/market/{}/seq", w.a.node_id()).into_bytes();
    let commits = w.cluster.watch(seq_key);
    let leader = w.cluster.leader();
    let (ev, _failed) = std::thread::scope(|s| {
        let h = s.spawn(|| settle(&w.a, &w.la, w.now));
        commits
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap();
        w.cluster.kill(leader);
        h.join().unwrap()
    });
    // (A step cut short by the dying leader may have committed without saying so: the
    // ledger, not the events, is what counts.)
    assert!(confirmed(&ev) <= 600);
    let pays = w.etcd().scan_latest(b"pay/").unwrap();
    assert_eq!(
        pays.len(),
        10 + 600,
        "grants and payments, each entered once"
    );
    for u in &w.users {
        assert_eq!(
            balance(&w, u),
            1_000,
            "a ring of equal payments leaves balances as they were"
        );
    }

    // Quorum lost (two of three down): front nodes still take bundles, the rules wait.
    let other = (leader + 1) % 3;
    w.cluster.kill(other);
    let later = ring(&w, 200, 10_000, w.now);
    arrive(&w.a, &later[..100], w.now);
    arrive(&w.b, &later[100..], w.now);
    let e = service::process_on(&w.a, &w.la, w.now, false, &mut |_, _| None)
        .expect_err("no quorum: no step");
    assert!(e.to_string().contains("etcd"), "{e}");
    // Stored all the same: the 10 grants A signed, the 600 settled, the 100 new ones.
    assert_eq!(
        w.a.store.of_kind(m::KIND_PAYMENT).unwrap().len(),
        10 + 600 + 100
    );
    // Back: everything settles, once.
    let back: Vec<_> = [leader, other].map(|i| w.cluster.restart(i)).into();
    for (i, rx) in [leader, other].into_iter().zip(back) {
        w.cluster.await_restarted(i, rx);
    }
    let (ea, eb) = std::thread::scope(|s| {
        let ha = s.spawn(|| settle(&w.a, &w.la, w.now));
        let hb = s.spawn(|| settle(&w.b, &w.lb, w.now));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert!(confirmed(&ea.0) + confirmed(&eb.0) <= 200);
    for u in &w.users {
        assert_eq!(balance(&w, u), 1_000);
    }
    assert!(w.etcd().outbox().unwrap().is_empty());
    let pays = w.etcd().scan_latest(b"pay/").unwrap();
    assert_eq!(
        pays.len(),
        10 + 800,
        "grants and payments, each entered once"
    );
}

#[test]
fn a_front_node_killed_mid_run_leaves_the_rest_to_the_other_and_nothing_twice() {
    let w = world(10, 0);
    for u in &w.users {
        w.grant(u, 1_000);
    }
    let payments = ring(&w, 1_500, 1, w.now);
    arrive(&w.a, &payments, w.now);
    arrive(&w.b, &payments, w.now);
    let addr = w.cluster.addr();
    let home_a = w.a.home.clone();
    // Front A runs as its own process (its store closed here), killed three times, each
    // time just after another of its batches committed in etcd.
    drop(w.a);
    let seq_key = format!("mycelium/market/{}/seq", w.b.node_id()).into_bytes();
    for after in [1, 3, 2] {
        let commits = w.cluster.watch(seq_key.clone());
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
            .arg("--home")
            .arg(&home_a)
            .args(["market", "process", "--no-seal", "--ledger", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..after {
            commits
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let done_by_a = etcd_of(&w.la).scan_latest(b"done/").unwrap().len();
    assert!(
        done_by_a > 0 && done_by_a < 1_500,
        "A was killed mid-run ({done_by_a} done)"
    );
    // B finishes: it stores what A committed and did not store, and does the rest.
    let (ev, _) = settle(&w.b, &w.lb, w.now);
    assert_eq!(
        confirmed(&ev),
        1_500 - done_by_a,
        "B applies only what A did not"
    );
    let pays = etcd_of(&w.la).scan_latest(b"pay/").unwrap();
    assert_eq!(pays.len(), 10 + 1_500);
    for u in &w.users {
        assert_eq!(balance_in(&w.la, u), 1_000);
    }
    // A comes back: nothing left for it to apply.
    let a = Node::open(&home_a).unwrap();
    let la = Ledger::open(&a, Some(&addr)).unwrap();
    let (ev, _) = settle(&a, &la, w.now);
    assert_eq!(confirmed(&ev), 0);
    assert!(etcd_of(&w.la).outbox().unwrap().is_empty());
    // Every settlement exists once across both stores (A's own, and those B took from
    // the outbox for it), none twice, none missing.
    let per_payment = settlements_per_payment(&[&a, &w.b]);
    assert!(
        per_payment.values().all(|&n| n == 1),
        "a payment settled twice"
    );
    assert_eq!(
        per_payment.len(),
        2 * 1_500,
        "payer and payee told of each payment"
    );
}

/// Run `mycelium --home HOME ARGS` (through its daemon when one runs); its stdout.
fn cli(home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
        .env_remove("MYCELIUM_HOME")
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn front_node_daemons_keep_taking_bundles_without_a_quorum_and_settle_when_it_returns() {
    use common::daemon::Daemon;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let addr = cluster.addr();
    let (ha, hb, hu) = (
        dir.path().join("front-a"),
        dir.path().join("front-b"),
        dir.path().join("user"),
    );
    cli(&ha, &["init"]);
    cli(&hb, &["init", "--same-identity-as", ha.to_str().unwrap()]);
    let u = Node::init(&hu).unwrap();
    let market = Node::open(&ha).unwrap();
    let mk = market.node_id().to_string();
    assert_eq!(Node::open(&hb).unwrap().node_id().to_string(), mk);
    u.set_market(&market.node_id()).unwrap();
    drop(market);
    let uid = u.node_id().to_string();
    let granted = cli(
        &ha,
        &[
            "market",
            "grant",
            "--to",
            &uid,
            "--amount",
            "100",
            "--no-seal",
            "--ledger",
            &addr,
        ],
    );
    assert!(granted.contains("100"), "{granted}");
    let da = Daemon::start_cmd(&ha, &["market", "serve"], &["--no-seal", "--ledger", &addr]);
    let db = Daemon::start_cmd(&hb, &["market", "serve"], &["--no-seal", "--ledger", &addr]);
    let mut ea = da.events();
    // Front nodes sync with each other (one node ID, two stores).
    cli(&ha, &["sync", &db.addr()]);

    // Two of three members down: no quorum.
    cluster.kill(0);
    cluster.kill(1);
    let payee = Node::init(&dir.path().join("payee")).unwrap();
    let raws: Vec<Vec<u8>> = (0..5u32)
        .map(|i| payment_to(&u, &payee, &u.market().unwrap().unwrap(), 10, 100 + i))
        .collect();
    for raw in &raws {
        u.receive(raw, DtnTime::now()).unwrap();
    }
    drop(u);
    cli(&hu, &["sync", &da.addr()]);
    // Stored at A although the ledger cannot be reached; the rules say why they wait.
    ea.wait("the payments stored", Duration::from_secs(30), |v| {
        v["type"] == "stored" && v["kind"] == "payment"
    });
    let err = ea.wait("the ledger's error", Duration::from_secs(60), |v| {
        v["type"] == "error" && v["role"] == "market"
    });
    assert!(err["message"].as_str().unwrap().contains("etcd"), "{err}");
    // Back: A settles them by itself, within seconds, once each.
    let back = [0, 1].map(|i| cluster.restart(i));
    for (i, rx) in back.into_iter().enumerate() {
        cluster.await_restarted(i, rx);
    }
    let mut confirmed = 0;
    while confirmed < 5 {
        let v = ea.wait("payments confirmed", Duration::from_secs(60), |v| {
            v["type"] == "market" && v["text"].as_str().is_some_and(|t| t.contains("confirmed"))
        });
        assert!(v["text"].as_str().unwrap().starts_with("payment"), "{v}");
        confirmed += 1;
    }
    // B gets them too (a sync between the fronts) and applies nothing again.
    let eb = db.events();
    cli(&hb, &["sync", &da.addr()]);
    let l = mycelium::market::etcd::EtcdLedger::connect(&addr, &mk).unwrap();
    let pays = l.scan_latest(b"pay/").unwrap();
    assert_eq!(pays.len(), 1 + 5, "the grant and five payments, each once");
    while let Some(v) = eb.next(Duration::from_millis(500)) {
        assert!(
            !(v["type"] == "market" && v["text"].as_str().is_some_and(|t| t.contains("confirmed"))),
            "B confirmed again: {v}"
        );
    }
    assert!(da.stop().success());
    assert!(db.stop().success());
}
