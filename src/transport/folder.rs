//! Sneakernet: export bundles to a folder (a USB stick) as erasure-coded shard packs, and
//! import whatever survived the trip.
//!
//! Drive layout, under `DIR/mycelium/`:
//!
//! ```text
//! VERSION                       "mycelium-drive 1"
//! shards/<session>-<group>-<pack>.msp   shard packs (see `pack`); names carry no metadata
//! catalog/<session>-<group>.cat         bundle keys each export wrote, to skip on re-export
//! have/<node>.have                      signed have-summaries of the nodes that exported
//! ```
//!
//! Every file is written to a `.tmp-*` name, fsynced and renamed, so an interrupted export
//! leaves only complete files (stale temp files are removed by the next export and ignored
//! by import). The shards of each bundle go to distinct pack files, so losing any one file
//! loses at most one shard of each bundle. Import never opens a path read from the drive's
//! contents, follows no symlinks, reads only regular files, streams them, and verifies every
//! shard before keeping it. Nothing on the drive changes unless `--clean` is given.

use super::{sync_dir, Capped, TMP_PREFIX};
use crate::bundle::{Eid, VerifiedBundle};
use crate::fec::pack::{push_frame_with, Frame, PackReader, PACK_MAGIC};
use crate::fec::{self, ObjectId, Params, Policy, Shard};
use crate::node::{Node, SettleReport};
use crate::route::delivery::{Arriving, ContactTag, RECEIPT_BATCH};
use crate::route::{self, Candidate, Skipped};
use crate::store::{ObjectStatus, PartialShard, PutOutcome, Rebuilt, StoreError};
use crate::sync::have::HaveSummary;
use crate::time::DtnTime;
use indicatif::ProgressBar;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

pub const ROOT: &str = "mycelium";
const SHARDS: &str = "shards";
const CATALOG: &str = "catalog";
const HAVE: &str = "have";
const VERSION_FILE: &str = "VERSION";
const VERSION_TEXT: &str = "mycelium-drive 1\n";
const CATALOG_MAGIC: &[u8; 8] = b"MYCCAT1\n";
/// Preferred size of one pack file.
const PACK_TARGET: u64 = 4 * 1024 * 1024;
/// Bundles are exported in groups of about this many shard bytes (bounds memory).
const GROUP_BYTES: u64 = 32 * 1024 * 1024;
/// Left free on the drive.
const RESERVE: u64 = 1024 * 1024;
/// Shards of incomplete objects held in memory during import before spilling to the store.
const PENDING_BUDGET: usize = 128 * 1024 * 1024;
/// Problems listed per file; beyond that one line says there were more.
const MAX_REPORTS_PER_FILE: usize = 50;
/// Rebuilt bundles are committed in slices of about this many bytes (bounds memory).
const COMMIT_BYTES: usize = 8 << 20;
/// Stored bundles wait, opened, for their receipts to be made in bulk up to this many
/// bytes (or [`RECEIPT_BATCH`] bundles): memory stays bounded by it.
const SETTLE_BYTES: usize = 32 << 20;
/// Shards of an object that stays incomplete this long are dropped.
pub const PARTIAL_MAX_AGE_MS: u64 = 30 * 24 * 3600 * 1000;
/// Catalog and have-summary files larger than this are refused.
const MAX_SIDE_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0} has no mycelium/ folder: nothing to import (was it exported to?)")]
    NotADrive(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("after import: {0}")]
    Delivery(String),
}

fn io_err(path: &Path, e: io::Error) -> FolderError {
    let reason = match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => {
            "read-only file system: this drive cannot be written".to_string()
        }
        io::ErrorKind::StorageFull => "no space left on the drive".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    FolderError::Io {
        path: path.display().to_string(),
        reason,
    }
}

/// [`super::write_atomic`], with errors naming the file.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
    super::write_atomic(dir, name, bytes).map_err(|e| io_err(&dir.join(name), e))
}

