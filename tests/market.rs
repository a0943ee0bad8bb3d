//! The marketplace end to end on real nodes (RocksDB in temp dirs): tasks, quorum,
//! payments, wallets, reputation, guilds, and each fraud the ledger must stop.
//! Bundles move between nodes as they would on a stick: raw bytes through `receive`.

use mycelium::adu::market::{self as m, Eligibility, JobKind, Limits, Task, MAX_AMOUNT};
use mycelium::bundle::Eid;
use mycelium::market::{service, Event};
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::wallet::{self, Status, WalletError};
use mycelium::worker;
use tempfile::TempDir;

mod common;
use common::market::{answer_with, carry};

struct World {
    _dir: TempDir,
    m: Node,
    a: Node,
    w: Vec<Node>,
    now: DtnTime,
}

fn world(workers: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let m = Node::init(&dir.path().join("m")).unwrap();
    let a = Node::init(&dir.path().join("a")).unwrap();
    let w: Vec<Node> = (0..workers)
        .map(|i| Node::init(&dir.path().join(format!("w{i}"))).unwrap())
        .collect();
    m.set_market(&m.node_id()).unwrap();
    a.set_market(&m.node_id()).unwrap();
    for x in &w {
        x.set_market(&m.node_id()).unwrap();
    }
    World {
        _dir: dir,
        m,
        a,
        w,
        now: DtnTime::now(),
    }
}

fn process(w: &World, now: DtnTime) -> Vec<Event> {
    service::process(&w.m, now, false, &mut mycelium::worker::judge(&w.m.home))
        .unwrap()
        .events
}

fn grant(w: &World, to: &Node, amount: u64) {
    let to = to.node_id().to_string();
    service::with_engine(&w.m, w.now, false, |e| e.grant(&to, amount, "grant")).unwrap();
}

fn digest_task(input: &[u8], reward: u64, redundancy: u8, deadline: u64) -> Task {
    Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: input.to_vec(),
        limits: Limits {
            max_tokens: 0,
            max_ms: 60_000,
        },
        reward,
        deadline,
        redundancy,
        who: Eligibility::Anyone,
    }
}

fn offer_all(w: &World) {
    let offer = m::Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 4,
    };
    for x in &w.w {
        worker::offer(x, &offer, w.now, false).unwrap();
        carry(x, &w.m, w.now);
    }
}

fn wallet_of(n: &Node) -> wallet::Wallet {
    wallet::view(n).unwrap()
}

fn rep(w: &World, n: &Node) -> m::Reputation {
    service::workers(&w.m)
        .unwrap()
        .into_iter()
        .find(|(id, _)| *id == n.node_id().to_string())
        .map(|(_, s)| s.record)
        .unwrap_or_default()
}

/// One round: the task travels to the market, out to workers, honest ones run it,
/// cheats answer `bad`, results go back; returns the market's events.
fn round(w: &World, cheats: &[usize], bad: &[u8]) -> Vec<Event> {
    carry(&w.a, &w.m, w.now);
    let mut ev = process(w, w.now);
    for (i, x) in w.w.iter().enumerate() {
        carry(&w.m, x, w.now);
        if cheats.contains(&i) {
            answer_with(x, &w.m, bad, w.now);
        } else {
            worker::run_once(x, w.now, false).unwrap();
        }
        carry(x, &w.m, w.now);
    }
    ev.extend(process(w, w.now));
    ev
}

