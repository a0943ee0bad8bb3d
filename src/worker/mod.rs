//! The worker: takes the assignments its marketplace sent it out of the store, checks the
//! submitter's signature on each task, runs the job, and answers the marketplace with a
//! signed result, or a signed failure with the reason; never a silent drop. Each
//! assignment is answered once (marked in the ledger column family in the same batch as
//! the result bundle).
//!
//! Assignments are grouped by job and model, each model is loaded once per group, and the
//! texts of all `embed` tasks of a group are embedded together in batches.
//!
//! Engines: `digest` (blake3 of the input, no model); `embed` ([`embed`], a BERT model:
//! input one text per line, output a CBOR array of float32 vectors); `generate`
//! ([`generate`], a GGUF llama: input the user's message, output CBOR
//! `{"text": tstr, "tokens": [* uint]}`, greedy, `max_tokens` from the task's limits).
//! A worker runs only models it holds ([`models`]) whose files match the task's hash.
//! A guild task runs only for a guild this node joined ([`crate::guild`]) and only when
//! its assignment says whom the pay goes to and gives this node a part; otherwise the
//! worker declines it with a signed failure saying why.
//!
//! Owns: turning assignments into results.

pub mod bert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod devices;
pub mod embed;
pub mod generate;
pub mod isa;
pub mod kernels;
pub mod llama;
pub mod models;
pub mod quant;
pub mod vmath;

use crate::adu::market::{self as m, JobKind, Offer, Task, TaskResult, Used};
use crate::bundle::{Eid, VerifiedBundle};
use crate::node::{Node, NodeError};
use crate::store::StoreError;
use crate::time::DtnTime;
use std::time::Instant;

/// Why an engine could not run a job (becomes a failure result's reason).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model: {0}")]
    Model(String),
    #[error("input: {0}")]
    Input(String),
    #[error("compute: {0}")]
    Compute(#[from] candle_core::Error),
}

/// Tokens `generate` makes when a task says 0, and the most it ever makes.
pub const DEFAULT_MAX_TOKENS: u32 = 128;
pub const MAX_TOKENS: u32 = 1024;

/// How the runner works.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub seal: bool,
    /// Most texts embedded at once.
    pub max_batch: usize,
    /// Run engines on a GPU when this build and machine have one.
    pub gpu: bool,
}

/// A `generate` output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
}

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
    /// Tokens generated, or texts embedded, or 0.
    pub tokens: u64,
    /// `None` when the job succeeded; the failure's reason otherwise.
    pub failed: Option<String>,
    /// For a guild task: whom the marketplace pays the reward to, as its assignment said.
    pub pay: Option<Vec<m::Share>>,
}

/// What [`run_once`] did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub ran: Vec<Ran>,
    /// Assignments not run, with why (not from our marketplace, bad task, past deadline).
    pub skipped: Vec<(String, String)>,
    /// Models put together from bundles before running.
    pub models_added: usize,
    /// Model manifests that could not be put together, with why (each fails alone).
    pub models_failed: Vec<models::Failed>,
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

/// Run a job that needs no model (`digest`). Errors are the failure reason.
pub fn run_job(task: &Task) -> Result<(Vec<u8>, Used), String> {
    let start = Instant::now();
    let output = match task.job {
        JobKind::Digest => blake3::hash(&task.input).as_bytes().to_vec(),
        JobKind::Embed | JobKind::Generate => {
            return Err(format!("a {} job needs its model", task.job.as_str()))
        }
    };
    let ms = start.elapsed().as_millis() as u64;
    over_time(task, ms)?;
    Ok((output, Used { ms, tokens: 0 }))
}

fn over_time(task: &Task, ms: u64) -> Result<(), String> {
    if task.limits.max_ms > 0 && ms > task.limits.max_ms {
        return Err(format!(
            "took {ms} ms, over the task's limit of {} ms",
            task.limits.max_ms
        ));
    }
    Ok(())
}

/// A generation as a result output, within the task's time limit.
fn generation_outcome(task: &Task, g: generate::Generated, ms: u64) -> Outcome {
    over_time(task, ms)?;
    let tokens = g.ids.len() as u64;
    let mut out = Vec::new();
    let _ = ciborium::into_writer(
        &Generation {
            text: g.text,
            tokens: g.ids,
        },
        &mut out,
    );
    Ok((out, Used { ms, tokens }))
}

/// Margin in logits within which a claimed token counts as the model's greedy choice
/// when the marketplace re-scores a `generate` answer: two correct implementations (a GPU
/// and a CPU, two Q4_1 kernels) differ by less on near ties, a forged token by far more.
pub const GENERATE_MARGIN: f32 = 0.5;

/// Models loaded to judge `generate` answers, by hash (`None`: not held here).
pub type Judges = std::collections::HashMap<[u8; 32], Option<generate::Generator>>;

