//! The marketplace commands: `task submit|list|result`, `market use|serve|process|grant|
//! reputation`, `wallet [send]`, `worker [offer]`, `guild create|join|list`, and how marketplace
//! payloads are shown by `show` and `inbox`.

use super::net::{parse_node, ServeArgs};
use super::out::{errln, outln};
use super::safe::{self, say};
use super::{print_json, Cli};
use crate::adu::market::{self as m, Eligibility, JobKind, Limits, Task};
use crate::adu::MarketAdu;
use crate::market::{service, Event};
use crate::node::Node;
use crate::time::DtnTime;
use crate::wallet::{self, Direction, Status};
use crate::worker;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

fn short(k: &[u8]) -> String {
    hex::encode(k).chars().take(12).collect()
}

fn parse_hash(s: &str) -> Result<[u8; 32]> {
    let b = hex::decode(s).with_context(|| format!("{s:?} is not hex"))?;
    b.as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{s:?}: a model hash is 64 hex digits (blake3)"))
}

fn duration_ms(s: &str, what: &str) -> Result<u64> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{what} {s:?}: use a duration like 1d, 2h or 30s"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------- task

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

#[derive(Subcommand, Debug)]
pub enum MarketCommand {
    /// Settle with, submit tasks to and work for this marketplace node
    Use { node: String },
    /// Run this node as the marketplace: `serve`, with the marketplace's rules after
    /// every sync and every minute
    Serve {
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// Apply the marketplace's rules once to what the store holds, and print what happened
    Process {
        #[arg(long)]
        no_seal: bool,
    },
    /// Issue new credits to a node (the marketplace is the issuer)
    Grant {
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        no_seal: bool,
    },
    /// Workers' records: from the ledger on the marketplace, else as it published them
    Reputation,
}

fn print_events(cli: &Cli, processed: usize, sent: usize, events: &[Event]) {
    if cli.json {
        print_json(&json!({
            "processed": processed,
            "sent": sent,
            "events": events.iter().map(crate::market::describe).collect::<Vec<_>>(),
        }));
    } else {
        for e in events {
            say!("{}", crate::market::describe(e));
        }
        outln!("{processed} bundles processed, {sent} sent");
    }
}

pub fn market(cli: &Cli, c: &MarketCommand) -> Result<()> {
    match c {
        MarketCommand::Use { node: n } => {
            let node = super::open(cli)?;
            let e = parse_node(n)?;
            node.set_market(&e)?;
            if cli.json {
                print_json(&json!({"market": e.to_string()}));
            } else {
                outln!("this node now settles with marketplace {e}");
            }
            Ok(())
        }
        MarketCommand::Serve { serve } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            drop(node);
            let mut roles = super::net::serve_roles(cli, serve)?;
            roles.market = Some(crate::daemon::MarketRole {
                seal: !serve.no_seal,
            });
            super::net::run_daemon(cli, roles, super::net::serve_printer(cli.json))
        }
        MarketCommand::Process { no_seal } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            let r = service::process(
                &node,
                DtnTime::now(),
                !*no_seal,
                &mut crate::worker::judge(&node.home),
            )?;
            print_events(cli, r.processed, r.sent, &r.events);
            Ok(())
        }
        MarketCommand::Grant {
            to,
            amount,
            no_seal,
        } => {
            let node = super::open(cli)?;
            node.set_market(&node.node_id())?;
            let to = parse_node(to)?.to_string();
            let (id, events) = service::with_engine(&node, DtnTime::now(), !*no_seal, |e| {
                e.grant(&to, *amount, "grant")
            })?;
            if cli.json {
                print_json(&json!({"payment": hex::encode(id), "to": to, "amount": amount}));
            } else {
                for e in &events {
                    say!("{}", crate::market::describe(e));
                }
            }
            Ok(())
        }
        MarketCommand::Reputation => reputation(cli),
    }
}

