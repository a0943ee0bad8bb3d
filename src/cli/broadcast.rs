//! `broadcast publish`, `broadcast ingest [--watch]` and `trust`.

use super::sneakernet::{parse_bytes, print_problems, progress};
use super::{home, print_json, Cli};
use crate::bundle::Eid;
use crate::node::Node;
use crate::time::DtnTime;
use crate::transport::broadcast::{self, IngestOptions, IngestReport, PublishOptions, SeenFiles};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BroadcastCommand {
    /// Write the feed for a one-way broadcast channel into OUT_DIR
    Publish(PublishArgs),
    /// Read a recorded feed folder: rebuild, verify and store what it carries
    Ingest(IngestArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    pub out_dir: PathBuf,
    /// Repair symbols in the first pass, as a fraction of the data (0.3 = 30%)
    #[arg(long, default_value_t = 0.3)]
    pub overhead: f64,
    /// Largest feed file
    #[arg(long, default_value = "1MiB")]
    pub file_size: String,
    /// Carousel passes; each later pass carries fresh repair symbols
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
    /// Only bundles created within this long, e.g. 2d
    #[arg(long)]
    pub since: Option<String>,
    /// Symbol size (a multiple of 8)
    #[arg(long, default_value = "1KiB")]
    pub symbol_size: String,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    pub dir: PathBuf,
    /// Keep going as new files appear, until interrupted
    #[arg(long)]
    pub watch: bool,
    /// Accept feeds and bundles signed by any valid key, not only trusted ones
    #[arg(long)]
    pub any_signer: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Trust a node (for now: its broadcast feeds and the bundles it signs in them)
    Add {
        node_id: String,
        #[arg(long)]
        broadcast: bool,
    },
    /// Stop trusting a node
    Remove { node_id: String },
    /// List trusted nodes
    List,
}

pub fn run(cli: &Cli, c: &BroadcastCommand) -> Result<()> {
    match c {
        BroadcastCommand::Publish(a) => publish(cli, a),
        BroadcastCommand::Ingest(a) => ingest(cli, a),
    }
}

fn publish(cli: &Cli, a: &PublishArgs) -> Result<()> {
    let now = DtnTime::now();
    let mut opts = PublishOptions::new(now);
    opts.overhead = a.overhead;
    opts.passes = a.passes;
    opts.file_size = parse_bytes(&a.file_size)? as usize;
    opts.symbol_size =
        u16::try_from(parse_bytes(&a.symbol_size)?).context("--symbol-size must be below 64KiB")?;
    if let Some(s) = &a.since {
        let d =
            humantime::parse_duration(s).with_context(|| format!("--since {s:?}: use e.g. 2d"))?;
        opts.since = Some(DtnTime(now.0.saturating_sub(d.as_millis() as u64)));
    }
    let node = Node::open(&home(cli))?;
    node.store.purge_expired(now)?;
    let pb = progress(cli, "publish");
    let r = broadcast::publish(&node, &a.out_dir, &opts, &pb)?;
    pb.finish_and_clear();
    if cli.json {
        print_json(
            &json!({"bundles": r.bundles, "segments": r.segments, "files": r.files,
                           "bytes": r.bytes, "feed": r.feed_id, "passes": opts.passes}),
        );
    } else {
        println!(
            "published feed {} to {}: {} bundles in {} segments, {} files ({} bytes), {} pass(es), {:.0}% overhead",
            r.feed_id,
            a.out_dir.display(),
            r.bundles,
            r.segments,
            r.files,
            r.bytes,
            opts.passes,
            opts.overhead * 100.0
        );
    }
    Ok(())
}

fn summary(r: &IngestReport, partial: usize) -> serde_json::Value {
    json!({
        "files_read": r.files_read, "files_already_consumed": r.files_already_consumed,
        "files_incomplete": r.files_incomplete, "bytes": r.bytes, "symbols": r.symbols,
        "segments_completed": r.segments_completed, "segments_partial": partial,
        "new": r.new, "duplicate": r.duplicate, "untrusted_bundles": r.untrusted_bundles,
        "loss_estimate": r.loss_estimate(),
        "partial_evicted": r.partial_evicted, "sealed_evicted": r.sealed_evicted,
        "problems_total": r.problems.total(),
        "problems": r.problems.iter().map(|p| json!({"file": p.file, "reason": p.reason})).collect::<Vec<_>>(),
        "stored": r.stored.iter().map(hex::encode).collect::<Vec<_>>(),
        "peak_memory_kib": super::peak_rss_kib(),
    })
}

fn print_human(r: &IngestReport, partial: usize, dir: &Path) {
    println!("ingest from {}", dir.display());
    println!(
        "  files read           {:>8} ({} already consumed, {} still being written)",
        r.files_read, r.files_already_consumed, r.files_incomplete
    );
    println!(
        "  symbols              {:>8} ({} bytes)",
        r.symbols, r.bytes
    );
    println!(
        "  segments complete    {:>8} ({} partial, kept for later)",
        r.segments_completed, partial
    );
    println!(
        "  bundles new          {:>8} ({} duplicate, {} from untrusted signers ignored)",
        r.new, r.duplicate, r.untrusted_bundles
    );
    println!("  loss estimate        {:>7.1}%", r.loss_estimate() * 100.0);
    print_problems(
        r.problems
            .iter()
            .map(|p| (p.file.as_str(), p.reason.as_str())),
        r.problems.total(),
    );
}

fn ingest(cli: &Cli, a: &IngestArgs) -> Result<()> {
    let node = Node::open(&home(cli))?;
    if !a.dir.is_dir() {
        bail!("{} is not a folder", a.dir.display());
    }
    let mut seen = SeenFiles::default();
    let run = |seen: &mut SeenFiles, pb: &ProgressBar| -> Result<(IngestReport, usize)> {
        let opts = IngestOptions {
            any_signer: a.any_signer,
            now: DtnTime::now(),
        };
        let r = broadcast::ingest_with(&node, &a.dir, &opts, pb, seen)?;
        Ok((r, node.store.partial_summary()?.objects))
    };
    if !a.watch {
        let pb = progress(cli, "ingest");
        let (r, partial) = run(&mut seen, &pb)?;
        pb.finish_and_clear();
        if cli.json {
            print_json(&summary(&r, partial));
        } else {
            print_human(&r, partial, &a.dir);
        }
        return Ok(());
    }
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .context("cannot watch the folder")?;
    watcher
        .watch(&a.dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", a.dir.display()))?;
    let status = progress(cli, "watching");
    let (mut complete, mut new, mut bytes) = (0usize, 0usize, 0u64);
    loop {
        let (r, partial) = run(&mut seen, &ProgressBar::hidden())?;
        complete += r.segments_completed;
        new += r.new;
        bytes += r.bytes;
        if cli.json {
            let mut v = summary(&r, partial);
            v["total_new"] = json!(new);
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
        } else if status.is_hidden() {
            if r.files_read > 0 {
                println!(
                    "segments complete {complete}, partial {partial}, bundles new {new}, {bytes} bytes, loss ~{:.0}%",
                    r.loss_estimate() * 100.0
                );
            }
        } else {
            status.set_message(format!(
                "watching {}: segments complete {complete}, partial {partial}, bundles new {new}, {} read, loss ~{:.0}%",
                a.dir.display(),
                indicatif::BinaryBytes(bytes),
                r.loss_estimate() * 100.0
            ));
            status.tick();
        }
        // Wait for the next change in the folder (blocks; Ctrl-C ends the watch).
        match rx.recv() {
            Ok(_) => while rx.try_recv().is_ok() {},
            Err(_) => break,
        }
    }
    Ok(())
}

pub fn trust(cli: &Cli, c: &TrustCommand) -> Result<()> {
    let node = Node::open(&home(cli))?;
    match c {
        TrustCommand::Add { node_id, broadcast } => {
            let eid = Eid::parse(node_id).context("NODE_ID")?;
            crate::identity::key_for_node_id(&eid)?;
            if !broadcast {
                bail!("say what to trust the node for: --broadcast (the only use so far)");
            }
            node.store.set_trust(&eid.node_id().to_string(), true)?;
            if !cli.json {
                println!("trusting {} for broadcast feeds", eid.node_id());
            }
        }
        TrustCommand::Remove { node_id } => {
            let eid = Eid::parse(node_id).context("NODE_ID")?;
            if !node.store.remove_trust(&eid.node_id().to_string())? {
                bail!("{node_id} was not trusted");
            }
        }
        TrustCommand::List => {
            let l = node.store.trust_list()?;
            if cli.json {
                print_json(&json!(l
                    .iter()
                    .map(|(n, b)| json!({"node_id": n, "broadcast": b}))
                    .collect::<Vec<_>>()));
            } else {
                for (n, b) in l {
                    println!("{n}{}", if b { "  broadcast" } else { "" });
                }
            }
        }
    }
    Ok(())
}
