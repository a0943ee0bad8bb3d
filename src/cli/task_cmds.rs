//! `task submit`, `task list`, `task result`: inference tasks as their submitter sees them.

use super::market_cmds::{duration_ms, parse_hash, short};
use super::net::parse_node;
use super::out::{errln, outln};
use super::safe::{self, say};
use super::wallet_cmds::status_text;
use super::{print_json, Cli};
use crate::adu::market::{self as m, Eligibility, JobKind, Limits, Task};
use crate::node::Node;
use crate::time::DtnTime;
use crate::wallet::{self};
use crate::worker;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Sign a task for the marketplace, with its reward held in escrow there
    Submit(SubmitArgs),
    /// Tasks this node submitted, with their escrow and verdict
    List,
    /// The accepted output of a task (any unique prefix of its id)
    Result { id: String },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Job kind: embed, generate or digest
    #[arg(long)]
    pub kind: String,
    /// blake3 hash of the model (64 hex digits); not needed for digest
    #[arg(long)]
    pub model: Option<String>,
    /// Input file (for embed: one text per line)
    #[arg(long)]
    pub input: PathBuf,
    /// Credits paid to each worker whose result is accepted
    #[arg(long, default_value_t = 10)]
    pub reward: u64,
    /// Independent workers to run it; a majority must agree
    #[arg(long, default_value_t = 3)]
    pub redundancy: u8,
    /// Time allowed for results, e.g. 1d
    #[arg(long, default_value = "2d")]
    pub deadline: String,
    /// Only this worker may take it
    #[arg(long, conflicts_with = "guild")]
    pub worker: Option<String>,
    /// Only members of this guild may take it (payments split by its shares)
    #[arg(long)]
    pub guild: Option<String>,
    /// Most tokens to generate
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Most time a worker may spend on it
    #[arg(long, default_value = "10m")]
    pub max_time: String,
    /// Send in clear instead of sealed for the marketplace
    #[arg(long)]
    pub no_seal: bool,
}

pub fn task(cli: &Cli, c: &TaskCommand) -> Result<()> {
    match c {
        TaskCommand::Submit(a) => submit(cli, a),
        TaskCommand::List => task_list(cli),
        TaskCommand::Result { id } => task_result(cli, id),
    }
}

fn submit(cli: &Cli, a: &SubmitArgs) -> Result<()> {
    let node = super::open(cli)?;
    let market = node
        .market()?
        .context("no marketplace set: `mycelium market use NODE` first")?;
    let job = JobKind::parse(&a.kind)
        .with_context(|| format!("--kind {:?}: use embed, generate or digest", a.kind))?;
    let model = match (&a.model, job) {
        (Some(h), _) => parse_hash(h)?,
        (None, JobKind::Digest) => [0; 32],
        (None, _) => bail!("--model HASH is required for {} tasks", job.as_str()),
    };
    let len = std::fs::metadata(&a.input)
        .with_context(|| format!("cannot read {}", a.input.display()))?
        .len();
    if len > m::MAX_IO as u64 {
        bail!(
            "{} is {len} bytes; a task carries at most {} bytes",
            a.input.display(),
            m::MAX_IO
        );
    }
    let input =
        std::fs::read(&a.input).with_context(|| format!("cannot read {}", a.input.display()))?;
    let now = DtnTime::now();
    let who = match (&a.worker, &a.guild) {
        (Some(w), _) => Eligibility::Worker(parse_node(w)?.to_string()),
        (None, Some(g)) => Eligibility::Guild(g.clone()),
        (None, None) => Eligibility::Anyone,
    };
    let deadline_ms = duration_ms(&a.deadline, "--deadline")?;
    let t = Task {
        job,
        model,
        input,
        limits: Limits {
            max_tokens: a.max_tokens,
            max_ms: duration_ms(&a.max_time, "--max-time")?,
        },
        reward: a.reward,
        deadline: now.0.saturating_add(deadline_ms),
        redundancy: a.redundancy,
        who,
    };
    let escrow = t.escrow().unwrap_or(0);
    let id = wallet::submit_task(&node, &t, now, !a.no_seal)?;
    let sealed = node.store.private_keys()?.contains(&id);
    if cli.json {
        print_json(&json!({
            "task": hex::encode(id),
            "market": market.to_string(),
            "escrow": escrow,
            "sealed": sealed,
        }));
    } else {
        outln!("{}", hex::encode(id));
        errln!(
            "task for {market}: {} credits held in escrow once it arrives; {}",
            escrow,
            if sealed {
                "sealed for travel"
            } else {
                "in clear"
            }
        );
    }
    Ok(())
}

/// The verdicts this node holds from its marketplace, by task ID.
fn verdicts(node: &Node) -> Result<std::collections::HashMap<[u8; 32], m::Verdict>> {
    let market = node.market()?.map(|e| e.to_string());
    let mut out = std::collections::HashMap::new();
    for key in node.store.of_kind(m::KIND_VERDICT)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        if Some(vb.bundle().primary.source.node_id().to_string()) != market {
            continue;
        }
        if let Ok(v) = m::decode_verdict(vb.bundle().payload()) {
            out.insert(v.task, v);
        }
    }
    Ok(out)
}

