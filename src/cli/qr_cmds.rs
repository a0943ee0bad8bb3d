//! `qr export OUT_DIR` and `qr import IMAGES...`: bundles as QR frames for screens and
//! paper, and photos of them read back.

use super::out::outln;
use super::sneakernet::{parse_bytes, parse_for, print_problems};
use super::{print_json, Cli};
use crate::bundle::VerifiedBundle;
use crate::qr::image as qimg;
use crate::time::DtnTime;
use crate::transport::qr::{self as tqr, ExportOptions};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum QrCommand {
    /// Write bundles as a sequence of QR frames: PNG files, a page that plays them
    /// (offline, on any screen) and a page to print
    Export(QrExportArgs),
    /// Read photos or screenshots of QR frames (PNG, JPEG; files or folders): keep every
    /// frame, store the bundles of every sequence with enough frames
    Import(QrImportArgs),
}

#[derive(Args, Debug)]
pub struct QrExportArgs {
    /// Folder to write the frames and pages to
    pub out_dir: PathBuf,
    /// Bundles to write (hex id prefixes, as `list` shows them); default: what should
    /// travel, chosen as `export` chooses, within --max-bytes
    pub ids: Vec<String>,
    /// Skip what this node is known to hold (from its have-summary)
    #[arg(long = "for", value_name = "NODE_ID")]
    pub for_node: Option<String>,
    /// QR version of each frame (5 to 25): 15 (77×77 modules) reads well with a phone
    /// camera off a screen or paper; larger carries more per frame, needs a sharper camera
    #[arg(long, default_value_t = qimg::DEFAULT_VERSION, value_name = "N")]
    pub size: i16,
    /// Share of frames that may be lost or unreadable (0 to 0.9)
    #[arg(long, default_value_t = crate::qr::DEFAULT_LOSS, value_name = "F")]
    pub loss: f64,
    /// Bytes of bundles at most when no ids are given (64 KiB is some 300 frames)
    #[arg(long, default_value = "64KiB", value_name = "N")]
    pub max_bytes: String,
    /// Pixels per module in the PNG files
    #[arg(long, default_value_t = 6, value_name = "PX")]
    pub scale: u32,
    /// Frames per second the player page starts at
    #[arg(long, default_value_t = 5)]
    pub fps: u32,
    /// Also carry node records (they name their nodes, in clear)
    #[arg(long)]
    pub with_records: bool,
}