#[test]
fn quorum_pays_agreeing_workers_outvotes_a_wrong_output_and_drops_a_repeat_answer_with() {
    let w = world(3);
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    assert_eq!(wallet_of(&w.a).balance, 100);
    offer_all(&w);

    let input = b"the quick brown fox";
    let task = digest_task(input, 10, 3, w.now.0 + 3_600_000);
    let tid = wallet::submit_task(&w.a, &task, w.now, false).unwrap();
    // Pending escrow is not spendable.
    assert_eq!(wallet_of(&w.a).spendable, 70);
    let ev = round(&w, &[2], b"not the digest");
    assert!(ev.contains(&Event::TaskAccepted {
        task: tid,
        escrow: 30
    }));
    let cheat_id = w.w[2].node_id().to_string();
    assert!(ev.contains(&Event::Disagreed {
        task: tid,
        worker: cheat_id.clone()
    }));
    let accepted = ev
        .iter()
        .find_map(|e| match e {
            Event::Accepted {
                task,
                output_hash,
                agreeing,
            } if *task == tid => Some((*output_hash, agreeing.clone())),
            _ => None,
        })
        .expect("the quorum accepted an output");
    let right = blake3::hash(input).as_bytes().to_vec();
    assert_eq!(accepted.0, *blake3::hash(&right).as_bytes());
    assert_eq!(accepted.1.len(), 2);
    assert!(!accepted.1.contains(&cheat_id));
    assert!(ev.contains(&Event::Refunded {
        task: tid,
        amount: 10
    }));

    // Payments reach the wallets.
    for x in &w.w {
        carry(&w.m, x, w.now);
    }
    carry(&w.m, &w.a, w.now);
    assert_eq!(wallet_of(&w.w[0]).balance, 10);
    assert_eq!(wallet_of(&w.w[1]).balance, 10);
    assert_eq!(
        wallet_of(&w.w[2]).balance,
        0,
        "the wrong output is not paid"
    );
    let a = wallet_of(&w.a);
    assert_eq!(a.balance, 100 - 30 + 10);
    assert_eq!(a.pending_out, 0);
    // A holds the verdict with the accepted output.
    let verdict =
        w.a.store
            .of_kind(m::KIND_VERDICT)
            .unwrap()
            .into_iter()
            .map(|k| w.a.store.get(&k).unwrap().unwrap())
            .map(|vb| m::decode_verdict(vb.bundle().payload()).unwrap())
            .find(|v| v.task == tid)
            .unwrap();
    assert!(verdict.accepted);
    assert_eq!(verdict.output, right);

    let r = rep(&w, &w.w[2]);
    assert_eq!((r.accepted, r.disagreed, r.eligible), (0, 1, true));
    assert_eq!(rep(&w, &w.w[0]).accepted, 1);

    // Cheating again drops the worker below the threshold: no more tasks for it.
    wallet::submit_task(
        &w.a,
        &digest_task(b"two", 5, 3, w.now.0 + 3_600_000),
        w.now,
        false,
    )
    .unwrap();
    round(&w, &[2], b"wrong again");
    let r = rep(&w, &w.w[2]);
    assert_eq!((r.disagreed, r.eligible), (2, false));
    let t3 = wallet::submit_task(
        &w.a,
        &digest_task(b"three", 5, 3, w.now.0 + 3_600_000),
        w.now,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    let assigned: Vec<&String> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Assigned { task, worker } if *task == t3 => Some(worker),
            _ => None,
        })
        .collect();
    assert_eq!(assigned.len(), 2);
    assert!(!assigned.contains(&&cheat_id));
    // The published record says so too: A (any node) can read it.
    carry(&w.m, &w.a, w.now);
    let published: Vec<m::Reputation> = w
        .a
        .store
        .of_kind(m::KIND_REPUTATION)
        .unwrap()
        .into_iter()
        .map(|k| {
            m::decode_reputation(w.a.store.get(&k).unwrap().unwrap().bundle().payload()).unwrap()
        })
        .filter(|r| r.worker == cheat_id && !r.eligible)
        .collect();
    assert!(!published.is_empty());
}

#[test]
fn a_colluding_minority_is_outvoted_and_unpaid() {
    let w = world(5);
    grant(&w, &w.a, 50);
    carry(&w.m, &w.a, w.now);
    offer_all(&w);
    let tid = wallet::submit_task(
        &w.a,
        &digest_task(b"x", 10, 5, w.now.0 + 3_600_000),
        w.now,
        false,
    )
    .unwrap();
    let ev = round(&w, &[1, 3], b"the colluders' answer");
    let agreeing = ev
        .iter()
        .find_map(|e| match e {
            Event::Accepted { task, agreeing, .. } if *task == tid => Some(agreeing.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(agreeing.len(), 3);
    for i in [1, 3] {
        let id = w.w[i].node_id().to_string();
        assert!(!agreeing.contains(&id));
        assert!(ev.contains(&Event::Disagreed {
            task: tid,
            worker: id
        }));
        carry(&w.m, &w.w[i], w.now);
        assert_eq!(wallet_of(&w.w[i]).balance, 0);
    }
    carry(&w.m, &w.w[0], w.now);
    assert_eq!(wallet_of(&w.w[0]).balance, 10);
}

#[test]
fn a_majority_that_cannot_form_fails_the_task_and_refunds_it() {
    let w = world(3);
    grant(&w, &w.a, 30);
    carry(&w.m, &w.a, w.now);
    offer_all(&w);
    // Two different wrong answers and one right one: no output reaches 2 of 3.
    wallet::submit_task(
        &w.a,
        &digest_task(b"y", 10, 3, w.now.0 + 3_600_000),
        w.now,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    for (i, x) in w.w.iter().enumerate() {
        carry(&w.m, x, w.now);
        match i {
            0 => worker::run_once(x, w.now, false).map(|_| ()).unwrap(),
            1 => answer_with(x, &w.m, b"one", w.now),
            _ => answer_with(x, &w.m, b"two", w.now),
        }
        carry(x, &w.m, w.now);
    }
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::TaskFailed { .. })));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Refunded { amount: 30, .. })));
    carry(&w.m, &w.a, w.now);
    assert_eq!(
        wallet_of(&w.a).balance,
        30,
        "{:#?}",
        wallet_of(&w.a).entries
    );
}

