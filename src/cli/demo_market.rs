//! The marketplace part of `demo`: M grants A credits, three workers offer to run jobs, A
//! submits a task (which then travels on the sticks and through the gateway), the workers
//! fetch their assignments from M over QUIC and answer (the third one dishonestly), the
//! quorum accepts the right output, and M pays the two honest workers. The payments go
//! home by the satellite feed (see `demo`).

use crate::adu::market::{self as m, Eligibility, JobKind, Limits, Task};
use crate::bundle::VerifiedBundle;
use crate::market::{service, Event};
use crate::node::Node;
use crate::time::DtnTime;
use crate::transport::quic::{self, QuicConfig};
use crate::{wallet, worker};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Credits M grants A before the demo.
pub const GRANT: u64 = 100;
pub const REWARD: u64 = 10;
pub const INPUT: &[u8] = b"clinic inventory 2026-11: insulin 0, syringes 40, gauze 12";

/// Everyone settles with M; M grants A credits (the grant reached A at an earlier
/// meeting); each worker signs an offer for M.
pub fn setup(alice: &Node, market: &Node, workers: &[Arc<Node>], now: DtnTime) -> Result<()> {
    market.set_market(&market.node_id())?;
    alice.set_market(&market.node_id())?;
    let a = alice.node_id().to_string();
    service::with_engine(market, now, true, |e| {
        e.grant(&a, GRANT, "starting credits")
    })?;
    let private = market.store.private_keys()?;
    for (key, _) in market.store.records()? {
        if let (false, Some(raw)) = (private.contains(&key), market.store.get_raw(&key)?) {
            let _ = alice.receive(&raw, now);
        }
    }
    let offer = m::Offer {
        kinds: vec![JobKind::Digest],
        models: vec![],
        capacity: 4,
    };
    for w in workers {
        w.set_market(&market.node_id())?;
        worker::offer(w, &offer, now, true)?;
    }
    Ok(())
}

/// A's task: the digest of the clinic's inventory, checked by three workers.
pub fn submit(alice: &Node, now: DtnTime) -> Result<[u8; 32]> {
    let t = Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: INPUT.to_vec(),
        limits: Limits {
            max_tokens: 0,
            max_ms: 60_000,
        },
        reward: REWARD,
        deadline: now.0 + 2 * 24 * 3600 * 1000,
        redundancy: 3,
        who: Eligibility::Anyone,
    };
    Ok(wallet::submit_task(alice, &t, now, true)?)
}