#[derive(Args, Debug)]
pub struct QrImportArgs {
    /// Pictures, or folders of them
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

fn counter(cli: &Cli, what: &str) -> ProgressBar {
    if !super::out::interactive(cli.json) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

pub fn run(cli: &Cli, c: &QrCommand) -> Result<()> {
    match c {
        QrCommand::Export(a) => export(cli, a),
        QrCommand::Import(a) => import(cli, a),
    }
}

fn export(cli: &Cli, a: &QrExportArgs) -> Result<()> {
    if !(qimg::MIN_VERSION..=qimg::MAX_VERSION).contains(&a.size) {
        bail!(
            "--size must be a QR version from {} to {}",
            qimg::MIN_VERSION,
            qimg::MAX_VERSION
        );
    }
    if !(0.0..=0.9).contains(&a.loss) {
        bail!("--loss must be between 0 and 0.9 (0.4 = any 60% of the frames are enough)");
    }
    if !(1..=40).contains(&a.scale) || !(1..=30).contains(&a.fps) {
        bail!("--scale must be 1 to 40 pixels, --fps 1 to 30");
    }
    let node = super::open(cli)?;
    let now = DtnTime::now();
    let mut bundles: Vec<VerifiedBundle> = Vec::new();
    if a.ids.is_empty() {
        let for_node = parse_for(a.for_node.as_deref())?;
        let budget = parse_bytes(&a.max_bytes)?;
        let (plan, _, _) = crate::transport::folder::travel_plan(
            &node,
            for_node.as_ref(),
            a.with_records,
            now,
            budget,
            |_| false,
            |size| size,
        )?;
        for c in plan {
            if let Some(vb) = node.store.get(&c.key)? {
                bundles.push(vb);
            }
        }
    } else {
        for id in &a.ids {
            let key = node.store.resolve(id)?;
            match node.store.get(&key)? {
                Some(vb) => bundles.push(vb),
                None => bail!("bundle {id} is not stored here"),
            }
        }
    }
    if bundles.is_empty() {
        bail!("nothing to write: no bundle should travel (give bundle ids to write them anyway)");
    }
    let pb = counter(cli, "drawing frames");
    let r = tqr::export(
        &bundles,
        &a.out_dir,
        &ExportOptions {
            version: a.size,
            loss: a.loss,
            scale: a.scale,
            fps: a.fps,
        },
        &pb,
    )?;
    pb.finish_and_clear();
    if cli.json {
        print_json(&json!({
            "sequence": r.seq, "bundles": r.bundles, "bytes": r.bytes, "frames": r.frames,
            "needed": r.needed, "frame_bytes": r.frame_bytes, "version": r.version,
            "pngs": r.pngs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "player": r.player.display().to_string(), "print": r.print.display().to_string(),
            "texts": r.texts.display().to_string(),
        }));
    } else {
        outln!(
            "sequence {}: {} bundle(s), {} bytes, in {} frames (QR version {}, {} bytes each); any {} of them rebuild it",
            r.seq, r.bundles, r.bytes, r.frames, r.version, r.frame_bytes, r.needed
        );
        outln!(
            "  frames      {}",
            a.out_dir.join(format!("{}-*.png", r.seq)).display()
        );
        outln!("  to play     {}", r.player.display());
        outln!("  to print    {}", r.print.display());
    }
    Ok(())
}

fn pictures(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                            matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                        })
                })
                .collect();
            inner.sort();
            out.extend(inner);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn import(cli: &Cli, a: &QrImportArgs) -> Result<()> {
    let files = pictures(&a.images)?;
    if files.is_empty() {
        bail!("no pictures (.png, .jpg, .jpeg) in the folders given");
    }
    let node = super::open(cli)?;
    let pb = counter(cli, "reading pictures");
    let t = std::time::Instant::now();
    let r = tqr::import(&node, &files, DtnTime::now(), &pb)?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if cli.json {
        print_json(&json!({
            "pictures": r.pictures, "codes": r.codes,
            "not_ours": r.not_ours, "refused": r.refused, "node_ids": r.node_ids,
            "sequences": r.sequences.iter().map(|s| json!({
                "sequence": s.seq, "frames": s.frames, "needed": s.needed, "held": s.held,
                "new_frames": s.new_frames, "missing": (s.needed as usize).saturating_sub(s.held),
                "rebuilt": s.rebuilt, "already_rebuilt": s.already,
            })).collect::<Vec<_>>(),
            "new": r.new, "duplicate": r.duplicate, "delivered": r.delivered, "purged": r.purged,
            "stored": r.stored.iter().map(hex::encode).collect::<Vec<_>>(),
            "problems": r.problems.iter().map(|p| json!({"file": p.file, "reason": p.reason})).collect::<Vec<_>>(),
            "problems_total": r.problems.total(),
            "seconds": secs,
        }));
    } else {
        outln!(
            "read {} picture(s): {} QR code(s), {} not ours, {} refused",
            r.pictures,
            r.codes,
            r.not_ours,
            r.refused
        );
        for id in &r.node_ids {
            outln!(
                "  node ID {}: send to it with `mycelium send --to {} --text ...`",
                super::safe::line(id),
                super::safe::line(id)
            );
        }
        for s in &r.sequences {
            let state = if s.already {
                "already rebuilt earlier".to_string()
            } else if s.rebuilt {
                "rebuilt".to_string()
            } else {
                format!(
                    "{} more frame(s) needed; photograph more",
                    (s.needed as usize).saturating_sub(s.held).max(1)
                )
            };
            outln!(
                "  sequence {}: {} new frame(s), {} of {} held, {} needed: {state}",
                s.seq,
                s.new_frames,
                s.held,
                s.frames,
                s.needed
            );
        }
        outln!(
            "  bundles new {}, already here {}, delivered to this node {}",
            r.new,
            r.duplicate,
            r.delivered
        );
        outln!("  time {secs:.2}s");
        print_problems(
            r.problems
                .iter()
                .map(|p| (p.file.as_str(), p.reason.as_str())),
            r.problems.total(),
        );
    }
    Ok(())
}

/// `id --qr`: the node ID as a QR code on the terminal and as a PNG file.
pub fn id_qr(node_id: &str, png: &std::path::Path) -> Result<String> {
    let sym = qimg::symbol(node_id, None)?;
    let bytes = qimg::png(&sym.to_image(8))?;
    std::fs::write(png, bytes).with_context(|| format!("cannot write {}", png.display()))?;
    Ok(sym.to_terminal())
}