fn pay_raw(
    from: &Node,
    to: &Node,
    market: &Node,
    payer: &str,
    amount: u64,
    nonce: [u8; 16],
) -> [u8; 32] {
    let p = m::Payment {
        payer: payer.to_string(),
        payee: to.node_id().to_string(),
        amount,
        nonce,
        refers: None,
        memo: String::new(),
    };
    let payload = m::encode_payment(&p);
    let c = from
        .compose(
            &[
                (Some(to.node_id()), payload.clone(), 3_600_000),
                (Some(market.node_id()), payload.clone(), 3_600_000),
            ],
            DtnTime::now(),
            false,
        )
        .unwrap();
    from.store
        .commit_ledger(&[], &c.bundles, &c.private, DtnTime::now())
        .unwrap();
    m::payment_id(&payload)
}

#[test]
fn a_double_spend_loses_and_both_sides_learn_why() {
    let w = world(2);
    let (b, c) = (&w.w[0], &w.w[1]);
    grant(&w, &w.a, 10);
    carry(&w.m, &w.a, w.now);
    // The wallet itself refuses to overspend.
    assert!(matches!(
        wallet::send(&w.a, &b.node_id(), 11, "", w.now, false),
        Err(WalletError::Insufficient { .. })
    ));
    let first = wallet::send(&w.a, &b.node_id(), 10, "rice", w.now, false).unwrap();
    assert!(matches!(
        wallet::send(&w.a, &c.node_id(), 10, "", w.now, false),
        Err(WalletError::Insufficient {
            pending_out: 10,
            ..
        })
    ));
    // A tampered wallet signs a second payment of the same credits anyway.
    let a_id = w.a.node_id().to_string();
    let second = pay_raw(&w.a, c, &w.m, &a_id, 10, [7; 16]);
    carry(&w.a, b, w.now);
    carry(&w.a, c, w.now);
    assert_eq!(wallet_of(b).pending_in, 10, "pending until settled");
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::PaymentConfirmed { payment, .. } if *payment == first)));
    let why = ev
        .iter()
        .find_map(|e| match e {
            Event::PaymentRejected { payment, reason } if *payment == second => {
                Some(reason.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(why.contains("insufficient funds"), "{why}");
    carry(&w.m, b, w.now);
    carry(&w.m, c, w.now);
    carry(&w.m, &w.a, w.now);
    assert_eq!(wallet_of(b).balance, 10);
    let cw = wallet_of(c);
    assert_eq!(cw.balance, 0);
    assert!(cw
        .entries
        .iter()
        .any(|e| matches!(&e.status, Status::Rejected(r) if r.contains("double spend"))));
    let aw = wallet_of(&w.a);
    assert_eq!((aw.balance, aw.pending_out), (0, 0));
}

#[test]
fn a_replayed_payment_changes_nothing_and_a_reused_nonce_is_refused() {
    let w = world(1);
    let b = &w.w[0];
    grant(&w, &w.a, 100);
    let a_id = w.a.node_id().to_string();
    let id = pay_raw(&w.a, b, &w.m, &a_id, 10, [1; 16]);
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::PaymentConfirmed { payment, .. } if *payment == id)));
    // The same payment again, in a new bundle: already settled, nothing moves.
    let again = pay_raw(&w.a, b, &w.m, &a_id, 10, [1; 16]);
    assert_eq!(again, id);
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.contains(&Event::PaymentReplayed { payment: id }));
    // The same nonce on a different payment: a replay, refused.
    let other = pay_raw(&w.a, b, &w.m, &a_id, 20, [1; 16]);
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::PaymentRejected { payment, reason } if *payment == other && reason.contains("replay"))));
    let bal = service::with_engine(&w.m, w.now, false, |e| {
        mycelium::market::ledger::balance(&e.tx, &a_id)
    })
    .unwrap()
    .0;
    assert_eq!(bal, 90);
}

