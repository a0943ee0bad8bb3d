//! QR frames on screens and paper: `export` writes a sequence of frames (`qr`) as PNG
//! files, a self-contained HTML page that plays them one after another (offline, for a
//! phone or laptop screen) and a printable page; `import` reads photos and screenshots,
//! keeps every verified frame in the store (so partial progress survives across runs, like
//! feed symbols), and stores the bundles of every sequence that has enough frames, each
//! verified as on every other medium.

use super::broadcast::Problem;
use super::{write_atomic, Capped};
use crate::bundle::VerifiedBundle;
use crate::node::Node;
use crate::qr::{self, image as qimg, Frame, QrError, SeqId};
use crate::route::delivery::contact_tag;
use crate::store::{PartialShard, PutOutcome, Rebuilt, StoreError};
use crate::time::DtnTime;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum QrTransportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Qr(#[from] QrError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("settling deliveries: {0}")]
    Delivery(String),
}

fn io_err(p: &Path, source: std::io::Error) -> QrTransportError {
    QrTransportError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// How frames are drawn.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// QR version of every frame ([`qimg::MIN_VERSION`]..=[`qimg::MAX_VERSION`]).
    pub version: i16,
    /// Share of frames that may be lost.
    pub loss: f64,
    /// Pixels per module in the PNG files.
    pub scale: u32,
    /// Frames per second the HTML page starts at.
    pub fps: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            version: qimg::DEFAULT_VERSION,
            loss: qr::DEFAULT_LOSS,
            scale: 6,
            fps: 5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub seq: String,
    pub bundles: usize,
    /// Bytes of bundles carried.
    pub bytes: usize,
    pub frames: usize,
    /// Frames that rebuild the sequence (any of them).
    pub needed: u32,
    /// Bytes of each frame (before base45).
    pub frame_bytes: usize,
    pub version: i16,
    pub pngs: Vec<PathBuf>,
    pub player: PathBuf,
    pub print: PathBuf,
    pub texts: PathBuf,
}

/// Write `bundles` as one sequence of frames into `dir`: `<seq>-NNNN.png`, `<seq>.html`
/// (the player), `<seq>-print.html` and `<seq>.txt` (each frame's text, one per line).
pub fn export(
    bundles: &[VerifiedBundle],
    dir: &Path,
    opts: &ExportOptions,
    pb: &ProgressBar,
) -> Result<ExportReport, QrTransportError> {
    let frame_bytes = qimg::frame_bytes(opts.version)?;
    let raws: Vec<&[u8]> = bundles.iter().map(|b| b.raw()).collect();
    let frames = qr::encode(
        &raws,
        qr::Layout {
            frame_bytes,
            loss: opts.loss,
        },
    )?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let seq = hex::encode(&frames[0].seq[..6]);
    pb.set_length(frames.len() as u64);
    let n = frames.len();
    // Each frame drawn twice: large for the PNG file, one pixel per module for the pages
    // (scaled up there without smoothing).
    // (text, PNG to keep, PNG for the pages)
    type Drawn = (String, Vec<u8>, Vec<u8>);
    let drawn: Vec<Result<Drawn, QrTransportError>> = frames
        .par_iter()
        .map(|f| {
            let text = f.to_text();
            let sym = qimg::symbol(&text, Some(opts.version))?;
            let big = qimg::png(&sym.to_image(opts.scale))?;
            let small = qimg::png(&sym.to_image(1))?;
            pb.inc(1);
            Ok((text, big, small))
        })
        .collect();
    let mut pngs = Vec::with_capacity(n);
    let mut texts = String::new();
    let mut small = Vec::with_capacity(n);
    for (i, d) in drawn.into_iter().enumerate() {
        let (text, big, s) = d?;
        let name = format!("{seq}-{:04}.png", i + 1);
        write_atomic(dir, &name, &big).map_err(|e| io_err(&dir.join(&name), e))?;
        pngs.push(dir.join(name));
        texts.push_str(&text);
        texts.push('\n');
        small.push(s);
    }
    let needed = frames[0].needed();
    let put = |name: String, body: &[u8]| -> Result<PathBuf, QrTransportError> {
        write_atomic(dir, &name, body).map_err(|e| io_err(&dir.join(&name), e))?;
        Ok(dir.join(name))
    };
    let texts_path = put(format!("{seq}.txt"), texts.as_bytes())?;
    let player = put(
        format!("{seq}.html"),
        player_page(&seq, &small, needed, opts.fps).as_bytes(),
    )?;
    let print = put(
        format!("{seq}-print.html"),
        print_page(&seq, &small, needed).as_bytes(),
    )?;
    super::sync_dir(dir);
    Ok(ExportReport {
        seq,
        bundles: bundles.len(),
        bytes: raws.iter().map(|r| r.len()).sum(),
        frames: n,
        needed,
        frame_bytes: frames[0].to_bytes().len(),
        version: opts.version,
        pngs,
        player,
        print,
        texts: texts_path,
    })
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        data_encoding::BASE64.encode(png)
    )
}