/// Re-score a claimed `generate` output of `task` with the task's model, when `home`
/// holds it ([`generate::Generator::verify`], margin [`GENERATE_MARGIN`]). `None` when
/// it cannot judge: the model is not held, or the engine fails.
/// The marketplace's check of `generate` answers with the models held in `home` (each
/// loaded on first use): what `market::service::process` takes.
pub fn judge(home: &std::path::Path) -> impl FnMut(&Task, &[u8]) -> Option<Result<(), String>> {
    let home = home.to_path_buf();
    let mut judges = Judges::new();
    move |t, o| judge_generation(&home, &mut judges, t, o)
}

pub fn judge_generation(
    home: &std::path::Path,
    judges: &mut Judges,
    task: &Task,
    output: &[u8],
) -> Option<Result<(), String>> {
    let g = judges
        .entry(task.model)
        .or_insert_with(|| {
            let held = models::find(home, &task.model).ok().flatten()?;
            generate::Generator::load(&held.gguf()?, &candle_core::Device::Cpu).ok()
        })
        .as_mut()?;
    let claim = match decode_generation(output) {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let Ok(user) = std::str::from_utf8(&task.input) else {
        return Some(Err("the task's input is not UTF-8 text".into()));
    };
    let max = match task.limits.max_tokens {
        0 => DEFAULT_MAX_TOKENS,
        n => n.min(MAX_TOKENS),
    };
    g.verify(
        user,
        max as usize,
        &claim.tokens,
        &claim.text,
        GENERATE_MARGIN,
    )
    .ok()
}

/// The texts of an `embed` input: one per non-empty line.
pub fn embed_texts(input: &[u8]) -> Result<Vec<String>, String> {
    let s = std::str::from_utf8(input).map_err(|_| "the input is not UTF-8 text".to_string())?;
    let v: Vec<String> = s
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        return Err("the input has no text (one text per line)".into());
    }
    Ok(v)
}

/// Encode embeddings as a result output (CBOR array of float32 arrays).
pub fn encode_vectors(v: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(&v, &mut out);
    out
}

pub use crate::market::agree::decode_vectors;

/// Decode a `generate` output.
pub fn decode_generation(b: &[u8]) -> Result<Generation, String> {
    ciborium::from_reader(b).map_err(|e| format!("not a generation output: {e}"))
}

type Outcome = Result<(Vec<u8>, Used), String>;