#[test]
fn a_payment_signed_by_anyone_but_the_payer_is_refused() {
    let w = world(1);
    let mallory = &w.w[0];
    grant(&w, &w.a, 100);
    let a_id = w.a.node_id().to_string();
    // Mallory signs "A pays Mallory 50".
    pay_raw(mallory, mallory, &w.m, &a_id, 50, [2; 16]);
    carry(mallory, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::PaymentRejected { reason, .. } if reason.contains("not the payer"))), "{ev:?}");
    // Mallory copies a real payment of A's and signs the same bytes, to get there first
    // and have the real one count as already settled: the real one still settles.
    let real = m::Payment {
        payer: a_id.clone(),
        payee: mallory.node_id().to_string(),
        amount: 7,
        nonce: [8; 16],
        refers: None,
        memo: String::new(),
    };
    let payload = m::encode_payment(&real);
    let copy = mallory
        .compose(
            &[(Some(w.m.node_id()), payload.clone(), 3_600_000)],
            w.now,
            false,
        )
        .unwrap();
    mallory
        .store
        .commit_ledger(&[], &copy.bundles, &copy.private, w.now)
        .unwrap();
    carry(mallory, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::PaymentRejected { payment, .. } if *payment == m::payment_id(&payload))));
    let genuine =
        w.a.compose(
            &[(Some(w.m.node_id()), payload.clone(), 3_600_000)],
            w.now,
            false,
        )
        .unwrap();
    w.a.store
        .commit_ledger(&[], &genuine.bundles, &genuine.private, w.now)
        .unwrap();
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::PaymentConfirmed { payment, .. } if *payment == m::payment_id(&payload))), "{ev:?}");
    // Mallory's own wallet does not count it either.
    assert_eq!(
        wallet_of(mallory).pending_in + wallet_of(mallory).balance as u64,
        0
    );
    let bal = service::with_engine(&w.m, w.now, false, |e| {
        mycelium::market::ledger::balance(&e.tx, &a_id)
    })
    .unwrap()
    .0;
    assert_eq!(bal, 93);
}

#[test]
fn negative_and_overflowing_amounts_are_refused_and_change_nothing() {
    let w = world(1);
    let b = &w.w[0];
    let a_id = w.a.node_id().to_string();
    let b_id = b.node_id().to_string();
    grant(&w, &w.a, 100);
    // A negative amount does not even decode as a payment.
    #[derive(serde::Serialize)]
    struct Neg {
        payer: String,
        payee: String,
        amount: i64,
        #[serde(with = "serde_bytes")]
        nonce: [u8; 16],
        refers: Option<serde_bytes::ByteBuf>,
        memo: String,
    }
    let neg = mycelium::adu::encode_kind(
        m::KIND_PAYMENT,
        &Neg {
            payer: a_id.clone(),
            payee: b_id.clone(),
            amount: -50,
            nonce: [3; 16],
            refers: None,
            memo: String::new(),
        },
    );
    let c =
        w.a.compose(&[(Some(w.m.node_id()), neg, 3_600_000)], w.now, false)
            .unwrap();
    w.a.store
        .commit_ledger(&[], &c.bundles, &c.private, w.now)
        .unwrap();
    pay_raw(&w.a, b, &w.m, &a_id, MAX_AMOUNT + 1, [4; 16]);
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Refused { what, .. } if what.starts_with("payment"))),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::PaymentRejected { reason, .. } if reason.contains("outside"))
        ),
        "{ev:?}"
    );
    // A payee near the ceiling cannot be pushed over it.
    grant(&w, b, MAX_AMOUNT - 5);
    pay_raw(&w.a, b, &w.m, &a_id, 10, [5; 16]);
    carry(&w.a, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::PaymentRejected { reason, .. } if reason.contains("overflow"))
        ),
        "{ev:?}"
    );
    let err = service::with_engine(&w.m, w.now, false, |e| e.grant(&b_id, 10, "more")).unwrap_err();
    assert!(err.to_string().contains("cannot take"), "{err}");
    let (a_bal, b_bal) = service::with_engine(&w.m, w.now, false, |e| {
        Ok((
            mycelium::market::ledger::balance(&e.tx, &a_id)?,
            mycelium::market::ledger::balance(&e.tx, &b_id)?,
        ))
    })
    .unwrap()
    .0;
    assert_eq!((a_bal, b_bal), (100, MAX_AMOUNT - 5));
    // A task whose escrow overflows is refused by the submitter's wallet already.
    let mut t = digest_task(b"z", MAX_AMOUNT / 2, 3, w.now.0 + 1000);
    assert!(matches!(
        wallet::submit_task(&w.a, &t, w.now, false),
        Err(WalletError::BadTask(_))
    ));
    t.reward = 0;
    assert!(wallet::submit_task(&w.a, &t, w.now, false).is_err());
}

