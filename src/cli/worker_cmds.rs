//! `worker`: run assigned tasks (once, or as the daemon's worker role), `worker offer`,
//! `worker devices`.

use super::market_cmds::{parse_hash, short};
use super::out::{errln, outln};
use super::safe::say;
use super::{print_json, Cli};
use crate::adu::market::{self as m, JobKind};
use crate::time::DtnTime;
use crate::worker;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

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