/// Bytes a bundle of `len` takes on the drive with `policy`.
pub fn drive_cost(policy: &Policy, len: u64) -> u64 {
    let p = policy.params(len as usize);
    let depth = u64::from(fec::merkle::depth(p.leaves()));
    let per_shard = u64::from(p.shard_len) + 8 + 64 + 34 * depth;
    p.leaves() * per_shard
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Skip what this node's last known have-summary lists.
    pub for_node: Option<Eid>,
    pub max_bytes: Option<u64>,
    pub policy: Policy,
    pub now: DtnTime,
    /// Write this node's signed have-summary (it names this node: off by default, a
    /// seized stick should not say whose it is).
    pub have_summary: bool,
    /// Also carry node records (signed, in clear: they name their nodes).
    pub node_records: bool,
    /// Carry only these bundles (by key), if they should travel at all.
    pub only: Option<HashSet<[u8; 32]>>,
}

#[derive(Debug, Default, Clone)]
pub struct ExportReport {
    pub bundles: usize,
    pub shards: usize,
    pub files: usize,
    pub bytes: u64,
    pub already_on_drive: usize,
    pub skipped: Skipped,
    pub candidates: usize,
    /// Set when the export stopped early (drive full, write error); what was reported
    /// exported is complete on the drive.
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// What should travel to `for_node` (or to anyone), most wanted first, within `budget`
/// bytes of `cost`: every stored bundle (node records only with `node_records`) that is
/// not delivered, not listed by the peer's or its destination's last have-summary, and
/// not `already` on the medium. Returns the plan, why the rest stayed, and how many were
/// looked at. Sticks and QR frames choose alike.
pub fn travel_plan(
    node: &Node,
    for_node: Option<&Eid>,
    node_records: bool,
    now: DtnTime,
    budget: u64,
    already: impl Fn(&[u8; 32]) -> bool,
    cost: impl Fn(u64) -> u64,
) -> Result<(Vec<Candidate>, Skipped, usize), StoreError> {
    let summary_of = |node_id: &str| -> Option<HaveSummary> {
        let raw = node.store.peer_summary(node_id).ok()??;
        HaveSummary::decode_verified(&raw).ok()
    };
    let peer = for_node.and_then(|e| summary_of(&e.node_id().to_string()));
    let mut dest_summaries: HashMap<String, Option<HaveSummary>> = HashMap::new();
    let mut delivered = node.store.held_back(&node.node_id())?;
    let mut cands = Vec::new();
    for (key, rec) in node.store.records()? {
        let dest_node = Eid::parse(&rec.destination)
            .map(|e| e.node_id().to_string())
            .unwrap_or_else(|_| rec.destination.clone());
        let ds = dest_summaries
            .entry(dest_node.clone())
            .or_insert_with(|| summary_of(&dest_node));
        if ds.as_ref().is_some_and(|s| s.contains(&key)) {
            delivered.insert(key);
        }
        if rec.kind == crate::adu::KIND_NODE && !node_records {
            continue;
        }
        cands.push(Candidate {
            key,
            kind: rec.kind,
            expires_at: rec.expires_at,
            cost: cost(rec.size),
        });
    }
    let n = cands.len();
    let (plan, skipped) = route::plan(cands, now, budget, |c| {
        already(&c.key)
            || delivered.contains(&c.key)
            || peer.as_ref().is_some_and(|p| p.contains(&c.key))
    });
    Ok((plan, skipped, n))
}

/// Write shards of the bundles that should travel into `dir/mycelium/`.
pub fn export(
    node: &Node,
    dir: &Path,
    opts: &ExportOptions,
    pb: &ProgressBar,
) -> Result<ExportReport, FolderError> {
    let root = dir.join(ROOT);
    let shards_dir = root.join(SHARDS);
    let catalog_dir = root.join(CATALOG);
    let have_dir = root.join(HAVE);
    for d in [&shards_dir, &catalog_dir, &have_dir] {
        fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    // Find out now, not half way, whether this drive can be written at all.
    tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(&shards_dir)
        .map_err(|e| io_err(&shards_dir, e))?;
    if !root.join(VERSION_FILE).exists() {
        write_atomic(&root, VERSION_FILE, VERSION_TEXT.as_bytes())?;
        sync_dir(&root);
    }
    let mut report = ExportReport::default();
    for d in [&shards_dir, &catalog_dir, &have_dir] {
        remove_stale_temp(d);
    }
    let on_drive = read_catalogs(&catalog_dir, &mut report.warnings);

    let free = fs4::available_space(&shards_dir).unwrap_or(u64::MAX);
    let budget = opts
        .max_bytes
        .unwrap_or(u64::MAX)
        .min(free.saturating_sub(RESERVE));
    let (plan, skipped, candidates) = travel_plan(
        node,
        opts.for_node.as_ref(),
        opts.node_records,
        opts.now,
        budget,
        |key| on_drive.contains(key) || opts.only.as_ref().is_some_and(|o| !o.contains(key)),
        |size| drive_cost(&opts.policy, size),
    )?;
    report.candidates = candidates;
    report.skipped = skipped;
    pb.set_length(plan.iter().map(|c| c.cost).sum());

    let session = hex::encode(rand_bytes::<6>());
    let mut group: Vec<&Candidate> = Vec::new();
    let mut group_cost = 0;
    let mut gi = 0usize;
    let mut flush = |group: &mut Vec<&Candidate>, report: &mut ExportReport| -> bool {
        if group.is_empty() {
            return true;
        }
        let res = write_group(node, &shards_dir, &session, gi, group, &opts.policy, pb).and_then(
            |(files, shards, bytes)| {
                // The packs' names must be durable before a catalog says they are here.
                sync_dir(&shards_dir);
                let mut cat = CATALOG_MAGIC.to_vec();
                for c in group.iter() {
                    cat.extend_from_slice(&c.key);
                }
                write_atomic(&catalog_dir, &format!("{session}-{gi:05}.cat"), &cat)?;
                Ok((files, shards, bytes))
            },
        );
        gi += 1;
        match res {
            Ok((files, shards, bytes)) => {
                report.bundles += group.len();
                report.files += files;
                report.shards += shards;
                report.bytes += bytes;
                group.clear();
                true
            }
            Err(e) => {
                report.error = Some(e.to_string());
                false
            }
        }
    };
    let mut ok = true;
    for c in &plan {
        if group_cost + c.cost > GROUP_BYTES && !group.is_empty() {
            group_cost = 0;
            if !flush(&mut group, &mut report) {
                ok = false;
                break;
            }
        }
        group_cost += c.cost;
        group.push(c);
    }
    if ok {
        flush(&mut group, &mut report);
    }
    sync_dir(&shards_dir);
    sync_dir(&catalog_dir);
    report.skipped.unwanted = skipped.unwanted;
    report.already_on_drive = on_drive.len();

    if !opts.have_summary {
        return Ok(report);
    }
    // This node's have-summary, so the next export towards it can skip what it holds.
    // Private keys (what this node sealed or opened) are never listed.
    let private = node.store.private_keys()?;
    let keys: Vec<[u8; 32]> = node
        .store
        .records()?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !private.contains(k))
        .collect();
    let summary = HaveSummary::new(node.node_id(), opts.now, keys).sign(&node.identity);
    let name = node.node_id().node_name().unwrap_or("node").to_string();
    let short = &name[..name.len().min(16)];
    if let Err(e) = write_atomic(&have_dir, &format!("{short}.have"), &summary) {
        if report.error.is_none() {
            report.error = Some(e.to_string());
        }
    }
    sync_dir(&have_dir);
    Ok(report)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand_core::RngCore;
    let mut b = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

fn remove_stale_temp(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Bundle keys listed by the catalogs on the drive (what earlier exports wrote).
fn read_catalogs(dir: &Path, warnings: &mut Vec<String>) -> HashSet<[u8; 32]> {
    let mut out = HashSet::new();
    for path in regular_files(dir, ".cat", warnings) {
        let ok = fs::metadata(&path)
            .map(|m| m.len() <= MAX_SIDE_FILE)
            .unwrap_or(false);
        let bytes = if ok { fs::read(&path).ok() } else { None };
        match bytes {
            Some(b) if b.starts_with(CATALOG_MAGIC) && (b.len() - 8) % 32 == 0 => {
                for k in b[8..].chunks_exact(32) {
                    let mut key = [0u8; 32];
                    key.copy_from_slice(k);
                    out.insert(key);
                }
            }
            _ => warnings.push(format!("{}: not a valid catalog, ignored", path.display())),
        }
    }
    out
}

/// Regular files in `dir` ending in `ext`, sorted by name. Symlinks, folders and other
/// kinds of entries are reported, never followed or opened. Temp files are skipped.
fn regular_files(dir: &Path, ext: &str, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        problems.push(format!("{}: symbolic link, not followed", dir.display()));
        return out;
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(e) => {
            problems.push(format!("{}: cannot list: {e}", dir.display()));
            return out;
        }
    };
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: cannot list: {e}", dir.display()));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                problems.push(format!("{}: symbolic link, not followed", path.display()))
            }
            Ok(m) if !m.is_file() => {
                if name.ends_with(ext) {
                    problems.push(format!("{}: not a regular file", path.display()))
                }
            }
            Ok(_) if name.ends_with(ext) => out.push(path),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    out.sort();
    out
}

/// Encode one group of bundles and write its packs. Returns (files, shards, bytes).
fn write_group(
    node: &Node,
    shards_dir: &Path,
    session: &str,
    gi: usize,
    group: &[&Candidate],
    policy: &Policy,
    pb: &ProgressBar,
) -> Result<(usize, usize, u64), FolderError> {
    let mut objects: Vec<Vec<Shard>> = Vec::with_capacity(group.len());
    for c in group {
        // Encoded straight from RocksDB's pinned buffer (no copy of the bundle).
        let encoded = node
            .store
            .with_raw(&c.key, |raw| fec::encode(raw, policy.params(raw.len())))?;
        let Some(encoded) = encoded else {
            continue;
        };
        let (_, shards) = encoded.map_err(|e| FolderError::Io {
            path: hex::encode(c.key),
            reason: e.to_string(),
        })?;
        objects.push(shards);
    }
    let max_n = objects.iter().map(Vec::len).max().unwrap_or(1) as u64;
    let total: u64 = objects
        .iter()
        .flat_map(|o| o.iter().map(|s| s.data.len() as u64 + 128))
        .sum();
    let f = max_n.max(total.div_ceil(PACK_TARGET)).max(1) as usize;
    // Which pack each shard goes to: shards of one object to different packs, in turn.
    let placed = || {
        let mut rot = 0usize;
        objects.iter().flat_map(move |obj| {
            let at = rot;
            rot = (rot + obj.len()) % f;
            obj.iter().enumerate().map(move |(j, s)| ((at + j) % f, s))
        })
    };
    // Each pack's room reserved once, so no pack is copied as it grows.
    let mut room = vec![PACK_MAGIC.len(); f];
    for (p, s) in placed() {
        room[p] += 8 + s.encoded_bound();
    }
    let mut packs: Vec<Vec<u8>> = room
        .iter()
        .map(|&n| {
            let mut p = Vec::with_capacity(n);
            p.extend_from_slice(PACK_MAGIC);
            p
        })
        .collect();
    let mut nshards = 0;
    for (p, s) in placed() {
        push_frame_with(&mut packs[p], |out| s.encode_into(out));
        nshards += 1;
    }
    let mut files = 0;
    let mut bytes = 0;
    for (i, p) in packs.iter().enumerate() {
        if p.len() == PACK_MAGIC.len() {
            continue;
        }
        let name = format!("{session}-{gi:05}-{i:04}.msp");
        write_atomic(shards_dir, &name, p)?;
        files += 1;
        bytes += p.len() as u64;
        pb.inc(p.len() as u64);
    }
    Ok((files, nshards, bytes))
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Delete shard files whose every shard is durably stored.
    pub clean: bool,
    pub now: DtnTime,
}

/// A file (or part of one) that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub files: usize,
    pub bytes: u64,
    pub shards: usize,
    pub duplicate_shards: usize,
    pub new: usize,
    pub duplicate: usize,
    pub rebuilt_from_parity: usize,
    /// Objects this stick brought shards of that are still incomplete: waiting in the
    /// store for the rest.
    pub incomplete: usize,
    /// Objects this stick left incomplete that the store's bound on incomplete objects did
    /// not keep (see `store::Limits`).
    pub incomplete_dropped: usize,
    /// Incomplete objects of any origin evicted during this import to stay within that
    /// bound.
    pub partial_evicted: u64,
    /// Relayed sealed bundles evicted to stay within the store's sealed bound.
    pub sealed_evicted: u64,
    /// Objects rebuilt but refused (the first [`Capped::KEEP`] listed, all counted).
    pub refused: Capped<Rejection>,
    /// Damaged or unreadable files and parts (at most 50 listed per
    /// file, all counted).
    pub rejected: Capped<Rejection>,
    pub summaries: usize,
    pub cleaned: usize,
    /// Keys of bundles newly stored.
    pub stored: Vec<[u8; 32]>,
    /// Addressed to this node (a receipt was issued for each).
    pub delivered: usize,
    /// Copies dropped because a receipt said they were delivered.
    pub purged: usize,
    /// Refused: their destination already confirmed delivery.
    pub already_delivered: usize,
}