#[test]
fn results_for_unknown_tasks_or_from_unassigned_workers_are_refused() {
    let w = world(2);
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    // Only worker 0 offers, so only it is assigned.
    let offer = m::Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 1,
    };
    worker::offer(&w.w[0], &offer, w.now, false).unwrap();
    carry(&w.w[0], &w.m, w.now);
    let tid = wallet::submit_task(
        &w.a,
        &digest_task(b"q", 10, 1, w.now.0 + 3_600_000),
        w.now,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    // Worker 1 answers a task it was not given, and one that does not exist.
    let intruder = &w.w[1];
    let out = blake3::hash(b"q").as_bytes().to_vec();
    let mk = |task: [u8; 32]| m::TaskResult {
        task,
        worker: intruder.node_id().to_string(),
        output_hash: *blake3::hash(&out).as_bytes(),
        output: out.clone(),
        failed: None,
        used: m::Used::default(),
    };
    let c = intruder
        .compose(
            &[
                (Some(w.m.node_id()), m::encode_result(&mk(tid)), 3_600_000),
                (
                    Some(w.m.node_id()),
                    m::encode_result(&mk([9; 32])),
                    3_600_000,
                ),
            ],
            w.now,
            false,
        )
        .unwrap();
    intruder
        .store
        .commit_ledger(&[], &c.bundles, &c.private, w.now)
        .unwrap();
    carry(intruder, &w.m, w.now);
    let ev = process(&w, w.now);
    let reasons: Vec<&String> = ev
        .iter()
        .filter_map(|e| match e {
            Event::ResultRejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("not assigned")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not exist")),
        "{reasons:?}"
    );
    assert!(!ev.iter().any(|e| matches!(e, Event::Paid { .. })));
}

#[test]
fn a_task_past_its_deadline_is_refused_and_a_late_answer_is_not_paid() {
    let w = world(2);
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    offer_all(&w);
    // Reaches the marketplace after its deadline: refused, nothing held.
    let stale = wallet::submit_task(
        &w.a,
        &digest_task(b"old", 10, 1, w.now.0 + 1000),
        w.now,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, w.now);
    let later = DtnTime(w.now.0 + 5000);
    let ev = process(&w, later);
    assert!(ev.iter().any(|e| matches!(e, Event::TaskRejected { task, reason } if *task == stale && reason.contains("deadline"))));
    carry(&w.m, &w.a, later);
    let aw = wallet_of(&w.a);
    assert_eq!(aw.balance, 100, "{:#?}", aw.entries);
    assert!(aw.entries.iter().any(
        |e| e.id == stale && matches!(&e.status, Status::Rejected(r) if r.contains("deadline"))
    ));

    // Accepted, but the only answer comes after the deadline: late, unpaid, refunded.
    let t = wallet::submit_task(
        &w.a,
        &digest_task(b"slow", 10, 2, later.0 + 60_000),
        later,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, later);
    process(&w, later);
    carry(&w.m, &w.w[0], later);
    worker::run_once(&w.w[0], later, false).unwrap();
    let after = DtnTime(later.0 + 120_000);
    carry(&w.w[0], &w.m, after);
    let ev = process(&w, after);
    assert!(
        ev.contains(&Event::Late {
            task: t,
            worker: w.w[0].node_id().to_string()
        }),
        "{ev:?}"
    );
    assert!(
        ev.contains(&Event::Late {
            task: t,
            worker: w.w[1].node_id().to_string()
        }),
        "{ev:?}"
    );
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Refunded { task, amount: 20 } if *task == t)));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::Paid { payee, .. } if *payee == w.w[0].node_id().to_string())));
    assert_eq!(rep(&w, &w.w[0]).late, 1);
}

/// `from` signs `payload` for the marketplace and keeps it to travel.
fn sign_for_market(w: &World, from: &Node, payload: Vec<u8>) {
    let c = from
        .compose(&[(Some(w.m.node_id()), payload, 3_600_000)], w.now, false)
        .unwrap();
    from.store
        .commit_ledger(&[], &c.bundles, &c.private, w.now)
        .unwrap();
}

fn assigned_to(ev: &[Event], tid: [u8; 32]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Assigned { task, worker } if *task == tid => Some(worker.clone()),
            _ => None,
        })
        .collect()
}

fn member(n: &Node, share: u32) -> m::Member {
    m::Member {
        node: n.node_id().to_string(),
        share,
    }
}