fn player_page(seq: &str, frames: &[Vec<u8>], needed: u32, fps: u32) -> String {
    let list = frames
        .iter()
        .map(|f| format!("\"{}\"", data_uri(f)))
        .collect::<Vec<_>>()
        .join(",\n");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mycelium frames {seq}</title>
<style>
 body {{ margin: 0; background: #fff; color: #222; font: 16px sans-serif; text-align: center; }}
 img {{ width: min(92vw, 80vh); height: auto; image-rendering: pixelated; image-rendering: crisp-edges; }}
 p {{ margin: .4em; }}
 button {{ font-size: 18px; margin: 0 .3em; }}
</style></head>
<body>
<img id="f" alt="QR frame">
<p id="where"></p>
<p><button id="slower">slower</button><button id="pause">pause</button><button id="faster">faster</button></p>
<p>Point the receiving phone's camera at the code (<code>mycelium qr import</code> the photos).
Any {needed} different frames are enough, in any order: keep filming until the receiver says it has them.</p>
<script>
const frames = [{list}];
let i = 0, fps = {fps}, timer = null;
const img = document.getElementById("f"), where = document.getElementById("where");
function show() {{ img.src = frames[i]; where.textContent = "frame " + (i + 1) + " of " + frames.length + " · " + fps + " per second"; }}
function step(d) {{ i = (i + d + frames.length) % frames.length; show(); }}
function run() {{ clearInterval(timer); timer = setInterval(() => step(1), 1000 / fps); }}
document.getElementById("slower").onclick = () => {{ fps = Math.max(1, fps - 1); run(); show(); }};
document.getElementById("faster").onclick = () => {{ fps = Math.min(30, fps + 1); run(); show(); }};
document.getElementById("pause").onclick = (e) => {{
  if (timer) {{ clearInterval(timer); timer = null; e.target.textContent = "play"; }}
  else {{ run(); e.target.textContent = "pause"; }} }};
document.onkeydown = (e) => {{ if (e.key == "ArrowRight") step(1); if (e.key == "ArrowLeft") step(-1); }};
show(); run();
</script>
</body></html>
"#
    )
}

fn print_page(seq: &str, frames: &[Vec<u8>], needed: u32) -> String {
    let mut figs = String::new();
    for (i, f) in frames.iter().enumerate() {
        figs.push_str(&format!(
            "<figure><img src=\"{}\" alt=\"frame {}\"><figcaption>{seq} · {} / {}</figcaption></figure>\n",
            data_uri(f),
            i + 1,
            i + 1,
            frames.len()
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mycelium frames {seq}, to print</title>
<style>
 body {{ font: 11px sans-serif; margin: 1cm; }}
 .grid {{ display: grid; grid-template-columns: repeat(3, 6cm); gap: .6cm; }}
 figure {{ margin: 0; break-inside: avoid; text-align: center; }}
 img {{ width: 6cm; height: 6cm; image-rendering: pixelated; image-rendering: crisp-edges; }}
</style></head>
<body>
<p>Mycelium sequence {seq}: {n} frames; any {needed} of them rebuild it. Photograph them (several per photo is fine) and run <code>mycelium qr import</code> on the photos.</p>
<div class="grid">
{figs}</div>
</body></html>
"#,
        n = frames.len()
    )
}

/// How far one sequence got.
#[derive(Debug, Clone, Default)]
pub struct SequenceReport {
    pub seq: String,
    /// Distinct frames held (in the store, this run's included).
    pub held: usize,
    pub needed: u32,
    pub frames: u16,
    /// Frames this run added.
    pub new_frames: usize,
    pub rebuilt: bool,
    /// It had been rebuilt by an earlier run.
    pub already: bool,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub pictures: usize,
    /// QR codes decoded.
    pub codes: usize,
    /// Codes that are not Mycelium frames (node IDs aside).
    pub not_ours: usize,
    /// Node IDs read (`mycelium id --qr` codes).
    pub node_ids: Vec<String>,
    /// Frames refused: forged, damaged, malformed.
    pub refused: usize,
    pub sequences: Vec<SequenceReport>,
    pub new: usize,
    pub duplicate: usize,
    /// Keys of the bundles newly stored.
    pub stored: Vec<[u8; 32]>,
    /// Delivered here: addressed to this node.
    pub delivered: usize,
    /// Bundles dropped because receipts brought here show them delivered.
    pub purged: usize,
    pub problems: Capped<Problem>,
}

/// The store's object for a sequence's frames.
fn object(seq: &SeqId) -> [u8; 32] {
    blake3::derive_key("mycelium qr sequence v1", seq)
}

/// Read every picture in `files`, keep their frames, rebuild what can be rebuilt.
pub fn import(
    node: &Node,
    files: &[PathBuf],
    now: DtnTime,
    pb: &ProgressBar,
) -> Result<ImportReport, QrTransportError> {
    let mut report = ImportReport {
        pictures: files.len(),
        ..Default::default()
    };
    pb.set_length(files.len() as u64);
    // What an interrupted import stored and did not settle is settled first.
    let recovered = node
        .settle_unsettled(now)
        .map_err(|e| QrTransportError::Delivery(e.to_string()))?;
    // Pictures decoded on every core.
    let scans: Vec<(String, Result<Vec<String>, String>)> = files
        .par_iter()
        .map(|p| {
            let r = std::fs::read(p)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|b| qimg::load(&b))
                .map(|img| qimg::scan(&img));
            pb.inc(1);
            (p.display().to_string(), r)
        })
        .collect();
    let mut by_seq: BTreeMap<SeqId, Vec<Frame>> = BTreeMap::new();
    let problem = |report: &mut ImportReport, file: &str, reason: String| {
        report.problems.push(Problem {
            file: file.to_string(),
            reason,
        })
    };
    for (file, scan) in scans {
        let scan = match scan {
            Ok(s) => s,
            Err(reason) => {
                problem(&mut report, &file, reason);
                continue;
            }
        };
        if scan.is_empty() {
            problem(
                &mut report,
                &file,
                "no readable QR code found (blurred, cut off or too small?)".into(),
            );
        }
        for t in scan {
            report.codes += 1;
            match Frame::from_text(&t) {
                Ok(f) => by_seq.entry(f.seq).or_default().push(f),
                Err(QrError::NotOurs)
                    if crate::bundle::Eid::parse(t.trim())
                        .ok()
                        .is_some_and(|e| crate::identity::key_for_node_id(&e).is_ok()) =>
                {
                    // `mycelium id --qr`: someone's node ID, enough to send to it sealed.
                    let id = t.trim().to_string();
                    if !report.node_ids.contains(&id) {
                        report.node_ids.push(id);
                    }
                }
                Err(QrError::NotOurs) => {
                    report.not_ours += 1;
                    let shown: String = t.chars().take(40).collect();
                    problem(
                        &mut report,
                        &file,
                        format!("a QR code that is not a Mycelium frame ({shown:?}); skipped"),
                    );
                }
                Err(e) => {
                    report.refused += 1;
                    problem(&mut report, &file, format!("{e}; skipped"));
                }
            }
        }
    }
    let contact = contact_tag("qr frames");
    for (seq, frames) in by_seq {
        let obj = object(&seq);
        let first = frames[0].clone();
        let mut sr = SequenceReport {
            seq: hex::encode(&seq[..6]),
            needed: first.needed(),
            frames: first.frames,
            ..Default::default()
        };
        if node.store.object_status(&obj)?.is_some() {
            sr.already = true;
            sr.held = usize::from(first.frames);
            report.sequences.push(sr);
            continue;
        }
        // What earlier runs kept, then this run's frames (one per index).
        let mut held: BTreeMap<u16, Frame> = BTreeMap::new();
        for rec in node.store.partial_shards(&obj)? {
            if let Ok(f) = Frame::from_bytes(&rec) {
                if f.seq == seq && f.params == first.params && f.frames == first.frames {
                    held.insert(f.index, f);
                }
            }
        }
        let mut fresh = Vec::new();
        for f in frames {
            // A valid proof binds the frame count and parameters to the id, so frames of
            // one id agree; this is belt and braces.
            if f.params != first.params || f.frames != first.frames {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(v) = held.entry(f.index) {
                let record = f.to_bytes();
                fresh.push(PartialShard {
                    object: obj,
                    leaf: u64::from(f.index),
                    need: record.len() as u64 * u64::from(f.needed()),
                    record,
                });
                v.insert(f);
            }
        }
        sr.new_frames = fresh.len();
        sr.held = held.len();
        if held.len() < sr.needed as usize {
            node.store.save_partial(&fresh, now, true)?;
            report.sequences.push(sr);
            continue;
        }
        let all: Vec<Frame> = held.into_values().collect();
        let item = match qr::decode(&all) {
            Ok(None) => {
                // K frames that happen not to be independent: keep them, wait for more.
                node.store.save_partial(&fresh, now, true)?;
                report.sequences.push(sr);
                continue;
            }
            Ok(Some(raws)) => {
                let decoded: Vec<_> = raws.par_iter().map(|r| VerifiedBundle::decode(r)).collect();
                let mut ok = Vec::new();
                for d in decoded {
                    match d {
                        Ok(vb) if vb.bundle().expires_at(now) > now => ok.push(vb),
                        Ok(_) => {}
                        Err(e) => problem(
                            &mut report,
                            &format!("sequence {}", sr.seq),
                            format!("bundle refused: {e}"),
                        ),
                    }
                }
                Ok(ok)
            }
            Err(e) => Err(e.to_string()),
        };
        // Frames of this run are stored first, so a crash between the two writes loses
        // nothing; the commit then drops them all.
        node.store.save_partial(&fresh, now, false)?;
        let rebuilt = Rebuilt {
            object: obj,
            result: item,
            had_partial: true,
        };
        let committed =
            node.store
                .commit_rebuilt(std::slice::from_ref(&rebuilt), &[], now, Some(&contact))?;
        match &rebuilt.result {
            Ok(vbs) => {
                sr.rebuilt = true;
                for (vb, o) in vbs.iter().zip(committed.outcomes.into_iter().flatten()) {
                    match o {
                        PutOutcome::New => {
                            report.new += 1;
                            report.stored.push(vb.id().key());
                        }
                        PutOutcome::Duplicate => report.duplicate += 1,
                    }
                }
            }
            Err(reason) => problem(&mut report, &format!("sequence {}", sr.seq), reason.clone()),
        }
        report.sequences.push(sr);
    }
    let settled = node
        .settle_arrivals(&report.stored, now)
        .map_err(|e| QrTransportError::Delivery(e.to_string()))?;
    let dropped: HashSet<[u8; 32]> = settled.dropped.iter().copied().collect();
    report.new -= dropped.len().min(report.new);
    report.stored.retain(|k| !dropped.contains(k));
    report.delivered = settled.delivered + recovered.delivered;
    report.purged = settled.purged + recovered.purged;
    Ok(report)
}
