//! `export DIR` and `import DIR`: bundles to and from a USB stick or any folder.

use super::out::outln;
use super::safe::say;
use super::{print_json, Cli};
use crate::bundle::Eid;
use crate::fec::Policy;
use crate::time::DtnTime;
use crate::transport::folder::{self, ExportOptions, ImportOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The stick or folder to write to
    pub dir: PathBuf,
    /// Skip what this node is known to hold (from its have-summary)
    #[arg(long = "for", value_name = "EID")]
    pub for_node: Option<String>,
    /// Write at most this much, e.g. 500MiB, 2GB
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<String>,
    /// Parity shards as a fraction of data shards (0 to 1)
    #[arg(long, default_value_t = 0.25, value_name = "P")]
    pub parity: f64,
    /// Preferred shard size for bundles larger than 4 KiB (smaller ones travel as copies)
    #[arg(long, default_value = "64KiB", value_name = "N")]
    pub shard_size: String,
    /// Also write this node's signed have-summary, so the next export towards it skips
    /// what it holds (it names this node on the stick)
    #[arg(long)]
    pub have: bool,
    /// Also carry node records (they name their nodes, in clear)
    #[arg(long)]
    pub with_records: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The stick or folder to read
    pub dir: PathBuf,
    /// Afterwards delete shard files whose every shard is durably stored
    #[arg(long)]
    pub clean: bool,
}

/// Parse `123`, `64KiB`, `500MiB`, `2GB`, ….
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size (try 500MiB or 2GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => bail!("unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"),
    };
    Ok((n * mult as f64) as u64)
}

/// The node an export is `--for`, if any.
pub fn parse_for(arg: Option<&str>) -> Result<Option<Eid>> {
    arg.map(Eid::parse).transpose().context("--for")
}

/// A byte progress bar on a terminal; hidden with `--json` or when stderr is not a TTY.
pub fn progress(cli: &Cli, what: &str) -> ProgressBar {
    if !super::out::interactive(cli.json) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

fn human(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// Problems listed on a terminal; `--json` lists more, and every count is exact.
const SHOWN: usize = 20;

/// Print the first [`SHOWN`] problems as `  ! file: reason`, then how many more there were.
pub fn print_problems<'a>(list: impl Iterator<Item = (&'a str, &'a str)>, total: usize) {
    let mut shown = 0;
    for (file, reason) in list.take(SHOWN) {
        say!("  ! {file}: {reason}");
        shown += 1;
    }
    if total > shown {
        outln!("  ! … and {} more (--json lists up to 1000)", total - shown);
    }
}

pub fn export(cli: &Cli, a: &ExportArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.parity) {
        bail!("--parity must be between 0 and 1 (0.25 = 25% extra shards)");
    }
    let for_node = parse_for(a.for_node.as_deref())?;
    let max_bytes = a.max_bytes.as_deref().map(parse_bytes).transpose()?;
    let shard = parse_bytes(&a.shard_size)?;
    if !(512..=(8 << 20)).contains(&shard) {
        bail!("--shard-size must be between 512B and 8MiB");
    }
    let policy = Policy {
        shard_target: shard as usize,
        ..Policy::folder(a.parity)
    };
    let node = super::open(cli)?;
    let now = DtnTime::now();
    node.store.purge_expired(now)?;
    let pb = progress(cli, "export");
    let t = std::time::Instant::now();
    let r = folder::export(
        &node,
        &a.dir,
        &ExportOptions {
            for_node,
            max_bytes,
            policy,
            now,
            have_summary: a.have,
            node_records: a.with_records,
            only: None,
        },
        &pb,
    )?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if cli.json {
        print_json(&json!({
            "bundles": r.bundles, "shards": r.shards, "files": r.files, "bytes": r.bytes,
            "candidates": r.candidates,
            "skipped": {"expired": r.skipped.expired, "already_there_or_held": r.skipped.unwanted,
                        "over_budget": r.skipped.over_budget},
            "seconds": secs, "error": r.error, "warnings": r.warnings,
        }));
    } else {
        outln!("export to {}", a.dir.join(folder::ROOT).display());
        outln!("  bundles written      {:>8}", r.bundles);
        outln!("  shards / files       {:>8} / {}", r.shards, r.files);
        outln!("  bytes                {:>8}", human(r.bytes));
        outln!("  skipped: on drive or held by peer {}", r.skipped.unwanted);
        outln!("  skipped: expired     {:>8}", r.skipped.expired);
        outln!("  skipped: no room     {:>8}", r.skipped.over_budget);
        outln!("  time                 {secs:>8.2}s");
        for w in &r.warnings {
            say!("  warning: {w}");
        }
    }
    if let Some(e) = r.error {
        bail!(
            "export stopped early: {e} (the {} bundles reported are complete on the drive)",
            r.bundles
        );
    }
    Ok(())
}