/// A dishonest worker: answers every assignment with a made-up output.
fn cheat(w: &Node, now: DtnTime) -> Result<usize> {
    let market = w.market()?.context("worker has no marketplace")?;
    let mut outs = Vec::new();
    for key in w.store.of_kind(m::KIND_ASSIGNMENT)? {
        let Some(vb) = w.store.get(&key)? else {
            continue;
        };
        if vb.bundle().primary.destination.node_id() != w.node_id() {
            continue;
        }
        let a = m::decode_assignment(vb.bundle().payload())?;
        let task = VerifiedBundle::decode(&a.task_bundle)?;
        let output = b"made up".to_vec();
        let r = m::TaskResult {
            task: task.id().key(),
            worker: w.node_id().to_string(),
            output_hash: *blake3::hash(&output).as_bytes(),
            output,
            failed: None,
            used: m::Used::default(),
        };
        outs.push((Some(market.clone()), m::encode_result(&r), 3_600_000));
    }
    let c = w.compose(&outs, now, true)?;
    w.store.commit_ledger(&[], &c.bundles, &c.private, now)?;
    Ok(outs.len())
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// With M served at `m_addr`: the marketplace takes the task the gateway brought, the
/// workers sync for their assignments, run them and sync the results back, and M decides
/// and pays.
pub fn work(
    say: &impl Fn(String),
    rt: &tokio::runtime::Runtime,
    market: &Node,
    m_addr: SocketAddr,
    workers: &[Arc<Node>],
    task: &[u8; 32],
    cfg: &QuicConfig,
) -> Result<serde_json::Value> {
    let now = DtnTime::now();
    let mut events = service::process(market, now, true)?.events;
    if !events.contains(&Event::TaskAccepted {
        task: *task,
        escrow: 3 * REWARD,
    }) {
        bail!("the marketplace did not accept A's task: {events:?}");
    }
    say(format!(
        "    M's ledger accepts A's task {} (digest of the clinic's inventory, 3 workers, {REWARD} credits each): {} credits held in escrow",
        &hex::encode(task)[..12],
        3 * REWARD
    ));
    let sync = |w: &Node| -> Result<u64> {
        Ok(rt
            .block_on(quic::sync_with(w, m_addr, Some(&market.node_id()), cfg))?
            .new)
    };
    for w in workers {
        sync(w)?;
    }
    events.extend(service::process(market, now, true)?.events);
    let assigned = count(&events, |e| matches!(e, Event::Assigned { .. }));
    let mut answers = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        sync(w)?;
        let n = if i == 2 {
            cheat(w, now)?
        } else {
            worker::run_once(w, now, true)?.ran.len()
        };
        answers.push(n);
        sync(w)?;
    }
    say(format!(
        "    workers W1, W2, W3 sync with M over QUIC: their offers go up, {assigned} sealed assignments come down; W1 and W2 run the job, W3 makes up an answer; the results go up"
    ));
    let decided = service::process(market, now, true)?.events;
    let agreeing = decided
        .iter()
        .find_map(|e| match e {
            Event::Accepted { agreeing, .. } => Some(agreeing.len()),
            _ => None,
        })
        .context("the quorum did not accept an output")?;
    let outvoted = count(&decided, |e| matches!(e, Event::Disagreed { .. }));
    let paid: u64 = decided
        .iter()
        .filter_map(|e| match e {
            Event::Paid { amount, .. } => Some(*amount),
            _ => None,
        })
        .sum();
    say(format!(
        "    the quorum (2 of 3) accepts the output {agreeing} workers agree on; W3 is outvoted ({outvoted}), unpaid, and its record drops; M signs payments of {REWARD} credits to W1 and W2 and refunds A the unused {REWARD}"
    ));
    Ok(json!({
        "task": hex::encode(task),
        "assigned": assigned,
        "answers": answers,
        "agreeing": agreeing,
        "outvoted": outvoted,
        "paid_total": paid,
    }))
}

/// After the feed: each worker's wallet, and A's verdict and wallet.
pub fn home(
    say: &impl Fn(String),
    alice: &Node,
    workers: &[Arc<Node>],
    task: &[u8; 32],
) -> Result<serde_json::Value> {
    let mut balances = Vec::new();
    for w in workers {
        balances.push(wallet::view(w)?.balance);
    }
    if balances != [i128::from(REWARD), i128::from(REWARD), 0] {
        bail!("workers' wallets after the feed: {balances:?}");
    }
    let mut verdict = None;
    for key in alice.store.of_kind(m::KIND_VERDICT)? {
        if let Some(vb) = alice.store.get(&key)? {
            if let Ok(v) = m::decode_verdict(vb.bundle().payload()) {
                if v.task == *task {
                    verdict = Some(v);
                }
            }
        }
    }
    let v = verdict.context("A has no verdict on its task")?;
    if !v.accepted || v.output != blake3::hash(INPUT).as_bytes() {
        bail!("A's verdict does not carry the right output");
    }
    let aw = wallet::view(alice)?;
    let expect = i128::from(GRANT - 3 * REWARD + REWARD);
    if aw.balance != expect || aw.pending_out != 0 {
        bail!(
            "A's wallet: balance {} (expected {expect}), {} pending",
            aw.balance,
            aw.pending_out
        );
    }
    say(format!(
        "    wallets: W1 {} credits, W2 {} credits (confirmed: signed by the marketplace), W3 {}; A reads the accepted output {}… and holds {} credits",
        balances[0],
        balances[1],
        balances[2],
        &hex::encode(&v.output)[..16],
        aw.balance
    ));
    Ok(
        json!({"worker_balances": balances.iter().map(|b| *b as i64).collect::<Vec<_>>(),
              "a_balance": aw.balance as i64, "output": hex::encode(&v.output)}),
    )
}