#[test]
fn a_guild_task_is_only_for_members_who_joined_and_its_pay_is_split_among_them() {
    let w = world(3);
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    offer_all(&w);
    let (f, mate, outsider) = (&w.w[0], &w.w[1], &w.w[2]);
    let gid = mycelium::guild::create(
        f,
        "north",
        vec![member(f, 3), member(mate, 1)],
        w.now,
        false,
    )
    .unwrap();
    carry(f, &w.m, w.now);
    assert!(process(&w, w.now).contains(&Event::GuildRecorded { guild: gid.clone() }));
    // The founder cannot rewrite the agreed shares afterwards.
    let grab = m::Guild {
        name: "north".into(),
        members: vec![member(f, 1)],
    };
    sign_for_market(&w, f, m::encode_guild(&grab));
    carry(f, &w.m, w.now);
    assert!(process(&w, w.now).iter().any(
        |e| matches!(e, Event::Refused { reason, .. } if reason.contains("already recorded"))
    ));
    // Before the mate joins, the founder alone is the guild: it takes the task and is
    // paid all of it.
    let mut t = digest_task(b"guild work", 8, 1, w.now.0 + 3_600_000);
    t.who = Eligibility::Guild(gid.clone());
    let tid = wallet::submit_task(&w.a, &t, w.now, false).unwrap();
    let ev = round(&w, &[], b"");
    assert_eq!(assigned_to(&ev, tid), vec![f.node_id().to_string()]);
    for x in &w.w {
        carry(&w.m, x, w.now);
    }
    assert_eq!(wallet_of(f).balance, 8);
    assert_eq!(wallet_of(mate).balance, 0);
    // The mate got its copy of the charter and sees the shares it is asked to accept.
    carry(f, mate, w.now);
    let seen = mycelium::guild::charters(mate).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].guild.members[0].share, 3);
    assert!(!seen[0].joined);
    mycelium::guild::join(mate, &gid, None, w.now, false).unwrap();
    carry(mate, &w.m, w.now);
    assert!(process(&w, w.now).contains(&Event::MembershipRecorded {
        guild: gid.clone(),
        member: mate.node_id().to_string()
    }));
    // Now a task goes to a member, and the pay is split by the agreed shares.
    let mut t = digest_task(b"more guild work", 8, 2, w.now.0 + 3_600_000);
    t.who = Eligibility::Guild(gid);
    let tid = wallet::submit_task(&w.a, &t, w.now, false).unwrap();
    let ev = round(&w, &[], b"");
    let mut got = assigned_to(&ev, tid);
    got.sort();
    let mut want = vec![f.node_id().to_string(), mate.node_id().to_string()];
    want.sort();
    assert_eq!(got, want);
    for x in &w.w {
        carry(&w.m, x, w.now);
    }
    // Two accepted results of 8, each split 6 / 2.
    assert_eq!(wallet_of(f).balance, 8 + 12);
    assert_eq!(wallet_of(mate).balance, 4);
    assert_eq!(wallet_of(outsider).balance, 0);
}

/// The probe's attack: a submitter founds a guild naming a worker at share 1 and itself at
/// 1,000,000 and submits a guild task, so the worker's reward comes back to it.
#[test]
fn a_guild_nobody_joined_cannot_divert_a_workers_pay() {
    let w = world(1);
    let victim = &w.w[0];
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    offer_all(&w);
    let gid = mycelium::guild::create(
        &w.a,
        "skim",
        vec![member(victim, 1), member(&w.a, 1_000_000)],
        w.now,
        false,
    )
    .unwrap();
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    let mut t = digest_task(b"work for a cut", 10, 1, w.now.0 + 3_600_000);
    t.who = Eligibility::Guild(gid.clone());
    let tid = wallet::submit_task(&w.a, &t, w.now, false).unwrap();
    let ev = round(&w, &[], b"");
    assert!(
        assigned_to(&ev, tid).is_empty(),
        "assigned to a worker that never joined: {ev:?}"
    );
    // A membership of someone else's making, or for another charter, counts for nothing.
    let forged = m::Membership {
        guild: gid.clone(),
        charter: [7; 32],
    };
    sign_for_market(&w, victim, m::encode_membership(&forged));
    carry(victim, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Refused { reason, .. } if reason.contains("another charter"))
        ),
        "{ev:?}"
    );
    sign_for_market(
        &w,
        &w.a,
        m::encode_membership(&m::Membership {
            guild: gid,
            charter: [0; 32],
        }),
    );
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    let ev = round(&w, &[], b"");
    assert!(assigned_to(&ev, tid).is_empty(), "{ev:?}");
    assert_eq!(wallet_of(victim).balance, 0);
    assert_eq!(rep(&w, victim).accepted, 0);
}