pub fn import(cli: &Cli, a: &ImportArgs) -> Result<()> {
    let node = super::open(cli)?;
    let now = DtnTime::now();
    let pb = progress(cli, "import");
    let t = std::time::Instant::now();
    let r = folder::import(
        &node,
        &a.dir,
        &ImportOptions {
            clean: a.clean,
            now,
        },
        &pb,
    )?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let partial = node.store.partial_summary()?;
    if cli.json {
        let rej = |v: &[folder::Rejection]| {
            v.iter()
                .map(|x| json!({"file": x.file, "reason": x.reason}))
                .collect::<Vec<_>>()
        };
        print_json(&json!({
            "files": r.files, "bytes": r.bytes, "shards": r.shards,
            "duplicate_shards": r.duplicate_shards,
            "new": r.new, "duplicate": r.duplicate, "rebuilt_from_parity": r.rebuilt_from_parity,
            "incomplete": r.incomplete, "incomplete_dropped": r.incomplete_dropped,
            "partial_objects_held": partial.objects, "partial_bytes_held": partial.bytes,
            "partial_evicted": r.partial_evicted, "sealed_evicted": r.sealed_evicted,
            "refused_total": r.refused.total(), "rejected_total": r.rejected.total(),
            "refused": rej(&r.refused), "rejected": rej(&r.rejected),
            "have_summaries": r.summaries, "cleaned_files": r.cleaned, "seconds": secs,
            "delivered_here": r.delivered, "purged_by_receipts": r.purged,
            "refused_already_delivered": r.already_delivered,
            "stored": r.stored.iter().map(hex::encode).collect::<Vec<_>>(),
            "peak_memory_kib": super::peak_rss_kib(),
        }));
        return Ok(());
    }
    outln!("import from {}", a.dir.join(folder::ROOT).display());
    outln!("  files read           {:>8} ({})", r.files, human(r.bytes));
    outln!(
        "  shards valid         {:>8} ({} redundant)",
        r.shards,
        r.duplicate_shards
    );
    outln!("  bundles new          {:>8}", r.new);
    outln!("  bundles duplicate    {:>8}", r.duplicate);
    if r.delivered + r.purged + r.already_delivered > 0 {
        outln!(
            "  delivered here       {:>8} (receipts issued); {} copies dropped by receipts, {} already delivered refused",
            r.delivered, r.purged, r.already_delivered
        );
    }
    outln!("  rebuilt from parity  {:>8}", r.rebuilt_from_parity);
    outln!(
        "  incomplete, waiting  {:>8} (the store holds {} incomplete objects, {})",
        r.incomplete,
        partial.objects,
        human(partial.bytes)
    );
    if r.incomplete_dropped + r.partial_evicted as usize + r.sealed_evicted as usize > 0 {
        outln!(
            "  over the store's bounds: {} incomplete from this stick dropped, {} incomplete evicted, {} relayed sealed evicted",
            r.incomplete_dropped, r.partial_evicted, r.sealed_evicted
        );
    }
    outln!("  refused bundles      {:>8}", r.refused.total());
    outln!("  rejected files/parts {:>8}", r.rejected.total());
    if a.clean {
        outln!("  files cleaned        {:>8}", r.cleaned);
    }
    outln!("  time                 {secs:>8.2}s");
    print_problems(
        r.refused
            .iter()
            .chain(r.rejected.iter())
            .map(|x| (x.file.as_str(), x.reason.as_str())),
        r.refused.total() + r.rejected.total(),
    );
    Ok(())
}