fn my_tasks(node: &Node) -> Result<Vec<([u8; 32], Task, u64)>> {
    Ok(wallet::submitted(node)?)
}

fn verdict_status(v: Option<&m::Verdict>) -> String {
    match v {
        None => "waiting".into(),
        Some(v) if v.accepted => format!("accepted ({} agreeing)", v.agreeing.len()),
        Some(v) => format!("failed: {}", v.reason.clone().unwrap_or_default()),
    }
}

fn task_list(cli: &Cli) -> Result<()> {
    let node = super::open(cli)?;
    let verdicts = verdicts(&node)?;
    let w = wallet::view(&node)?;
    let escrow = |k: &[u8; 32]| {
        w.entries
            .iter()
            .find(|e| e.id == *k && e.what == m::Subject::Escrow)
            .map(|e| status_text(&e.status))
            .unwrap_or_else(|| "pending".into())
    };
    let tasks = my_tasks(&node)?;
    if cli.json {
        print_json(&Value::Array(
            tasks
                .iter()
                .map(|(k, t, c)| {
                    json!({"task": hex::encode(k), "kind": t.job.as_str(), "reward": t.reward,
                           "redundancy": t.redundancy, "created": DtnTime(*c).to_rfc3339(),
                           "escrow": escrow(k), "verdict": verdict_status(verdicts.get(k))})
                })
                .collect(),
        ));
        return Ok(());
    }
    if tasks.is_empty() {
        outln!("no tasks submitted from this node");
    }
    for (k, t, _) in &tasks {
        say!(
            "{}  {:<8}  reward {} × {}  escrow {}  {}",
            short(k),
            t.job.as_str(),
            t.reward,
            t.redundancy,
            escrow(k),
            verdict_status(verdicts.get(k))
        );
    }
    Ok(())
}

/// Output as JSON: embeddings as arrays of numbers, a generation as its text and tokens,
/// anything else as hex.
fn output_json(job: JobKind, out: &[u8]) -> Value {
    match job {
        JobKind::Embed => match worker::decode_vectors(out) {
            Ok(v) => {
                json!({"vectors": v, "count": v.len(), "dim": v.first().map_or(0, |x| x.len())})
            }
            Err(e) => json!({"hex": hex::encode(out), "error": e}),
        },
        JobKind::Generate => match worker::decode_generation(out) {
            Ok(g) => json!({"text": g.text, "tokens": g.tokens}),
            Err(e) => json!({"hex": hex::encode(out), "error": e}),
        },
        JobKind::Digest => json!({"hex": hex::encode(out), "bytes": out.len()}),
    }
}

fn task_result(cli: &Cli, id: &str) -> Result<()> {
    let node = super::open(cli)?;
    let id = id.to_ascii_lowercase();
    let matches: Vec<_> = my_tasks(&node)?
        .into_iter()
        .filter(|(k, _, _)| hex::encode(k).starts_with(&id))
        .collect();
    let (key, t, _) = match matches.len() {
        0 => bail!("no task of this node matches {id:?}: `mycelium task list` shows them"),
        1 => &matches[0],
        n => bail!("{id:?} matches {n} tasks: give more hex digits"),
    };
    let verdicts = verdicts(&node)?;
    let v = verdicts.get(key);
    if cli.json {
        print_json(&json!({
            "task": hex::encode(key),
            "kind": t.job.as_str(),
            "status": match v { None => "waiting", Some(v) if v.accepted => "accepted", Some(_) => "failed" },
            "output": v.filter(|v| v.accepted).map(|v| output_json(t.job, &v.output)),
            "output_hash": v.filter(|v| v.accepted).map(|v| hex::encode(v.output_hash)),
            "agreeing": v.map(|v| v.agreeing.clone()),
            "results": v.map(|v| v.results),
            "reason": v.and_then(|v| v.reason.clone()),
        }));
        return Ok(());
    }
    match v {
        None => bail!(
            "no verdict for task {} has reached this node yet",
            short(key)
        ),
        Some(v) if !v.accepted => bail!(
            "task {} failed: {}",
            short(key),
            v.reason.clone().unwrap_or_default()
        ),
        Some(v) => {
            match t.job {
                JobKind::Embed => match worker::decode_vectors(&v.output) {
                    Ok(vs) => {
                        for x in &vs {
                            let head: Vec<String> =
                                x.iter().take(4).map(|f| format!("{f:.4}")).collect();
                            outln!("[{}, … {} numbers]", head.join(", "), x.len());
                        }
                    }
                    Err(e) => say!("{e}"),
                },
                JobKind::Generate => match worker::decode_generation(&v.output) {
                    // The workers' text, shown as lines (`--json` has it exact).
                    Ok(g) => outln!("{}", safe::block(&g.text, "")),
                    Err(e) => say!("{e}"),
                },
                JobKind::Digest => outln!("{}", hex::encode(&v.output)),
            }
            errln!(
                "accepted: {} of {} workers agreed on blake3 {}",
                v.agreeing.len(),
                v.results,
                short(&v.output_hash)
            );
        }
    }
    Ok(())
}

// -------------------------------------------------------------------------- market