struct Pending {
    params: Params,
    shards: HashMap<u64, Shard>,
    /// Distinct shards held per stripe, and data shards held, kept up to date on insert.
    per_stripe: Vec<u32>,
    data: u64,
    bytes: usize,
    /// Some of its shards are (or were) kept in the store.
    in_store: bool,
}

impl Pending {
    /// Keep a shard unless one with its leaf index is already held; `false` if it was.
    fn insert(&mut self, s: Shard) -> bool {
        let leaf = s.leaf_index();
        if self.shards.contains_key(&leaf) || s.stripe as usize >= self.per_stripe.len() {
            return false;
        }
        self.per_stripe[s.stripe as usize] += 1;
        self.data += u64::from(!s.is_parity());
        self.bytes += s.data.len();
        self.shards.insert(leaf, s);
        true
    }
}

/// A rebuilt object waiting for the next commit: its bytes (or why it could not be
/// rebuilt), and whether parity was needed.
struct Queued {
    object: ObjectId,
    bytes: Result<Vec<u8>, String>,
    had_partial: bool,
    parity: bool,
}

struct Importer<'a> {
    node: &'a Node,
    now: DtnTime,
    pending: HashMap<ObjectId, Pending>,
    pending_bytes: usize,
    done: HashSet<ObjectId>,
    /// Complete objects waiting for data shards that may be in later files.
    ready: HashSet<ObjectId>,
    queue: Vec<Queued>,
    queue_bytes: usize,
    report: ImportReport,
    /// Sealed bundles new to this store taken from this stick so far (flood defence: a
    /// quota per contact).
    sealed: u64,
    /// Objects this stick brought shards of and that are not (yet) rebuilt.
    incomplete: HashSet<ObjectId>,
    /// This stick, for the store's fairness between contacts (random: sticks name nobody).
    contact: ContactTag,
    /// Stored, verified and opened, and waiting to be settled (receipts made in bulk).
    unsettled: Vec<Arriving>,
    unsettled_bytes: usize,
    settled: SettleReport,
}

