//! The marketplace part of `demo`: M grants A credits, three workers offer to run jobs, A
//! submits a task (which then travels on the sticks and through the gateway), the workers
//! fetch their assignments from M over QUIC and answer (the third one dishonestly), the
//! quorum accepts the right output, and M pays the two honest workers. W1 and W2 also hold
//! two real models (all-MiniLM-L6-v2 and SmolLM2-135M-Instruct, from
//! `scripts/fetch-models.sh`) and run A's `embed` and `generate` tasks on their CPUs. The
//! payments go home by the satellite feed (see `demo`).

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

/// The models W1 and W2 hold, by hash.
pub struct Models {
    pub embed: [u8; 32],
    pub generate: [u8; 32],
}

/// A's tasks.
pub struct Tasks {
    pub digest: [u8; 32],
    pub embed: [u8; 32],
    pub generate: [u8; 32],
}

pub const SENTENCES: [&str; 3] = [
    "The clinic needs insulin by Friday.",
    "Insulin must reach the clinic before the weekend.",
    "Mushrooms grow well in damp forests.",
];
pub const QUESTION: &str = "Name one thing a village clinic needs.";

/// Everyone settles with M; M grants A credits (the grant reached A at an earlier
/// meeting); W1 and W2 take the two models from the fetched cache; each worker signs an
/// offer for M.
pub fn setup(alice: &Node, market: &Node, workers: &[Arc<Node>], now: DtnTime) -> Result<Models> {
    let fetched = worker::models::fetched_dir();
    let (bert, gguf) = (
        fetched.join("all-minilm-l6-v2"),
        fetched.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    if !bert.exists() || !gguf.exists() {
        bail!(
            "the demo runs real models and they are not in {}: run `bash scripts/fetch-models.sh` first",
            fetched.display()
        );
    }
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
    let mut models = None;
    for (i, w) in workers.iter().enumerate() {
        w.set_market(&market.node_id())?;
        let offer = if i < 2 {
            let e = worker::models::add(&w.home, &bert, Some("all-MiniLM-L6-v2"))?;
            let g = worker::models::add(&w.home, &gguf, Some("SmolLM2-135M-Instruct-Q4_1"))?;
            models = Some(Models {
                embed: e.hash,
                generate: g.hash,
            });
            m::Offer {
                kinds: vec![JobKind::Digest, JobKind::Embed, JobKind::Generate],
                models: vec![
                    serde_bytes::ByteBuf::from(e.hash.to_vec()),
                    serde_bytes::ByteBuf::from(g.hash.to_vec()),
                ],
                capacity: 4,
            }
        } else {
            m::Offer {
                kinds: vec![JobKind::Digest],
                models: vec![],
                capacity: 4,
            }
        };
        worker::offer(w, &offer, now, true)?;
    }
    // M holds SmolLM2 too, to re-score the generations it is sent.
    worker::models::add(&market.home, &gguf, Some("SmolLM2-135M-Instruct-Q4_1"))?;
    models.context("the demo needs at least two workers")
}

/// A's tasks: the digest of the clinic's inventory (three workers), embeddings of three
/// sentences and an answer to a question (two workers each).
pub fn submit(alice: &Node, models: &Models, now: DtnTime, max_ms: u64) -> Result<Tasks> {
    let t = Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: INPUT.to_vec(),
        limits: Limits {
            max_tokens: 0,
            max_ms,
        },
        reward: REWARD,
        deadline: now.0 + 2 * 24 * 3600 * 1000,
        redundancy: 3,
        who: Eligibility::Anyone,
    };
    let digest = wallet::submit_task(alice, &t, now, true)?;
    let mut e = t.clone();
    e.job = JobKind::Embed;
    e.model = models.embed;
    e.input = SENTENCES.join("\n").into_bytes();
    e.reward = MODEL_REWARD;
    e.redundancy = 2;
    let embed = wallet::submit_task(alice, &e, now, true)?;
    let mut g = e.clone();
    g.job = JobKind::Generate;
    g.model = models.generate;
    g.input = QUESTION.as_bytes().to_vec();
    g.limits.max_tokens = 24;
    let generate = wallet::submit_task(alice, &g, now, true)?;
    Ok(Tasks {
        digest,
        embed,
        generate,
    })
}

