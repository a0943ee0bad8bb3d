//! The worker: takes the assignments its marketplace sent it out of the store, checks the
//! submitter's signature on each task, runs the job, and answers the marketplace with a
//! signed result, or a signed failure with the reason; never a silent drop. Each
//! assignment is answered once (marked in the ledger column family in the same batch as
//! the result bundle).
//!
//! Engines: `digest` (blake3 of the input) runs everywhere. `embed` and `generate` answer
//! with a failure naming the missing engine until the inference engines land.
//!
//! Owns: turning assignments into results.

use crate::adu::market::{self as m, JobKind, Offer, Task, TaskResult, Used};
use crate::bundle::{Eid, VerifiedBundle};
use crate::node::{Node, NodeError};
use crate::store::StoreError;
use crate::time::DtnTime;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no marketplace set for this node: `mycelium market use NODE` first")]
    NoMarket,
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One assignment handled.
#[derive(Debug, Clone)]
pub struct Ran {
    pub task: [u8; 32],
    pub job: JobKind,
    pub ms: u64,
    /// `None` when the job succeeded; the failure's reason otherwise.
    pub failed: Option<String>,
}

/// What [`run_once`] did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub ran: Vec<Ran>,
    /// Assignments not run, with why (not from our marketplace, bad task, past deadline).
    pub skipped: Vec<(String, String)>,
}

fn done_key(key: &[u8; 32]) -> Vec<u8> {
    [b"wdone/".as_slice(), key].concat()
}

/// Marks a task answered (so a second assignment of it is not run again).
fn task_key(task: &[u8; 32]) -> Vec<u8> {
    [b"wtask/".as_slice(), task].concat()
}

/// Tell the marketplace what this node can run.
pub fn offer(
    node: &Node,
    offer: &Offer,
    now: DtnTime,
    seal: bool,
) -> Result<[u8; 32], WorkerError> {
    let market = node.market()?.ok_or(WorkerError::NoMarket)?;
    let c = node.compose(
        &[(Some(market), m::encode_offer(offer), 24 * 3600 * 1000)],
        now,
        seal,
    )?;
    node.store.commit_ledger(&[], &c.bundles, &c.private, now)?;
    Ok(c.bundles[0].id().key())
}

/// Run a job. Errors are the failure reason a result carries.
pub fn run_job(task: &Task) -> Result<(Vec<u8>, Used), String> {
    let start = Instant::now();
    let output = match task.job {
        JobKind::Digest => blake3::hash(&task.input).as_bytes().to_vec(),
        JobKind::Embed | JobKind::Generate => {
            return Err(format!(
                "this node has no {} engine (inference engines are not built yet)",
                task.job.as_str()
            ))
        }
    };
    let ms = start.elapsed().as_millis() as u64;
    if task.limits.max_ms > 0 && ms > task.limits.max_ms {
        return Err(format!(
            "took {ms} ms, over the task's limit of {} ms",
            task.limits.max_ms
        ));
    }
    Ok((output, Used { ms, tokens: 0 }))
}

/// Answer every assignment from our marketplace not answered yet.
pub fn run_once(node: &Node, now: DtnTime, seal: bool) -> Result<RunReport, WorkerError> {
    let market = node.market()?.ok_or(WorkerError::NoMarket)?;
    let me = node.node_id().to_string();
    let mut report = RunReport::default();
    let mut outs = Vec::new();
    let mut kv = Vec::new();
    for key in node.store.of_kind(m::KIND_ASSIGNMENT)? {
        if node.store.ledger_get(&done_key(&key))?.is_some() {
            continue;
        }
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let p = &vb.bundle().primary;
        if p.destination.node_id().to_string() != me {
            continue;
        }
        let short = hex::encode(&key[..6]);
        let mut skip = |why: String, kv: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>| {
            kv.push((done_key(&key), Some(Vec::new())));
            report.skipped.push((short.clone(), why));
        };
        if p.source.node_id() != market {
            skip(
                format!("from {}, not from our marketplace", p.source),
                &mut kv,
            );
            continue;
        }
        let task_vb = match m::decode_assignment(vb.bundle().payload())
            .map_err(|e| e.to_string())
            .and_then(|a| VerifiedBundle::decode(&a.task_bundle).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                skip(format!("carries no valid task bundle: {e}"), &mut kv);
                continue;
            }
        };
        let task = match m::decode_task(task_vb.bundle().payload()) {
            Ok(t) => t,
            Err(e) => {
                skip(format!("the task does not decode: {e}"), &mut kv);
                continue;
            }
        };
        let task_id = task_vb.id().key();
        if task_vb.bundle().primary.destination.node_id() != market {
            skip(
                "the task was not submitted to our marketplace".into(),
                &mut kv,
            );
            continue;
        }
        if node.store.ledger_get(&task_key(&task_id))?.is_some()
            || kv.iter().any(|(k, _)| *k == task_key(&task_id))
        {
            skip("this task was already answered".into(), &mut kv);
            continue;
        }
        if task.deadline <= now.0 {
            skip("past its deadline".into(), &mut kv);
            continue;
        }
        let run = task.check().and_then(|()| run_job(&task));
        let (output, used, failed) = match run {
            Ok((o, u)) => (o, u, None),
            Err(why) => (Vec::new(), Used::default(), Some(why)),
        };
        let r = TaskResult {
            task: task_id,
            worker: me.clone(),
            output_hash: *blake3::hash(&output).as_bytes(),
            output,
            failed: failed.clone(),
            used,
        };
        report.ran.push(Ran {
            task: task_id,
            job: task.job,
            ms: used.ms,
            failed,
        });
        let lifetime = task.deadline.saturating_sub(now.0).max(60_000);
        outs.push((Some(market.clone()), m::encode_result(&r), lifetime));
        kv.push((done_key(&key), Some(task_id.to_vec())));
        kv.push((task_key(&task_id), Some(Vec::new())));
    }
    let c = node.compose(&outs, now, seal)?;
    node.store.commit_ledger(&kv, &c.bundles, &c.private, now)?;
    Ok(report)
}

/// The marketplace a worker uses, parsed for callers that hold only text.
pub fn parse_market(s: &str) -> Result<Eid, String> {
    let e = Eid::parse(s).map_err(|e| e.to_string())?;
    m::node_id_ok(&e.node_id().to_string())?;
    Ok(e.node_id())
}