fn reputation(cli: &Cli) -> Result<()> {
    let node = super::open(cli)?;
    let me = node.node_id();
    let mut rows: Vec<m::Reputation> = Vec::new();
    if node.market()? == Some(me.clone()) {
        rows = service::workers(&node)?
            .into_iter()
            .map(|(_, w)| w.record)
            .collect();
    } else if let Some(mk) = node.market()? {
        // The latest record the marketplace published for each worker.
        let mut latest: std::collections::BTreeMap<String, (u64, u64, m::Reputation)> =
            Default::default();
        for key in node.store.of_kind(m::KIND_REPUTATION)? {
            let Some(vb) = node.store.get(&key)? else {
                continue;
            };
            let p = &vb.bundle().primary;
            if p.source.node_id() != mk {
                continue;
            }
            if let Ok(r) = m::decode_reputation(vb.bundle().payload()) {
                let at = (p.created.time.0, p.created.seq);
                if latest.get(&r.worker).is_none_or(|l| (l.0, l.1) < at) {
                    latest.insert(r.worker.clone(), (at.0, at.1, r));
                }
            }
        }
        rows = latest.into_values().map(|l| l.2).collect();
    }
    if cli.json {
        print_json(&Value::Array(
            rows.iter()
                .map(|r| {
                    json!({"worker": r.worker, "accepted": r.accepted, "disagreed": r.disagreed,
                           "late": r.late, "failed": r.failed, "eligible": r.eligible})
                })
                .collect(),
        ));
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no worker records (set the marketplace with `mycelium market use`)");
    }
    outln!(
        "{:<62}  {:>8}  {:>9}  {:>4}  {:>6}  eligible",
        "worker",
        "accepted",
        "disagreed",
        "late",
        "failed"
    );
    for r in &rows {
        say!(
            "{:<62}  {:>8}  {:>9}  {:>4}  {:>6}  {}",
            r.worker,
            r.accepted,
            r.disagreed,
            r.late,
            r.failed,
            if r.eligible { "yes" } else { "no" }
        );
    }
    Ok(())
}

// -------------------------------------------------------------------------- wallet

#[derive(Args, Debug)]
pub struct WalletArgs {
    #[command(subcommand)]
    pub cmd: Option<WalletCommand>,
}

#[derive(Subcommand, Debug)]
pub enum WalletCommand {
    /// Pay a node: a signed payment to it and to the marketplace's ledger
    Send {
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value = "")]
        memo: String,
        #[arg(long)]
        no_seal: bool,
    },
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Pending => "pending".into(),
        Status::Confirmed => "confirmed".into(),
        Status::Rejected(r) => format!("rejected: {r}"),
    }
}