/// Credits per worker for the model tasks.
pub const MODEL_REWARD: u64 = 5;

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
    tasks: &Tasks,
    cfg: &QuicConfig,
) -> Result<serde_json::Value> {
    let now = DtnTime::now();
    let task = &tasks.digest;
    let mut events =
        service::process(market, now, true, &mut crate::worker::judge(&market.home))?.events;
    let accepted = count(&events, |e| matches!(e, Event::TaskAccepted { .. }));
    if accepted != 3 {
        bail!("the marketplace accepted {accepted} of A's 3 tasks: {events:?}");
    }
    say(format!(
        "    M's ledger accepts A's three tasks ({} digest, {} embed, {} generate): {} credits held in escrow",
        &hex::encode(task)[..8],
        &hex::encode(tasks.embed)[..8],
        &hex::encode(tasks.generate)[..8],
        3 * REWARD + 4 * MODEL_REWARD
    ));
    let sync = |w: &Node| -> Result<u64> {
        Ok(rt
            .block_on(quic::sync_with(w, m_addr, Some(&market.node_id()), cfg))?
            .new)
    };
    for w in workers {
        sync(w)?;
    }
    events.extend(
        service::process(market, now, true, &mut crate::worker::judge(&market.home))?.events,
    );
    let assigned = count(&events, |e| matches!(e, Event::Assigned { .. }));
    let mut answers = Vec::new();
    let mut run_secs = 0.0;
    for (i, w) in workers.iter().enumerate() {
        sync(w)?;
        let n = if i == 2 {
            cheat(w, now)?
        } else {
            let t = std::time::Instant::now();
            let r = worker::run_once(w, now, true)?;
            run_secs += t.elapsed().as_secs_f64();
            if let Some(f) = r.ran.iter().find_map(|x| x.failed.clone()) {
                bail!("a worker failed a task: {f}");
            }
            r.ran.len()
        };
        answers.push(n);
        sync(w)?;
    }
    say(format!(
        "    workers W1, W2, W3 sync with M over QUIC: their offers go up, {assigned} sealed assignments come down; W1 and W2 run the digest, MiniLM and SmolLM2 on their CPUs ({run_secs:.1} s), W3 makes up a digest; the results go up"
    ));
    let decided =
        service::process(market, now, true, &mut crate::worker::judge(&market.home))?.events;
    let agreeing = decided
        .iter()
        .find_map(|e| match e {
            Event::Accepted {
                task: t, agreeing, ..
            } if t == task => Some(agreeing.len()),
            _ => None,
        })
        .context("the quorum did not accept an output")?;
    let accepted_all = count(&decided, |e| matches!(e, Event::Accepted { .. }));
    if accepted_all != 3 {
        bail!("only {accepted_all} of A's 3 tasks were accepted: {decided:?}");
    }
    let outvoted = count(&decided, |e| matches!(e, Event::Disagreed { .. }));
    let rescored = count(&decided, |e| {
        matches!(e, Event::Rescored { refused: None, .. })
    });
    if rescored != 2 {
        bail!("M re-scored {rescored} of the 2 generations as passing: {decided:?}");
    }
    let paid: u64 = decided
        .iter()
        .filter_map(|e| match e {
            Event::Paid { amount, .. } => Some(*amount),
            _ => None,
        })
        .sum();
    say(format!(
        "    the quorum (2 of 3) accepts the digest {agreeing} workers agree on; W3 is outvoted ({outvoted}), unpaid, and its record drops; W1's and W2's embeddings agree (cosine >= 0.999), and M re-scores both generations with its own SmolLM2 in one teacher-forced pass each (every token within 0.5 logits of greedy): both pass; M signs payments to W1 and W2 and refunds A the unused {REWARD}"
    ));
    Ok(json!({
        "task": hex::encode(task),
        "accepted_tasks": accepted_all,
        "assigned": assigned,
        "answers": answers,
        "agreeing": agreeing,
        "outvoted": outvoted,
        "generations_rescored": rescored,
        "paid_total": paid,
    }))
}

/// After the feed: each worker's wallet, and A's verdict and wallet.
pub fn home(
    say: &impl Fn(String),
    alice: &Node,
    workers: &[Arc<Node>],
    tasks: &Tasks,
) -> Result<serde_json::Value> {
    let mut balances = Vec::new();
    for w in workers {
        balances.push(wallet::view(w)?.balance);
    }
    let earned = i128::from(REWARD + 2 * MODEL_REWARD);
    if balances != [earned, earned, 0] {
        bail!("workers' wallets after the feed: {balances:?}");
    }
    let verdict = |task: &[u8; 32]| -> Result<m::Verdict> {
        for key in alice.store.of_kind(m::KIND_VERDICT)? {
            if let Some(vb) = alice.store.get(&key)? {
                if let Ok(v) = m::decode_verdict(vb.bundle().payload()) {
                    if v.task == *task && v.accepted {
                        return Ok(v);
                    }
                }
            }
        }
        bail!("A has no accepted verdict on task {}", hex::encode(task))
    };
    let v = verdict(&tasks.digest)?;
    if v.output != blake3::hash(INPUT).as_bytes() {
        bail!("A's verdict does not carry the right output");
    }
    let vectors =
        worker::decode_vectors(&verdict(&tasks.embed)?.output).map_err(anyhow::Error::msg)?;
    let sim = |a: usize, b: usize| crate::market::agree::cosine(&vectors[a], &vectors[b]);
    if vectors.len() != 3 || sim(0, 1) <= sim(0, 2) {
        bail!("the embeddings do not rank the two insulin sentences closest");
    }
    let answer =
        worker::decode_generation(&verdict(&tasks.generate)?.output).map_err(anyhow::Error::msg)?;
    say(format!(
        "    A reads its embeddings: 3 vectors of {} numbers; the two insulin sentences are closest (cosine {:.2}, against {:.2} for the mushrooms)",
        vectors[0].len(),
        sim(0, 1),
        sim(0, 2)
    ));
    say(format!(
        "    and SmolLM2's answer to {QUESTION:?}: {:?}",
        answer.text.trim()
    ));
    let aw = wallet::view(alice)?;
    let expect = i128::from(GRANT - 3 * REWARD + REWARD - 4 * MODEL_REWARD);
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
              "a_balance": aw.balance as i64, "output": hex::encode(&v.output),
              "embeddings": vectors.len(), "dim": vectors[0].len(),
              "similar": sim(0, 1), "dissimilar": sim(0, 2),
              "generated": answer.text}),
    )
}