/// A worker sees whom the pay goes to before it runs a guild task, and declines one for a
/// guild it did not join, or whose stated split gives it nothing, with a signed failure.
#[test]
fn a_worker_declines_a_guild_task_whose_pay_it_did_not_agree_to() {
    let w = world(1);
    let x = &w.w[0];
    let gid = m::Guild::id(&w.a.node_id().to_string(), "g");
    // The marketplace hands `x` a guild task stating `pay`.
    let assign = |input: &[u8], pay: Vec<m::Share>| {
        let mut t = digest_task(input, 10, 1, w.now.0 + 3_600_000);
        t.who = Eligibility::Guild(gid.clone());
        let task =
            w.a.compose(
                &[(Some(w.m.node_id()), m::encode_task(&t), 3_600_000)],
                w.now,
                false,
            )
            .unwrap();
        let a = m::Assignment {
            task_bundle: task.bundles[0].raw().to_vec(),
            pay: Some(pay),
        };
        let c =
            w.m.compose(
                &[(Some(x.node_id()), m::encode_assignment(&a), 3_600_000)],
                w.now,
                false,
            )
            .unwrap();
        x.receive(c.bundles[0].raw(), w.now).unwrap();
        worker::run_once(x, w.now, false).unwrap()
    };
    let share = |n: &Node, amount| m::Share {
        node: n.node_id().to_string(),
        amount,
    };
    let r = assign(b"1", vec![share(x, 10)]);
    let why = r.ran[0].failed.clone().unwrap();
    assert!(why.contains("has not joined"), "{why}");
    // It joins A's guild "g"; a split that gives it nothing is still declined.
    let gid2 = mycelium::guild::create(&w.a, "g", vec![member(x, 1)], w.now, false).unwrap();
    assert_eq!(gid2, gid);
    carry(&w.a, x, w.now);
    mycelium::guild::join(x, &gid, None, w.now, false).unwrap();
    let r = assign(b"2", vec![share(&w.a, 10)]);
    let why = r.ran[0].failed.clone().unwrap();
    assert!(why.contains("gives this node nothing"), "{why}");
    let r = assign(b"3", vec![share(&w.a, 4), share(x, 5)]);
    let why = r.ran[0].failed.clone().unwrap();
    assert!(why.contains("not the task's reward"), "{why}");
    // Terms it agreed to: it runs, and shows whom the pay goes to.
    let r = assign(b"4", vec![share(&w.a, 5), share(x, 5)]);
    assert_eq!(r.ran[0].failed, None);
    assert_eq!(r.ran[0].pay.as_ref().unwrap().len(), 2);
}

/// The probe's attack: the payee re-signs the payer's confirmed payment under its own key;
/// the ledger's refusals of those copies carry the real payment ID; handed to the payer,
/// they must not turn its confirmed payment into a refused one.
#[test]
fn refusals_of_a_re_signed_copy_do_not_touch_the_payers_confirmed_payment() {
    let w = world(1);
    let payee = &w.w[0];
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    let id = wallet::send(&w.a, &payee.node_id(), 30, "rent", w.now, false).unwrap();
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    carry(&w.m, &w.a, w.now);
    carry(&w.m, payee, w.now);
    let confirmed = wallet_of(&w.a);
    assert_eq!((confirmed.balance, confirmed.spendable), (70, 70));
    // The payee signs copies of the payment's exact bytes.
    let payload = payee
        .store
        .of_kind(m::KIND_PAYMENT)
        .unwrap()
        .into_iter()
        .filter_map(|k| payee.store.get(&k).unwrap())
        .map(|vb| vb.bundle().payload().to_vec())
        .find(|p| m::payment_id(p) == id)
        .unwrap();
    for _ in 0..16 {
        sign_for_market(&w, payee, payload.clone());
    }
    carry(payee, &w.m, w.now);
    let ev = process(&w, w.now);
    assert!(ev.iter().any(|e| matches!(e, Event::PaymentRejected { payment, reason } if *payment == id && reason.contains("not the payer"))));
    // The payee hands the payer the signed refusals whose bundle keys sort after the real
    // settlement's (the one a wallet that keeps the last settlement per ID would show).
    carry(&w.m, payee, w.now);
    let settlements = |n: &Node| -> Vec<([u8; 32], m::Settlement)> {
        n.store
            .of_kind(m::KIND_SETTLEMENT)
            .unwrap()
            .into_iter()
            .filter_map(|k| {
                let vb = n.store.get(&k).unwrap()?;
                Some((k, m::decode_settlement(vb.bundle().payload()).ok()?))
            })
            .filter(|(_, s)| s.subject == id)
            .collect()
    };
    let real = settlements(&w.a)
        .into_iter()
        .find(|(_, s)| s.accepted)
        .unwrap()
        .0;
    let mut handed = 0;
    for (k, s) in settlements(payee) {
        if !s.accepted && k > real {
            w.a.receive(&payee.store.get_raw(&k).unwrap().unwrap(), w.now)
                .unwrap();
            handed += 1;
        }
    }
    assert!(handed > 0, "no refusal sorts after the real settlement");
    let after = wallet_of(&w.a);
    assert_eq!(
        (after.balance, after.spendable),
        (70, 70),
        "{:#?}",
        after.entries
    );
    assert!(after
        .entries
        .iter()
        .any(|e| e.id == id && e.status == Status::Confirmed));
    // The payee's own wallet still counts the real payment, once.
    assert_eq!(wallet_of(payee).balance, 30);
}