pub fn wallet_cmd(cli: &Cli, a: &WalletArgs) -> Result<()> {
    let node = super::open(cli)?;
    if let Some(WalletCommand::Send {
        to,
        amount,
        memo,
        no_seal,
    }) = &a.cmd
    {
        let to = parse_node(to)?;
        let id = wallet::send(&node, &to, *amount, memo, DtnTime::now(), !*no_seal)?;
        if cli.json {
            print_json(
                &json!({"payment": hex::encode(id), "to": to.to_string(), "amount": amount, "status": "pending"}),
            );
        } else {
            outln!(
                "payment {} of {amount} credits to {to}: pending until the marketplace settles it",
                short(&id)
            );
        }
        return Ok(());
    }
    let w = wallet::view(&node)?;
    if cli.json {
        print_json(&json!({
            "node": node.node_id().to_string(),
            "market": node.market()?.map(|e| e.to_string()),
            "balance": w.balance.to_string().parse::<i64>().ok(),
            "spendable": w.spendable.to_string().parse::<i64>().ok(),
            "pending_in": w.pending_in,
            "pending_out": w.pending_out,
            "entries": w.entries.iter().map(|e| json!({
                "id": hex::encode(e.id),
                "direction": if e.direction == Direction::In { "in" } else { "out" },
                "what": if e.what == m::Subject::Escrow { "escrow" } else { "payment" },
                "counterparty": e.counterparty,
                "amount": e.amount,
                "status": status_text(&e.status),
                "memo": e.memo,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    outln!(
        "balance {} credits, spendable {} ({} pending in, {} pending out)",
        w.balance,
        w.spendable,
        w.pending_in,
        w.pending_out
    );
    for e in &w.entries {
        say!(
            "  {} {:>3} {:>8}  {:<9} {}  {}",
            short(&e.id),
            if e.direction == Direction::In {
                "in"
            } else {
                "out"
            },
            e.amount,
            status_text(&e.status),
            e.counterparty,
            e.memo
        );
    }
    Ok(())
}

// -------------------------------------------------------------------------- worker

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    pub cmd: Option<WorkerCommand>,
    /// Answer what is assigned now, then exit
    #[arg(long)]
    pub once: bool,
    /// Most texts embedded at once (on a GPU, also bounded by free memory)
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Run the engines on a GPU (needs a build with `--features cuda`; falls back to the
    /// CPU with the reason when none can be used)
    #[arg(long)]
    pub gpu: bool,
    /// Send results in clear instead of sealed
    #[arg(long)]
    pub no_seal: bool,
}

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// What compute devices this node sees (GPUs through the CUDA driver, and the CPU)
    Devices,
    /// Tell the marketplace what this node runs (default: digest, and every job the
    /// models it holds can run)
    Offer {
        /// Job kinds, comma-separated
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Model hashes to offer (default: every model held)
        #[arg(long = "model")]
        models: Vec<String>,
        /// Most tasks at once
        #[arg(long, default_value_t = 4)]
        capacity: u32,
        #[arg(long)]
        no_seal: bool,
    },
}

pub fn worker_cmd(cli: &Cli, a: &WorkerArgs) -> Result<()> {
    if let Some(WorkerCommand::Devices) = &a.cmd {
        return devices(cli);
    }
    if a.cmd.is_none() && !a.once {
        // The worker role of the daemon, alone: runs what is assigned as it is stored.
        let roles = crate::daemon::Roles {
            worker: Some(crate::daemon::WorkerRole {
                seal: !a.no_seal,
                max_batch: a.max_batch.max(1),
                gpu: a.gpu,
            }),
            ..Default::default()
        };
        let json = cli.json;
        return super::net::run_daemon(cli, roles, move |e| match e {
            crate::daemon::Event::Ran { .. } if json => {
                outln!("{}", serde_json::to_string(e).unwrap_or_default())
            }
            crate::daemon::Event::Ran {
                task,
                kind,
                ms,
                failed: None,
            } => say!("ran {kind} task {} in {ms} ms", &task[..12.min(task.len())]),
            crate::daemon::Event::Ran {
                task,
                failed: Some(w),
                ..
            } => say!("task {} failed: {w}", &task[..12.min(task.len())]),
            _ => {}
        });
    }
    let node = super::open(cli)?;
    if let Some(WorkerCommand::Offer {
        kinds,
        models,
        capacity,
        no_seal,
    }) = &a.cmd
    {
        let held = worker::models::list(&node.home)?;
        let mut kinds = kinds
            .iter()
            .map(|k| JobKind::parse(k).with_context(|| format!("unknown job kind {k:?}")))
            .collect::<Result<Vec<_>>>()?;
        if kinds.is_empty() {
            kinds.push(JobKind::Digest);
            for h in &held {
                let k = match h.format {
                    worker::models::Format::Bert => JobKind::Embed,
                    worker::models::Format::Gguf => JobKind::Generate,
                };
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        let mut models = models
            .iter()
            .map(|h| parse_hash(h).map(|b| serde_bytes::ByteBuf::from(b.to_vec())))
            .collect::<Result<Vec<_>>>()?;
        if models.is_empty() {
            models = held
                .iter()
                .map(|h| serde_bytes::ByteBuf::from(h.hash.to_vec()))
                .collect();
        }
        let offer = m::Offer {
            kinds,
            models,
            capacity: *capacity,
        };
        offer.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = worker::offer(&node, &offer, DtnTime::now(), !*no_seal)?;
        if cli.json {
            print_json(&json!({"offer": hex::encode(key)}));
        } else {
            outln!("offer {} stored for the marketplace", short(&key));
        }
        return Ok(());
    }
    let opts = worker::RunOptions {
        seal: !a.no_seal,
        max_batch: a.max_batch.max(1),
        gpu: a.gpu,
    };
    if a.gpu {
        let (device, why) = worker::devices::pick(true);
        match why {
            Some(w) => errln!("worker: {w}"),
            None => errln!("worker: running on {device:?}"),
        }
    }
    {
        let started = std::time::Instant::now();
        let pb = if !super::out::interactive(cli.json) {
            indicatif::ProgressBar::hidden()
        } else {
            let pb = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "worker [{bar:30}] {pos}/{len} tasks {elapsed} {msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        };
        let r = worker::run_progress(&node, DtnTime::now(), &opts, &mut |done, total, what| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            pb.set_message(what.to_string());
        })?;
        pb.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        if cli.json {
            print_json(&json!({
                "ran": r.ran.iter().map(|x| json!({"task": hex::encode(x.task), "kind": x.job.as_str(),
                    "ms": x.ms, "failed": x.failed, "pay": x.pay.as_ref().map(|p| p.iter()
                    .map(|s| json!({"node": s.node, "amount": s.amount})).collect::<Vec<_>>())})).collect::<Vec<_>>(),
                "skipped": r.skipped.iter().map(|(k, w)| json!({"assignment": k, "why": w})).collect::<Vec<_>>(),
            }));
        } else {
            let me = node.node_id().to_string();
            for x in &r.ran {
                let pay = x.pay.as_ref().map_or(String::new(), |p| {
                    let parts: Vec<String> = p
                        .iter()
                        .map(|s| {
                            let who = if s.node == me { "this node" } else { &s.node };
                            format!("{} to {who}", s.amount)
                        })
                        .collect();
                    format!(" (guild pay: {})", parts.join(", "))
                });
                match &x.failed {
                    None => say!(
                        "ran {} task {} in {} ms{pay}",
                        x.job.as_str(),
                        short(&x.task),
                        x.ms
                    ),
                    Some(w) => say!("task {} failed: {w}{pay}", short(&x.task)),
                }
            }
            for (k, w) in &r.skipped {
                say!("assignment {k} skipped: {w}");
            }
            for f in &r.models_failed {
                say!(
                    "model {} ({}) from {} failed to assemble: {}",
                    f.hash.map_or_else(|| "?".into(), hex::encode),
                    f.name,
                    f.signer,
                    f.reason
                );
            }
            if !r.ran.is_empty() {
                let done = |job: JobKind| -> u64 {
                    r.ran
                        .iter()
                        .filter(|x| x.job == job && x.failed.is_none())
                        .map(|x| x.tokens)
                        .sum()
                };
                let (gen, texts) = (done(JobKind::Generate), done(JobKind::Embed));
                outln!(
                    "{} tasks in {secs:.2} s ({:.1} tasks/s; {texts} texts embedded, {gen} tokens generated, {:.1} tokens/s)",
                    r.ran.len(),
                    r.ran.len() as f64 / secs.max(1e-9),
                    gen as f64 / secs.max(1e-9)
                );
            }
        }
    }
    Ok(())
}

fn devices(cli: &Cli) -> Result<()> {
    let gpus = worker::devices::gpus();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cli.json {
        print_json(&json!({
            "cuda_feature": cfg!(feature = "cuda"),
            "gpus": match &gpus {
                Ok(g) => json!(g.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name,
                    "total_bytes": d.total_bytes, "free_bytes": d.free_bytes,
                    "compute_capability": [d.compute_capability.0, d.compute_capability.1]})).collect::<Vec<_>>()),
                Err(_) => json!([]),
            },
            "gpu_error": gpus.as_ref().err(),
            "cpu_threads": cpus,
        }));
        return Ok(());
    }
    match &gpus {
        Ok(g) if g.is_empty() => outln!("GPU: the CUDA driver reports none"),
        Ok(g) => {
            for d in g {
                outln!(
                    "GPU {}: {} (compute {}.{}), {:.1} GiB free of {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.free_bytes as f64 / (1u64 << 30) as f64,
                    d.total_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(e) => outln!("GPU: {e}"),
    }
    outln!("CPU: {cpus} threads");
    if !cfg!(feature = "cuda") {
        outln!("(this build runs engines on the CPU only; build with --features cuda for GPUs)");
    }
    Ok(())
}

// --------------------------------------------------------------------------- guild

#[derive(Subcommand, Debug)]
pub enum GuildCommand {
    /// Found a guild: sign its charter (members and shares) for the marketplace, with a
    /// copy to each member; a member gets a share only after it joins
    Create {
        #[arg(long)]
        name: String,
        /// A member as NODE or NODE=SHARE (default share 1); this node is always one
        #[arg(long = "member")]
        members: Vec<String>,
        #[arg(long)]
        no_seal: bool,
    },
    /// Consent to a guild's charter (its members and shares, shown): only then does the
    /// marketplace give this node the guild's tasks or split pay to or away from it
    Join {
        /// The guild ID (guild:...)
        guild: String,
        /// The charter's hash, when its founder signed more than one
        #[arg(long)]
        charter: Option<String>,
        #[arg(long)]
        no_seal: bool,
    },
    /// Charters in the store that list this node, and whether it joined them
    List,
}

fn charter_json(c: &crate::guild::Charter) -> Value {
    json!({"guild": c.id, "name": c.guild.name, "founder": c.founder,
        "charter": hex::encode(c.hash), "joined": c.joined,
        "members": c.guild.members.iter().map(|x| json!({"node": x.node, "share": x.share}))
            .collect::<Vec<_>>()})
}

fn print_charter(c: &crate::guild::Charter) {
    let total: u64 = c.guild.members.iter().map(|x| u64::from(x.share)).sum();
    say!(
        "{} {:?} founded by {}{}",
        c.id,
        c.guild.name,
        c.founder,
        if c.joined { " (joined)" } else { "" }
    );
    for x in &c.guild.members {
        say!("  {} share {} of {total}", x.node, x.share);
    }
}

pub fn guild(cli: &Cli, c: &GuildCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        GuildCommand::Create {
            name,
            members,
            no_seal,
        } => {
            let mut list = Vec::new();
            for mem in members {
                let (n, share) = match mem.rsplit_once('=') {
                    Some((n, s)) => (
                        n,
                        s.parse::<u32>()
                            .with_context(|| format!("share in {mem:?}"))?,
                    ),
                    None => (mem.as_str(), 1),
                };
                list.push(m::Member {
                    node: parse_node(n)?.to_string(),
                    share,
                });
            }
            let n = list.len();
            let id = crate::guild::create(&node, name, list, DtnTime::now(), !*no_seal)?;
            if cli.json {
                print_json(&json!({"guild": id, "members": n.max(1)}));
            } else {
                outln!("{id}");
                errln!("each member gets a share only after it runs `mycelium guild join {id}`");
            }
        }
        GuildCommand::Join {
            guild,
            charter,
            no_seal,
        } => {
            let hash = charter.as_deref().map(parse_hash).transpose()?;
            let c = crate::guild::join(&node, guild, hash, DtnTime::now(), !*no_seal)?;
            if cli.json {
                print_json(&charter_json(&c));
            } else {
                print_charter(&c);
                outln!("joined: the consent goes to the marketplace with the next contact");
            }
        }
        GuildCommand::List => {
            let all = crate::guild::charters(&node)?;
            if cli.json {
                print_json(&json!(all.iter().map(charter_json).collect::<Vec<_>>()));
            } else if all.is_empty() {
                outln!("no charters list this node");
            } else {
                for c in &all {
                    print_charter(c);
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ show and inbox

pub fn adu_json(a: &MarketAdu) -> Value {
    match a {
        MarketAdu::Task(t) => {
            json!({"kind": "task", "job": t.job.as_str(), "model": hex::encode(t.model),
            "input_bytes": t.input.len(), "reward": t.reward, "redundancy": t.redundancy,
            "deadline": DtnTime(t.deadline).to_rfc3339()})
        }
        MarketAdu::Result(r) => {
            json!({"kind": "result", "task": hex::encode(r.task), "worker": r.worker,
            "output_hash": hex::encode(r.output_hash), "failed": r.failed})
        }
        MarketAdu::Payment(p) => json!({"kind": "payment", "payer": p.payer, "payee": p.payee,
            "amount": p.amount, "memo": p.memo}),
        MarketAdu::Settlement(s) => json!({"kind": "settlement", "subject": hex::encode(s.subject),
            "accepted": s.accepted, "amount": s.amount, "reason": s.reason}),
        MarketAdu::Offer(o) => {
            json!({"kind": "offer", "kinds": o.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "models": o.models.len(), "capacity": o.capacity})
        }
        MarketAdu::Assignment(a) => {
            json!({"kind": "assignment", "task_bytes": a.task_bundle.len()})
        }
        MarketAdu::Verdict(v) => {
            json!({"kind": "verdict", "task": hex::encode(v.task), "accepted": v.accepted,
            "agreeing": v.agreeing.len(), "reason": v.reason})
        }
        MarketAdu::Reputation(r) => {
            json!({"kind": "reputation", "worker": r.worker, "accepted": r.accepted,
            "disagreed": r.disagreed, "late": r.late, "eligible": r.eligible})
        }
        MarketAdu::Guild(g) => json!({"kind": "guild", "name": g.name, "members": g.members.len()}),
        MarketAdu::Membership(mb) => json!({"kind": "membership", "guild": mb.guild,
            "charter": hex::encode(mb.charter)}),
    }
}

/// One line about a marketplace ADU, raw: `messages::adu_text` escapes it.
pub fn adu_text(a: &MarketAdu) -> String {
    match a {
        MarketAdu::Task(t) => format!(
            "[task: {} for {} credits × {}]",
            t.job.as_str(),
            t.reward,
            t.redundancy
        ),
        MarketAdu::Result(r) => format!("[result for task {}]", short(&r.task)),
        MarketAdu::Payment(p) => format!(
            "[payment: {} credits from {} ({})]",
            p.amount, p.payer, p.memo
        ),
        MarketAdu::Settlement(s) => format!(
            "[settlement of {}: {}]",
            short(&s.subject),
            if s.accepted {
                "confirmed".to_string()
            } else {
                format!("rejected: {}", s.reason.clone().unwrap_or_default())
            }
        ),
        MarketAdu::Offer(o) => format!("[offer: capacity {}]", o.capacity),
        MarketAdu::Assignment(_) => "[assignment: a task to run]".into(),
        MarketAdu::Verdict(v) => format!(
            "[verdict on task {}: {}]",
            short(&v.task),
            if v.accepted { "accepted" } else { "failed" }
        ),
        MarketAdu::Reputation(r) => format!(
            "[record of {}: {} accepted, {} disagreed, {} late]",
            r.worker, r.accepted, r.disagreed, r.late
        ),
        MarketAdu::Guild(g) => format!("[guild charter {:?}: {} members]", g.name, g.members.len()),
        MarketAdu::Membership(mb) => format!("[membership of guild {}]", mb.guild),
    }
}