impl Importer<'_> {
    fn shard(&mut self, shard: Shard) -> Result<(), FolderError> {
        let obj = shard.object;
        if self.done.contains(&obj) {
            self.report.duplicate_shards += 1;
            return Ok(());
        }
        if !self.pending.contains_key(&obj) {
            if self.node.store.object_status(&obj)?.is_some() {
                self.done.insert(obj);
                self.report.duplicate_shards += 1;
                return Ok(());
            }
            let mut p = Pending {
                params: shard.params,
                shards: HashMap::new(),
                per_stripe: vec![0; shard.params.stripes as usize],
                data: 0,
                bytes: 0,
                in_store: false,
            };
            for rec in self.node.store.partial_shards(&obj)? {
                p.in_store = true;
                if let Ok(s) = Shard::decode_verified(&rec) {
                    if s.object == obj {
                        p.insert(s);
                    }
                }
            }
            self.pending_bytes += p.bytes;
            self.pending.insert(obj, p);
            self.incomplete.insert(obj);
        }
        let Some(p) = self.pending.get_mut(&obj) else {
            return Ok(());
        };
        let before = p.bytes;
        if !p.insert(shard) {
            self.report.duplicate_shards += 1;
            return Ok(());
        }
        self.pending_bytes += p.bytes - before;
        if p.per_stripe.iter().all(|c| *c >= p.params.k) {
            if p.data == u64::from(p.params.k) * u64::from(p.params.stripes) {
                self.rebuild(obj);
            } else {
                // Data shards may still come in later files: parity is used only for
                // what is really missing once everything has been read.
                self.ready.insert(obj);
            }
        }
        Ok(())
    }

    /// Rebuild a complete pending object and queue it for the next commit.
    fn rebuild(&mut self, obj: ObjectId) {
        self.ready.remove(&obj);
        let Some(p) = self.pending.remove(&obj) else {
            return;
        };
        self.pending_bytes -= p.bytes;
        self.done.insert(obj);
        self.incomplete.remove(&obj);
        let refs: Vec<&Shard> = p.shards.values().collect();
        self.queue_bytes += p.params.object_len as usize;
        // Verified at the next commit, in parallel with the other objects rebuilt by then.
        let (bytes, parity) = match fec::rebuild(&p.params, &refs) {
            Ok((bytes, parity)) => (Ok(bytes), parity),
            Err(e) => (Err(format!("rebuild failed: {e}")), false),
        };
        self.queue.push(Queued {
            object: obj,
            bytes,
            had_partial: p.in_store,
            parity,
        });
    }

    /// Rebuild every object that has enough shards but waited for missing data shards.
    fn rebuild_ready(&mut self) {
        let ready: Vec<ObjectId> = self.ready.iter().copied().collect();
        for obj in ready {
            self.rebuild(obj);
        }
    }

    /// Verify and open (in parallel) and durably store everything rebuilt so far; what is
    /// new waits, already verified and opened, for [`Importer::settle`].
    fn commit(&mut self) -> Result<(), FolderError> {
        use rayon::prelude::*;
        if self.queue.is_empty() {
            return Ok(());
        }
        self.queue_bytes = 0;
        let queued = std::mem::take(&mut self.queue);
        let now = self.now;
        let me = &self.node.identity;
        let (queued, bytes): (Vec<Queued>, Vec<Result<Vec<u8>, String>>) = queued
            .into_iter()
            .map(|mut q| {
                let b = std::mem::replace(&mut q.bytes, Ok(Vec::new()));
                (q, b)
            })
            .unzip();
        let decoded: Vec<Result<Arriving, String>> = bytes
            .into_par_iter()
            .map(|bytes| {
                let vb = VerifiedBundle::decode_owned(bytes?)
                    .map_err(|e| format!("rebuilt bundle refused: {e}"))?;
                let exp = vb.bundle().expires_at(now);
                if exp <= now {
                    return Err(format!("bundle expired at {}", exp.to_rfc3339()));
                }
                Ok(Arriving::new(vb, me))
            })
            .collect();
        let mut items = Vec::with_capacity(queued.len());
        let mut parity = Vec::with_capacity(queued.len());
        let mut opened = Vec::with_capacity(queued.len());
        for (q, d) in queued.into_iter().zip(decoded) {
            let result = d.and_then(|a| {
                let (vb, o) = a.split();
                // Only what this store does not hold yet counts against the quota (a
                // store error counts it too: the quota errs on the safe side).
                let store = &self.node.store;
                if vb.is_sealed() && !store.contains(&vb.id()).unwrap_or(false) {
                    self.sealed += 1;
                    let quota = store.limits().sealed_per_contact;
                    if self.sealed > quota {
                        // Refused for this contact, not for what it is: nothing of it is
                        // kept, so another contact may bring it.
                        return Err(format!(
                            "over this stick's quota of {quota} sealed bundles: not kept (another contact may bring it)"
                        ));
                    }
                }
                opened.push(o);
                Ok(vec![vb])
            });
            if result.is_err() {
                opened.push(None);
            }
            items.push(Rebuilt {
                object: q.object,
                result,
                had_partial: q.had_partial,
            });
            parity.push(q.parity);
        }
        let committed =
            self.node
                .store
                .commit_rebuilt(&items, &[], self.now, Some(&self.contact))?;
        self.report.sealed_evicted += committed.sealed_evicted.count;
        for (((it, par), out), o) in items
            .into_iter()
            .zip(parity)
            .zip(committed.outcomes)
            .zip(opened)
        {
            match (it.result, out.first().copied()) {
                (Ok(mut vbs), Some(PutOutcome::New)) => {
                    let Some(vb) = vbs.pop() else { continue };
                    self.report.new += 1;
                    self.report.stored.push(vb.id().key());
                    if par {
                        self.report.rebuilt_from_parity += 1;
                    }
                    self.unsettled_bytes += vb.raw().len();
                    self.unsettled.push(Arriving::join(vb, o));
                }
                (Ok(_), _) => self.report.duplicate += 1,
                (Err(reason), _) => self.report.refused.push(Rejection {
                    file: format!("object {}", hex::encode(&it.object[..8])),
                    reason,
                }),
            }
        }
        if self.unsettled.len() >= RECEIPT_BATCH || self.unsettled_bytes >= SETTLE_BYTES {
            self.settle()?;
        }
        Ok(())
    }

    /// Routing duties for what the commits stored (receipts for what reached its
    /// destination here, in bulk; receipts that arrived applied), in one atomic batch.
    fn settle(&mut self) -> Result<(), FolderError> {
        let arriving = std::mem::take(&mut self.unsettled);
        self.unsettled_bytes = 0;
        self.node
            .settle_prepared(arriving, self.now, &mut self.settled)
            .map_err(|e| FolderError::Delivery(e.to_string()))
    }

    /// Move incomplete objects from memory to the store (which keeps them within its
    /// bound).
    fn spill(&mut self, sync: bool) -> Result<(), FolderError> {
        let mut recs = Vec::new();
        for (obj, p) in self.pending.drain() {
            let shards_needed = u64::from(p.params.k) * u64::from(p.params.stripes);
            for (leaf, s) in p.shards {
                let record = s.encode();
                recs.push(PartialShard {
                    object: obj,
                    leaf,
                    need: record.len() as u64 * shards_needed,
                    record,
                });
            }
        }
        self.pending_bytes = 0;
        self.ready.clear();
        self.report.partial_evicted += self.node.store.save_partial(&recs, self.now, sync)?;
        Ok(())
    }
}