/// Run every task of one (job, model) group; one outcome per task, in order.
fn run_group(
    home: &std::path::Path,
    job: JobKind,
    model: &[u8; 32],
    tasks: &[&Task],
    opts: &RunOptions,
    failed: &[models::Failed],
) -> Vec<Outcome> {
    if job == JobKind::Digest {
        return tasks.iter().map(|t| run_job(t)).collect();
    }
    let fail_all = |why: String| tasks.iter().map(|_| Err(why.clone())).collect();
    let held = match models::find(home, model) {
        Ok(Some(h)) => h,
        Ok(None) => {
            let why = failed
                .iter()
                .find(|f| f.hash == Some(*model))
                .map(|f| format!(" (its bundles arrived but failed: {})", f.reason))
                .unwrap_or_default();
            return fail_all(format!(
                "this node does not hold model {}{why}",
                hex::encode(model)
            ));
        }
        Err(e) => return fail_all(e.to_string()),
    };
    let (device, _why_cpu) = devices::pick(opts.gpu);
    match (job, held.format) {
        (JobKind::Embed, models::Format::Bert) => {
            let start = Instant::now();
            let emb = match embed::Embedder::load(&held.dir, &device) {
                Ok(e) => e,
                Err(e) => return fail_all(e.to_string()),
            };
            // All texts of the group in one run, batched; then split back per task.
            let mut texts = Vec::new();
            let mut spans = Vec::new();
            for t in tasks {
                match embed_texts(&t.input) {
                    Ok(v) => {
                        spans.push(Ok((texts.len(), v.len())));
                        texts.extend(v);
                    }
                    Err(e) => spans.push(Err(e)),
                }
            }
            let batch = devices::batch_size(&device, opts.max_batch);
            let vectors = match emb.embed(&texts, batch) {
                Ok(v) => v,
                Err(e) => return fail_all(e.to_string()),
            };
            let ms = start.elapsed().as_millis() as u64;
            spans
                .into_iter()
                .zip(tasks)
                .map(|(span, t)| {
                    let (at, n) = span?;
                    over_time(t, ms)?;
                    Ok((
                        encode_vectors(&vectors[at..at + n]),
                        Used {
                            ms,
                            tokens: n as u64,
                        },
                    ))
                })
                .collect()
        }
        (JobKind::Generate, models::Format::Gguf) => {
            let Some(path) = held.gguf() else {
                return fail_all("the model holds no .gguf file".into());
            };
            let mut gen = match generate::Generator::load(&path, &device) {
                Ok(g) => g,
                Err(e) => return fail_all(e.to_string()),
            };
            // Valid prompts run together, `max_batch` at a time, each to its own limit.
            let prompts: Vec<Result<(String, usize), String>> = tasks
                .iter()
                .map(|t| {
                    let user = std::str::from_utf8(&t.input)
                        .map_err(|_| "the input is not UTF-8 text".to_string())?;
                    let max = match t.limits.max_tokens {
                        0 => DEFAULT_MAX_TOKENS,
                        n => n.min(MAX_TOKENS),
                    };
                    Ok((gen.prompt(user), max as usize))
                })
                .collect();
            let ok: Vec<usize> = (0..tasks.len()).filter(|&i| prompts[i].is_ok()).collect();
            let mut outcomes: Vec<Option<Outcome>> = tasks.iter().map(|_| None).collect();
            for chunk in ok.chunks(opts.max_batch.max(1)) {
                let jobs: Vec<(&str, usize)> = chunk
                    .iter()
                    .filter_map(|&i| prompts[i].as_ref().ok())
                    .map(|(p, m)| (p.as_str(), *m))
                    .collect();
                let start = Instant::now();
                let done = gen.complete_each(&jobs, generate::Decode::Greedy);
                let ms = start.elapsed().as_millis() as u64;
                match done {
                    Ok(gens) => {
                        for (&i, g) in chunk.iter().zip(gens) {
                            outcomes[i] = Some(generation_outcome(tasks[i], g, ms));
                        }
                    }
                    // A batch that fails is retried one by one, so one bad prompt (too
                    // long for the context) fails alone.
                    Err(_) => {
                        for (&i, job) in chunk.iter().zip(&jobs) {
                            let start = Instant::now();
                            let one = gen
                                .complete_each(std::slice::from_ref(job), generate::Decode::Greedy);
                            let ms = start.elapsed().as_millis() as u64;
                            outcomes[i] = Some(match one.map(|mut v| v.pop()) {
                                Ok(Some(g)) => generation_outcome(tasks[i], g, ms),
                                Ok(None) => Err("no generation".into()),
                                Err(e) => Err(e.to_string()),
                            });
                        }
                    }
                }
            }
            outcomes
                .into_iter()
                .zip(prompts)
                .map(|(o, p)| match (o, p) {
                    (Some(o), _) => o,
                    (None, Err(e)) => Err(e),
                    (None, Ok(_)) => Err("not run".into()),
                })
                .collect()
        }
        (job, format) => fail_all(format!(
            "model {} is a {format:?} model, which cannot run {} jobs",
            hex::encode(model),
            job.as_str()
        )),
    }
}

/// An assignment to answer: its key, the task's ID, the task, and for a guild task the
/// split of the reward it states.
type Todo = ([u8; 32], [u8; 32], Task, Option<Vec<m::Share>>);

/// Answer every assignment from our marketplace not answered yet (sealed results, CPU,
/// batches of 32).
pub fn run_once(node: &Node, now: DtnTime, seal: bool) -> Result<RunReport, WorkerError> {
    run_with(
        node,
        now,
        &RunOptions {
            seal,
            max_batch: 32,
            gpu: false,
        },
    )
}

/// Answer every assignment from our marketplace not answered yet.
pub fn run_with(node: &Node, now: DtnTime, opts: &RunOptions) -> Result<RunReport, WorkerError> {
    run_progress(node, now, opts, &mut |_, _, _| {})
}