#[test]
fn sealed_end_to_end_a_task_and_its_pay_travel_sealed() {
    let w = world(1);
    let all: Vec<&Node> = [&w.m, &w.a].into_iter().chain(w.w.iter()).collect();
    for n in &all {
        let rec = n.publish_record(w.now).unwrap();
        for o in &all {
            if o.node_id() != n.node_id() {
                o.receive(rec.raw(), w.now).unwrap();
            }
        }
    }
    service::with_engine(&w.m, w.now, true, |e| {
        e.grant(&w.a.node_id().to_string(), 10, "g")
    })
    .unwrap();
    carry(&w.m, &w.a, w.now);
    assert_eq!(wallet_of(&w.a).balance, 10);
    let offer = m::Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 1,
    };
    worker::offer(&w.w[0], &offer, w.now, true).unwrap();
    carry(&w.w[0], &w.m, w.now);
    let tid = wallet::submit_task(
        &w.a,
        &digest_task(b"s", 10, 1, w.now.0 + 3_600_000),
        w.now,
        true,
    )
    .unwrap();
    // What travels from A names neither the task nor the marketplace in clear.
    let travelling: Vec<Eid> =
        w.a.store
            .records()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !w.a.store.private_keys().unwrap().contains(k))
            .filter_map(|(k, _)| w.a.store.get(&k).unwrap())
            .filter(|vb| vb.bundle().primary.source == w.a.node_id() || vb.is_sealed())
            .map(|vb| vb.bundle().primary.destination.clone())
            .collect();
    assert!(!travelling.contains(&w.m.node_id()));
    carry(&w.a, &w.m, w.now);
    service::process(&w.m, w.now, true, &mut mycelium::worker::judge(&w.m.home)).unwrap();
    carry(&w.m, &w.w[0], w.now);
    let r = worker::run_once(&w.w[0], w.now, true).unwrap();
    assert_eq!(r.ran.len(), 1);
    carry(&w.w[0], &w.m, w.now);
    let ev = service::process(&w.m, w.now, true, &mut mycelium::worker::judge(&w.m.home))
        .unwrap()
        .events;
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Accepted { task, .. } if *task == tid)));
    carry(&w.m, &w.w[0], w.now);
    assert_eq!(wallet_of(&w.w[0]).balance, 10);
}

#[test]
fn embeddings_agree_by_cosine_so_a_gpu_and_a_cpu_are_both_paid() {
    let w = world(3);
    grant(&w, &w.a, 100);
    carry(&w.m, &w.a, w.now);
    let model = [5u8; 32];
    let offer = m::Offer {
        kinds: vec![JobKind::Embed],
        models: vec![serde_bytes::ByteBuf::from(model.to_vec())],
        capacity: 4,
    };
    for x in &w.w {
        worker::offer(x, &offer, w.now, false).unwrap();
        carry(x, &w.m, w.now);
    }
    let mut t = digest_task(b"one\ntwo", 10, 3, w.now.0 + 3_600_000);
    t.job = JobKind::Embed;
    t.model = model;
    let tid = wallet::submit_task(&w.a, &t, w.now, false).unwrap();
    carry(&w.a, &w.m, w.now);
    process(&w, w.now);
    let enc = |v: Vec<Vec<f32>>| {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    };
    let cpu = vec![vec![0.6, 0.8, 0.0], vec![0.0, 0.6, 0.8]];
    let gpu = vec![vec![0.6001, 0.7999, 0.0001], vec![0.0, 0.6002, 0.7998]];
    let wrong = vec![vec![0.8, 0.6, 0.0], vec![0.0, 0.6, 0.8]];
    for (x, out) in w.w.iter().zip([cpu, gpu, wrong]) {
        carry(&w.m, x, w.now);
        answer_with(x, &w.m, &enc(out), w.now);
        carry(x, &w.m, w.now);
    }
    let ev = process(&w, w.now);
    let agreeing = ev
        .iter()
        .find_map(|e| match e {
            Event::Accepted { task, agreeing, .. } if *task == tid => Some(agreeing.clone()),
            _ => None,
        })
        .expect("accepted");
    assert_eq!(agreeing.len(), 2);
    assert!(ev.contains(&Event::Disagreed {
        task: tid,
        worker: w.w[2].node_id().to_string()
    }));
    for (i, want) in [(0, 10), (1, 10), (2, 0)] {
        carry(&w.m, &w.w[i], w.now);
        assert_eq!(wallet_of(&w.w[i]).balance, want, "worker {i}");
    }
}