/// Read every shard under `dir/mycelium/`, rebuild and store what is complete.
pub fn import(
    node: &Node,
    dir: &Path,
    opts: &ImportOptions,
    pb: &ProgressBar,
) -> Result<ImportReport, FolderError> {
    let root = dir.join(ROOT);
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => {}
        _ => return Err(FolderError::NotADrive(dir.display().to_string())),
    }
    // With no usable clock (time 0 or thereabouts) nothing is old enough to purge.
    if opts.now.0 > PARTIAL_MAX_AGE_MS {
        node.store
            .purge_partial(DtnTime(opts.now.0 - PARTIAL_MAX_AGE_MS))?;
    }
    node.store.purge_stale_objects(opts.now)?;
    // What an interrupted import stored and did not settle is settled first.
    let recovered = node
        .settle_unsettled(opts.now)
        .map_err(|e| FolderError::Delivery(e.to_string()))?;
    let mut problems = Vec::new();
    let mut imp = Importer {
        node,
        now: opts.now,
        pending: HashMap::new(),
        pending_bytes: 0,
        done: HashSet::new(),
        ready: HashSet::new(),
        queue: Vec::new(),
        queue_bytes: 0,
        report: ImportReport::default(),
        sealed: 0,
        incomplete: HashSet::new(),
        contact: rand_bytes(),
        unsettled: Vec::new(),
        unsettled_bytes: 0,
        settled: recovered,
    };
    let reject = |r: &mut ImportReport, file: &Path, reason: String| {
        let file = file.display().to_string();
        let n = r
            .rejected
            .iter()
            .rev()
            .take_while(|x| x.file == file)
            .count();
        if n < MAX_REPORTS_PER_FILE {
            r.rejected.push(Rejection { file, reason });
        } else {
            r.rejected.count_only();
        }
    };

    for path in regular_files(&root.join(HAVE), ".have", &mut problems) {
        let read = fs::metadata(&path).and_then(|m| {
            if m.len() > MAX_SIDE_FILE {
                Err(io::Error::other("too large for a have-summary"))
            } else {
                fs::read(&path)
            }
        });
        match read.map_err(|e| e.to_string()).and_then(|b| {
            HaveSummary::decode_verified(&b)
                .map(|s| (s, b))
                .map_err(|e| e.to_string())
        }) {
            Ok((s, bytes)) => {
                let node_id = s.node.node_id().to_string();
                let newer = match node.store.peer_summary(&node_id)? {
                    Some(old) => HaveSummary::decode_verified(&old)
                        .map(|o| o.generated < s.generated)
                        .unwrap_or(true),
                    None => true,
                };
                if newer && s.node != node.node_id() {
                    node.store.put_peer_summary(&node_id, &bytes)?;
                }
                imp.report.summaries += 1;
            }
            Err(reason) => reject(&mut imp.report, &path, reason),
        }
    }

    let files = regular_files(&root.join(SHARDS), ".msp", &mut problems);
    let total: u64 = files
        .iter()
        .filter_map(|p| fs::metadata(p).ok().map(|m| m.len()))
        .sum();
    pb.set_length(total);
    let mut clean_candidates: Vec<(PathBuf, HashSet<ObjectId>)> = Vec::new();
    for (n, path) in files.iter().enumerate() {
        pb.set_message(format!("import file {}/{}", n + 1, files.len()));
        imp.report.files += 1;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                reject(&mut imp.report, path, format!("cannot read: {e}"));
                continue;
            }
        };
        // While this file is verified and stored, the device reads the next one.
        if let Some(next) = files.get(n + 1) {
            super::read_ahead(next);
        }
        let mut reader = match PackReader::open(BufReader::with_capacity(1 << 20, file)) {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => {
                reject(&mut imp.report, path, reason);
                continue;
            }
            Err(e) => {
                reject(&mut imp.report, path, format!("cannot read: {e}"));
                continue;
            }
        };
        let mut objects = HashSet::new();
        let mut bad = false;
        let mut last = 0;
        // After a record that did not verify, the scan resumes right behind its header;
        // the bytes it skips are that same record and are not reported twice.
        let mut resume_at = None;
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    reject(
                        &mut imp.report,
                        path,
                        format!("read error at byte {}: {e}", reader.offset()),
                    );
                    bad = true;
                    break;
                }
            };
            match frame {
                Frame::Record { offset, bytes } => match Shard::decode_verified(&bytes) {
                    Ok(s) => {
                        imp.report.shards += 1;
                        objects.insert(s.object);
                        imp.shard(s)?;
                        // many objects can complete in one file: store them in slices
                        if imp.queue_bytes >= COMMIT_BYTES {
                            imp.commit()?;
                        }
                        // and a file may hold shards of very many objects: spill early
                        if imp.pending_bytes > PENDING_BUDGET {
                            imp.rebuild_ready();
                            imp.spill(false)?;
                            imp.commit()?;
                        }
                    }
                    Err(e) => {
                        bad = true;
                        reject(
                            &mut imp.report,
                            path,
                            format!("shard at byte {offset}: {e}"),
                        );
                        reader.unread(bytes);
                        resume_at = Some(reader.offset());
                    }
                },
                Frame::Damage { offset, reason } => {
                    bad = true;
                    if resume_at != Some(offset) {
                        reject(&mut imp.report, path, format!("at byte {offset}: {reason}"));
                    }
                }
            }
            let off = reader.offset();
            if off > last {
                pb.inc(off - last);
                imp.report.bytes += off - last;
                last = off;
            }
        }
        if imp.pending_bytes > PENDING_BUDGET {
            imp.rebuild_ready();
            imp.spill(false)?;
        }
        imp.commit()?;
        if !bad {
            clean_candidates.push((path.clone(), objects));
        }
    }
    imp.rebuild_ready();
    imp.commit()?;
    imp.spill(true)?;
    // Counted after the last spill: objects spilled earlier count too, and the ones the
    // bound did not keep are said to be dropped, not waiting.
    for obj in &imp.incomplete {
        if node.store.partial_held(obj)? {
            imp.report.incomplete += 1;
        } else {
            imp.report.incomplete_dropped += 1;
        }
    }
    // Receipts for what reached its destination here; receipts that arrived applied.
    imp.settle()?;
    let settled = std::mem::take(&mut imp.settled);
    imp.report.delivered = settled.delivered;
    imp.report.purged = settled.purged;
    imp.report.already_delivered = settled.dropped.len();
    imp.report.new -= settled.dropped.len().min(imp.report.new);
    imp.report.stored.retain(|k| !settled.dropped.contains(k));
    for p in problems {
        imp.report.rejected.push(Rejection {
            file: p.split(": ").next().unwrap_or("").to_string(),
            reason: p
                .split_once(": ")
                .map(|x| x.1.to_string())
                .unwrap_or(p.clone()),
        });
    }
    if opts.clean {
        for (path, objects) in clean_candidates {
            let mut all_stored = true;
            for o in &objects {
                if !matches!(node.store.object_status(o)?, Some(ObjectStatus::Stored(_))) {
                    all_stored = false;
                    break;
                }
            }
            if all_stored && fs::remove_file(&path).is_ok() {
                imp.report.cleaned += 1;
            }
        }
        sync_dir(&root.join(SHARDS));
        if imp.report.cleaned > 0 {
            // Catalogs would claim the deleted packs are still here and stop the next
            // export from writing those bundles again: remove them with the packs.
            let mut ignored = Vec::new();
            for c in regular_files(&root.join(CATALOG), ".cat", &mut ignored) {
                let _ = fs::remove_file(c);
            }
            sync_dir(&root.join(CATALOG));
        }
    }
    Ok(imp.report)
}