/// As [`run_with`], telling `progress(done, total, what)` before and after each group of
/// tasks (one job on one model) runs.
pub fn run_progress(
    node: &Node,
    now: DtnTime,
    opts: &RunOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<RunReport, WorkerError> {
    // One run at a time in this process (the daemon's worker role and a `worker --once`
    // run through it): two would each find the same assignment unanswered.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let market = node.market()?.ok_or(WorkerError::NoMarket)?;
    let me = node.node_id().to_string();
    let mut report = RunReport::default();
    // Models that arrived as bundles since the last run become usable now.
    match models::assemble(node) {
        Ok(a) => {
            report.models_added = a.added.len();
            report.models_failed = a.failed;
        }
        Err(e) => report.skipped.push(("models".into(), e.to_string())),
    }
    let mut kv = Vec::new();
    // Checked and not yet answered.
    let mut todo: Vec<Todo> = Vec::new();
    // Guild tasks this node declines, with why (by index into `todo`).
    let mut declined: Vec<(usize, String)> = Vec::new();
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
        let (task_vb, pay) = match m::decode_assignment(vb.bundle().payload())
            .map_err(|e| e.to_string())
            .and_then(|a| {
                VerifiedBundle::decode(&a.task_bundle)
                    .map(|t| (t, a.pay))
                    .map_err(|e| e.to_string())
            }) {
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
            || todo.iter().any(|t| t.1 == task_id)
        {
            skip("this task was already answered".into(), &mut kv);
            continue;
        }
        if task.deadline <= now.0 {
            skip("past its deadline".into(), &mut kv);
            continue;
        }
        if let m::Eligibility::Guild(g) = &task.who {
            if let Err(why) = guild_terms(node, &me, g, task.reward, pay.as_deref()) {
                declined.push((todo.len(), format!("declined: {why}")));
            }
        }
        todo.push((key, task_id, task, pay));
    }
    // Group by job and model: each model loads once.
    let mut groups: std::collections::BTreeMap<(JobKind, [u8; 32]), Vec<usize>> =
        Default::default();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; todo.len()];
    for (i, why) in declined {
        outcomes[i] = Some(Err(why));
    }
    for (i, (_, _, t, _)) in todo.iter().enumerate() {
        if outcomes[i].is_none() {
            groups.entry((t.job, t.model)).or_default().push(i);
        }
    }
    let mut done = 0;
    let total: usize = groups.values().map(Vec::len).sum();
    for ((job, model), idx) in &groups {
        let what = format!(
            "{} × {} on {}",
            idx.len(),
            job.as_str(),
            hex::encode(&model[..4])
        );
        progress(done, total, &what);
        let checked: Vec<(usize, Result<(), String>)> =
            idx.iter().map(|&i| (i, todo[i].2.check())).collect();
        let runnable: Vec<usize> = checked
            .iter()
            .filter(|(_, c)| c.is_ok())
            .map(|(i, _)| *i)
            .collect();
        for (i, c) in checked {
            if let Err(e) = c {
                outcomes[i] = Some(Err(e));
            }
        }
        let tasks: Vec<&Task> = runnable.iter().map(|&i| &todo[i].2).collect();
        for (i, o) in runnable.iter().zip(run_group(
            &node.home,
            *job,
            model,
            &tasks,
            opts,
            &report.models_failed,
        )) {
            outcomes[*i] = Some(o);
        }
        done += idx.len();
        progress(done, total, &what);
    }
    let mut outs = Vec::new();
    for ((key, task_id, task, pay), outcome) in todo.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|| Err("not run".into()));
        let (output, used, failed) = match outcome {
            Ok((o, u)) => (o, u, None),
            Err(why) => (Vec::new(), Used::default(), Some(why)),
        };
        let r = TaskResult {
            task: *task_id,
            worker: me.clone(),
            output_hash: *blake3::hash(&output).as_bytes(),
            output,
            failed: failed.clone(),
            used,
        };
        report.ran.push(Ran {
            task: *task_id,
            job: task.job,
            ms: used.ms,
            tokens: used.tokens,
            failed,
            pay: pay.clone(),
        });
        let lifetime = task.deadline.saturating_sub(now.0).max(60_000);
        outs.push((Some(market.clone()), m::encode_result(&r), lifetime));
        kv.push((done_key(key), Some(task_id.to_vec())));
        kv.push((task_key(task_id), Some(Vec::new())));
    }
    let c = node.compose(&outs, now, opts.seal)?;
    node.store.commit_ledger(&kv, &c.bundles, &c.private, now)?;
    Ok(report)
}

/// Whether this node (`me`) runs a task for guild `g` paying `reward` on the terms its
/// assignment states (`pay`): it joined the guild, the split is stated, adds up to the
/// reward, and gives this node a part.
fn guild_terms(
    node: &Node,
    me: &str,
    g: &str,
    reward: u64,
    pay: Option<&[m::Share]>,
) -> Result<(), String> {
    if crate::guild::joined(node, g)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("this node has not joined guild {g}"));
    }
    let Some(pay) = pay else {
        return Err("the assignment does not say whom the pay goes to".into());
    };
    let total = pay
        .iter()
        .try_fold(0u64, |t, s| t.checked_add(s.amount))
        .unwrap_or(u64::MAX);
    if total != reward {
        return Err(format!(
            "the stated split pays {total} credits, not the task's reward of {reward}"
        ));
    }
    if !pay.iter().any(|s| s.node == me && s.amount > 0) {
        return Err("the stated split gives this node nothing".into());
    }
    Ok(())
}

/// The marketplace a worker uses, parsed for callers that hold only text.
pub fn parse_market(s: &str) -> Result<Eid, String> {
    let e = Eid::parse(s).map_err(|e| e.to_string())?;
    m::node_id_ok(&e.node_id().to_string())?;
    Ok(e.node_id())
}
