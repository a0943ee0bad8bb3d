//! `broadcast publish`, `broadcast ingest [--watch]` and `trust`.

use super::out::outln;
use super::sneakernet::{parse_bytes, print_problems, progress};
use super::{print_json, Cli};
use crate::bundle::Eid;
use crate::store::{TRUST_BROADCAST, TRUST_RELEASE};
use crate::time::DtnTime;
use crate::transport::broadcast::{self, IngestOptions, IngestReport, PublishOptions, SeenFiles};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
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
    /// Trust a node: for its broadcast feeds and the bundles it signs in them
    /// (--broadcast), for the releases of Mycelium it signs (--release), or both
    Add {
        node_id: String,
        #[arg(long)]
        broadcast: bool,
        /// Install the releases it signs (`mycelium update`)
        #[arg(long)]
        release: bool,
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
    let node = super::open(cli)?;
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
        outln!(
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
    let mut v = r.to_json(partial);
    v["peak_memory_kib"] = json!(super::peak_rss_kib());
    v
}

fn print_human(r: &IngestReport, partial: usize, dir: &Path) {
    outln!("ingest from {}", dir.display());
    outln!(
        "  files read           {:>8} ({} already consumed, {} still being written)",
        r.files_read,
        r.files_already_consumed,
        r.files_incomplete
    );
    outln!(
        "  symbols              {:>8} ({} bytes)",
        r.symbols,
        r.bytes
    );
    outln!(
        "  segments complete    {:>8} ({} partial, kept for later)",
        r.segments_completed,
        partial
    );
    outln!(
        "  bundles new          {:>8} ({} duplicate, {} from untrusted signers ignored)",
        r.new,
        r.duplicate,
        r.untrusted_bundles
    );
    outln!("  loss estimate        {:>7.1}%", r.loss_estimate() * 100.0);
    print_problems(
        r.problems
            .iter()
            .map(|p| (p.file.as_str(), p.reason.as_str())),
        r.problems.total(),
    );
}

fn ingest(cli: &Cli, a: &IngestArgs) -> Result<()> {
    // Relative to the caller: the daemon made it absolute before the command ran.
    let dir = a.dir.clone();
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if a.watch {
        // The daemon's feed watch, alone: a pass at start and whenever the folder changes.
        let roles = crate::daemon::Roles {
            feeds: vec![dir.clone()],
            feed_any_signer: a.any_signer,
            ..Default::default()
        };
        let json = cli.json;
        let status = progress(cli, "watching");
        let (mut complete, mut bytes) = (0usize, 0u64);
        return super::net::run_daemon(cli, roles, move |e| {
            let crate::daemon::Event::Feed {
                dir,
                total_new,
                summary,
            } = e
            else {
                return;
            };
            complete += summary["segments_completed"].as_u64().unwrap_or(0) as usize;
            bytes += summary["bytes"].as_u64().unwrap_or(0);
            let partial = summary["segments_partial"].as_u64().unwrap_or(0);
            let loss = summary["loss_estimate"].as_f64().unwrap_or(0.0) * 100.0;
            if json {
                let mut v = summary.clone();
                v["peak_memory_kib"] = json!(super::peak_rss_kib());
                outln!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else if status.is_hidden() {
                if summary["files_read"].as_u64().unwrap_or(0) > 0 {
                    outln!(
                        "segments complete {complete}, partial {partial}, bundles new {total_new}, {bytes} bytes, loss ~{loss:.0}%"
                    );
                }
            } else {
                status.set_message(format!(
                    "watching {dir}: segments complete {complete}, partial {partial}, bundles new {total_new}, {} read, loss ~{loss:.0}%",
                    indicatif::BinaryBytes(bytes),
                ));
                status.tick();
            }
        });
    }
    let node = super::open(cli)?;
    let opts = IngestOptions {
        any_signer: a.any_signer,
        now: DtnTime::now(),
    };
    let pb = progress(cli, "ingest");
    let r = broadcast::ingest_with(&node, &dir, &opts, &pb, &mut SeenFiles::default())?;
    let partial = node.store.partial_summary()?.objects;
    pb.finish_and_clear();
    if cli.json {
        print_json(&summary(&r, partial));
    } else {
        print_human(&r, partial, &dir);
    }
    Ok(())
}

/// What trust bits mean, in words.
fn uses_text(uses: u8) -> String {
    let mut v = Vec::new();
    if uses & TRUST_BROADCAST != 0 {
        v.push("broadcast feeds");
    }
    if uses & TRUST_RELEASE != 0 {
        v.push("releases");
    }
    if v.is_empty() {
        v.push("nothing");
    }
    v.join(" and ")
}

pub fn trust(cli: &Cli, c: &TrustCommand) -> Result<()> {
    let node = super::open(cli)?;
    match c {
        TrustCommand::Add {
            node_id,
            broadcast,
            release,
        } => {
            let eid = Eid::parse(node_id).context("NODE_ID")?;
            crate::identity::key_for_node_id(&eid)?;
            let uses =
                (u8::from(*broadcast) * TRUST_BROADCAST) | (u8::from(*release) * TRUST_RELEASE);
            if uses == 0 {
                bail!("say what to trust the node for: --broadcast, --release, or both");
            }
            node.store.add_trust(&eid.node_id().to_string(), uses)?;
            if !cli.json {
                outln!(
                    "trusting {} for {}",
                    eid.node_id(),
                    uses_text(node.store.trust_of(&eid.node_id().to_string())?)
                );
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
                    .map(
                        |(n, u)| json!({"node_id": n, "broadcast": u & TRUST_BROADCAST != 0,
                        "release": u & TRUST_RELEASE != 0})
                    )
                    .collect::<Vec<_>>()));
            } else {
                for (n, u) in l {
                    outln!("{n}  {}", uses_text(u));
                }
            }
        }
    }
    Ok(())
}
