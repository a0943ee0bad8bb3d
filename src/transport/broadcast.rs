//! The one-way broadcast feed (a satellite channel recorded to a folder): `publish` turns
//! the bundles bound for a region into feed files; `ingest` reads whatever a receiver
//! caught, with gaps, repeats and corruption, over many runs.
//!
//! Bundles are batched into segments (CBOR array of bundle byte strings, ~1 MiB), each
//! fountain-coded (`fec::fountain`). A pass sends every segment's symbols interleaved
//! round-robin across many files, so a burst of lost files costs each segment a little;
//! later passes carry fresh repair symbols. Each file is self-describing and verifiable
//! alone:
//!
//! ```text
//! "MYCFEED1" ‖ u32 BE header length ‖ header ‖ Ed25519 signature (64)
//!   header = CBOR [1, publisher node ID, feed id (16), pass, seq, file length, [record hash*]]
//!   signature over "mycelium/feed/v1" ‖ header
//! then frames "MSR1" ‖ u32 BE length ‖ record,
//!   record = CBOR [segment id (blake3 of the segment, 32), segment length, symbol size,
//!                  symbol id, symbol]
//! ```
//!
//! A record is used only if its blake3 hash is listed in the signed header, so a flipped
//! bit costs one symbol, and nobody but the publisher can add symbols to its segments
//! (symbols are kept per publisher). A file shorter than its header says is still being
//! written: it is left for the next run. Consumed files are remembered by header hash, so
//! a rerun or a replayed old file costs one header read.

use crate::bundle::{Eid, VerifiedBundle};
use crate::fec::fountain::{self, SegmentParams};
use crate::fec::pack::{push_frame, Frame, PackReader};
use crate::fec::ObjectId;
use crate::identity;
use crate::node::Node;
use crate::route::delivery::{contact_tag, ContactTag};
use crate::route::{self, Candidate};
use crate::store::{cf, PartialShard, PutOutcome, Rebuilt, StoreError};
use crate::time::DtnTime;
use crate::transport::Capped;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

pub use crate::fec::feed::FEED_MAGIC;
use crate::fec::feed::{
    decode_record, encode_record, pack_segment, unpack_segment, FileHeader, DOMAIN,
};
const EXT: &str = "mfd";
/// Largest signed header accepted (a file of 2^16 records).
const MAX_HEADER: u32 = 4 << 20;
/// A feed file with records missing is taken as final once unchanged this long.
const SETTLE_SECS: u64 = 3600;
/// Incomplete segments not completed within this time are dropped.
pub const PARTIAL_MAX_AGE_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("bad publish options: {0}")]
    Options(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("after ingest: {0}")]
    Delivery(String),
}

fn io_err(path: &Path, e: io::Error) -> BroadcastError {
    BroadcastError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Repair symbols in the first pass, as a fraction of the source symbols.
    pub overhead: f64,
    pub file_size: usize,
    pub passes: u32,
    /// Only bundles created at or after this time.
    pub since: Option<DtnTime>,
    pub symbol_size: u16,
    pub segment_size: usize,
    pub now: DtnTime,
}

impl PublishOptions {
    pub fn new(now: DtnTime) -> Self {
        PublishOptions {
            overhead: 0.3,
            file_size: 1 << 20,
            passes: 1,
            since: None,
            symbol_size: 1024,
            segment_size: 1 << 20,
            now,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    pub bundles: usize,
    pub segments: usize,
    pub files: usize,
    pub bytes: u64,
    pub feed_id: String,
}

/// Write feed files for the bundles that should go out, into `out`.
pub fn publish(
    node: &Node,
    out: &Path,
    opts: &PublishOptions,
    pb: &ProgressBar,
) -> Result<PublishReport, BroadcastError> {
    if !(0.0..=10.0).contains(&opts.overhead) || opts.passes == 0 || opts.passes > 100 {
        return Err(BroadcastError::Options(
            "overhead must be 0 to 10 and passes 1 to 100".into(),
        ));
    }
    if opts.symbol_size < 64
        || !opts.symbol_size.is_multiple_of(8)
        || opts.file_size < 2 * opts.symbol_size as usize
    {
        return Err(BroadcastError::Options(
            "symbol size must be a multiple of 8, at least 64, and files hold at least two".into(),
        ));
    }
    fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let recs = node.store.records()?;
    let created: HashMap<[u8; 32], u64> = recs.iter().map(|(k, r)| (*k, r.created_ms)).collect();
    let cands: Vec<Candidate> = recs
        .into_iter()
        .map(|(key, r)| Candidate {
            key,
            kind: r.kind,
            expires_at: r.expires_at,
            cost: r.size,
        })
        .collect();
    let held_back = node.store.held_back(&node.node_id())?;
    let (plan, _) = route::plan(cands, opts.now, u64::MAX, |c| {
        held_back.contains(&c.key)
            || opts
                .since
                .is_some_and(|s| created.get(&c.key).copied().unwrap_or(0) < s.0)
    });

    // Segments of about segment_size, in priority order.
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut cur_len = 0;
    let mut bundles = 0;
    for c in &plan {
        let Some(raw) = node.store.get_raw(&c.key)? else {
            continue;
        };
        if cur_len + raw.len() > opts.segment_size && !cur.is_empty() {
            let refs: Vec<&[u8]> = cur.iter().map(Vec::as_slice).collect();
            segments.push(pack_segment(&refs));
            cur.clear();
            cur_len = 0;
        }
        cur_len += raw.len();
        cur.push(raw);
        bundles += 1;
    }
    if !cur.is_empty() {
        let refs: Vec<&[u8]> = cur.iter().map(Vec::as_slice).collect();
        segments.push(pack_segment(&refs));
    }
    let mut encoded = Vec::with_capacity(segments.len());
    for seg in &segments {
        let id = *blake3::hash(seg).as_bytes();
        // A segment holding one very large bundle gets symbols large enough to stay within
        // one RaptorQ source block.
        let min_symbol = (seg.len() as u64)
            .div_ceil(fountain::MAX_SOURCE_SYMBOLS)
            .next_multiple_of(8);
        let symbol = u16::try_from(min_symbol.max(u64::from(opts.symbol_size))).map_err(|_| {
            BroadcastError::Options(format!(
                "a {}-byte segment is too large for the feed",
                seg.len()
            ))
        })?;
        let e = fountain::encode(seg, symbol, opts.overhead, opts.passes)
            .map_err(|e| BroadcastError::Options(e.to_string()))?;
        encoded.push((id, e));
    }
    drop(segments);

    let mut feed_id = [0u8; 16];
    {
        use rand_core::RngCore;
        rand_core::OsRng.fill_bytes(&mut feed_id);
    }
    let publisher = node.node_id();
    let per_record = opts.symbol_size as usize + 8 + 60;
    // The signed header lists one 32-byte hash per record: keep it under MAX_HEADER.
    let per_file = ((opts.file_size.saturating_sub(400)) / (per_record + 34)).clamp(1, 100_000);
    let mut report = PublishReport {
        bundles,
        segments: encoded.len(),
        feed_id: hex::encode(&feed_id[..4]),
        ..Default::default()
    };
    pb.set_length(opts.passes as u64);
    for pass in 0..opts.passes {
        let counts: Vec<usize> = encoded
            .iter()
            .map(|(_, e)| e.passes[pass as usize].len())
            .collect();
        for (seq, chunk) in route::interleave(&counts, per_file).iter().enumerate() {
            let records: Vec<Vec<u8>> = chunk
                .iter()
                .map(|(s, i)| {
                    let (id, e) = &encoded[*s];
                    let (sym, data) = &e.passes[pass as usize][*i];
                    encode_record(id, e.params, *sym, data)
                })
                .collect();
            let name = format!("feed-{}-p{:02}-{:06}.{EXT}", report.feed_id, pass + 1, seq);
            let bytes = build_file(node, &publisher, feed_id, pass, seq as u32, &records);
            write_atomic(out, &name, &bytes)?;
            report.files += 1;
            report.bytes += bytes.len() as u64;
        }
        pb.inc(1);
    }
    super::sync_dir(out);
    Ok(report)
}

fn build_file(
    node: &Node,
    publisher: &Eid,
    feed_id: [u8; 16],
    pass: u32,
    seq: u32,
    records: &[Vec<u8>],
) -> Vec<u8> {
    let mut body = Vec::new();
    for r in records {
        push_frame(&mut body, r);
    }
    let mut header = FileHeader {
        publisher: publisher.clone(),
        feed_id,
        pass,
        seq,
        file_len: 0,
        hashes: records
            .iter()
            .map(|r| *blake3::hash(r).as_bytes())
            .collect(),
    };
    // The file length is inside the header; its encoding length settles after one round.
    for _ in 0..3 {
        let hl = header.encode().len() as u64;
        header.file_len = 8 + 4 + hl + 64 + body.len() as u64;
    }
    let h = header.encode();
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&h);
    let sig = node.identity.sign(&msg);
    let mut out = Vec::with_capacity(h.len() + body.len() + 80);
    out.extend_from_slice(FEED_MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&sig);
    out.extend_from_slice(&body);
    out
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BroadcastError> {
    super::write_atomic(dir, name, bytes).map_err(|e| io_err(&dir.join(name), e))
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Accept files and bundles signed by any valid key, not only trusted ones.
    pub any_signer: bool,
    pub now: DtnTime,
}

/// A problem with one file (or part of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    pub files_read: usize,
    pub files_already_consumed: usize,
    pub files_incomplete: usize,
    pub bytes: u64,
    pub symbols: usize,
    pub segments_completed: usize,
    pub new: usize,
    pub duplicate: usize,
    pub untrusted_bundles: usize,
    /// Incomplete segments of any origin evicted to stay within the store's bound.
    pub partial_evicted: u64,
    /// Relayed sealed bundles evicted to stay within the store's sealed bound.
    pub sealed_evicted: u64,
    /// The first [`Capped::KEEP`] problems, all counted.
    pub problems: Capped<Problem>,
    pub stored: Vec<[u8; 32]>,
    /// Per feed: (files seen, highest sequence + 1) for each pass, for a loss estimate.
    pub seen: BTreeMap<(String, u32), (u32, u32)>,
}

impl IngestReport {
    /// Fraction of files missing among the feeds and passes seen (an estimate: files past
    /// the last one caught are not counted).
    pub fn loss_estimate(&self) -> f64 {
        let (got, span) = self.seen.values().fold((0u64, 0u64), |(g, s), (a, b)| {
            (g + u64::from(*a), s + u64::from(*b))
        });
        if span == 0 {
            0.0
        } else {
            1.0 - got as f64 / span as f64
        }
    }
}

/// The store key of a publisher's segment: symbols of one publisher never mix with
/// another's, so a forger cannot poison a segment it did not publish.
fn segment_key(publisher: &Eid, segment: &[u8; 32]) -> ObjectId {
    let mut h = blake3::Hasher::new_derive_key("mycelium feed segment v1");
    h.update(publisher.to_string().as_bytes());
    h.update(segment);
    *h.finalize().as_bytes()
}

fn feed_files(dir: &Path, problems: &mut Vec<Problem>) -> Result<Vec<PathBuf>, BroadcastError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(super::TMP_PREFIX) || !name.ends_with(&format!(".{EXT}")) {
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => out.push(path),
            Ok(m) if m.file_type().is_symlink() => problems.push(Problem {
                file: path.display().to_string(),
                reason: "symbolic link, not followed".into(),
            }),
            Ok(_) => problems.push(Problem {
                file: path.display().to_string(),
                reason: "not a regular file".into(),
            }),
            Err(e) => problems.push(Problem {
                file: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
    out.sort();
    Ok(out)
}

enum Opened {
    /// Header, header hash, the records (behind a stand-in 8-byte pack header), and the
    /// offset in the file where the records start.
    Ready(
        FileHeader,
        [u8; 32],
        Box<PackReader<ChainMagic<BufReader<fs::File>>>>,
        u64,
    ),
    /// Shorter than its header says: still being written; try again later.
    Incomplete,
    Bad(String),
}

fn open_feed_file(path: &Path) -> Result<Opened, io::Error> {
    let f = fs::File::open(path)?;
    let actual = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < 12 {
        match r.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got < 12 {
        // Empty, or the start of a feed file still being written.
        return Ok(if FEED_MAGIC.starts_with(&head[..got.min(8)]) {
            Opened::Incomplete
        } else {
            Opened::Bad("not a Mycelium feed file (bad magic)".into())
        });
    }
    if &head[..8] != FEED_MAGIC {
        return Ok(Opened::Bad("not a Mycelium feed file (bad magic)".into()));
    }
    let hl = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if hl > MAX_HEADER {
        return Ok(Opened::Bad(format!(
            "header announces {hl} bytes, more than the {MAX_HEADER}-byte limit"
        )));
    }
    if actual < 12 + u64::from(hl) + 64 {
        return Ok(Opened::Incomplete);
    }
    let mut hbuf = vec![0u8; hl as usize + 64];
    r.read_exact(&mut hbuf)?;
    let (h, sig) = hbuf.split_at(hl as usize);
    let header = match FileHeader::decode(h) {
        Ok(x) => x,
        Err(e) => return Ok(Opened::Bad(format!("bad header: {e}"))),
    };
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(h);
    let sig: [u8; 64] = sig.try_into().unwrap_or([0; 64]);
    if !identity::verify_by_node(&header.publisher, &msg, &sig) {
        return Ok(Opened::Bad(format!(
            "header signature by {} does not verify (corrupted or forged)",
            header.publisher
        )));
    }
    if header.publisher.node_id() != header.publisher {
        return Ok(Opened::Bad(format!(
            "publisher {} is not a node ID",
            header.publisher
        )));
    }
    if actual < header.file_len {
        return Ok(Opened::Incomplete);
    }
    let key = *blake3::hash(h).as_bytes();
    // The records follow; PackReader wants its own 8-byte header, so give it one.
    let pr = match PackReader::open(ChainMagic::new(r)) {
        Ok(Ok(p)) => p,
        _ => return Ok(Opened::Bad("unreadable records".into())),
    };
    Ok(Opened::Ready(
        header,
        key,
        Box::new(pr),
        12 + u64::from(hl) + 64,
    ))
}

/// Presents `PACK_MAGIC` followed by the inner reader, so feed records reuse the pack
/// frame reader.
pub struct ChainMagic<R> {
    pre: &'static [u8],
    inner: R,
}

impl<R: Read> ChainMagic<R> {
    fn new(inner: R) -> Self {
        ChainMagic {
            pre: crate::fec::pack::PACK_MAGIC,
            inner,
        }
    }
}

impl<R: Read> Read for ChainMagic<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pre.is_empty() {
            let n = buf.len().min(self.pre.len());
            buf[..n].copy_from_slice(&self.pre[..n]);
            self.pre = &self.pre[n..];
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Files a watching ingest has finished with (consumed or bad), by length and mtime, so a
/// rescan after each file-system event does not reopen them.
#[derive(Default)]
pub struct SeenFiles(HashMap<PathBuf, (u64, Option<std::time::SystemTime>)>);

impl SeenFiles {
    fn stamp(path: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
        fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    }

    fn done(&self, path: &Path) -> bool {
        match (self.0.get(path), Self::stamp(path)) {
            (Some(a), Some(b)) => *a == b,
            _ => false,
        }
    }

    fn mark(&mut self, path: &Path) {
        if let Some(s) = Self::stamp(path) {
            self.0.insert(path.to_path_buf(), s);
        }
    }
}

/// Ingest every complete, not yet consumed feed file in `dir`.
pub fn ingest(
    node: &Node,
    dir: &Path,
    opts: &IngestOptions,
    pb: &ProgressBar,
) -> Result<IngestReport, BroadcastError> {
    ingest_with(node, dir, opts, pb, &mut SeenFiles::default())
}

/// [`ingest`], skipping files `seen` says are finished and recording the ones it finishes.
pub fn ingest_with(
    node: &Node,
    dir: &Path,
    opts: &IngestOptions,
    pb: &ProgressBar,
    seen_files: &mut SeenFiles,
) -> Result<IngestReport, BroadcastError> {
    let mut report = IngestReport::default();
    if opts.now.0 > PARTIAL_MAX_AGE_MS {
        node.store
            .purge_partial(DtnTime(opts.now.0 - PARTIAL_MAX_AGE_MS))?;
    }
    node.store.purge_stale_objects(opts.now)?;
    // What an interrupted ingest or import stored and did not settle is settled first.
    node.settle_unsettled(opts.now)
        .map_err(|e| BroadcastError::Delivery(e.to_string()))?;
    let mut problems = Vec::new();
    let files = feed_files(dir, &mut problems)?;
    for p in problems {
        report.problems.push(p);
    }
    let mut trusted_cache: HashMap<String, bool> = HashMap::new();
    // Symbols held per incomplete segment, counted once from the store, then kept up to date.
    let mut held: HashMap<ObjectId, usize> = HashMap::new();
    let mut trusted = |node: &Node, who: &Eid| -> Result<bool, StoreError> {
        if opts.any_signer {
            return Ok(true);
        }
        let k = who.node_id().to_string();
        if let Some(t) = trusted_cache.get(&k) {
            return Ok(*t);
        }
        let t = node.store.trusted_for_broadcast(&k)?;
        trusted_cache.insert(k, t);
        Ok(t)
    };
    pb.set_length(files.len() as u64);
    for path in &files {
        pb.inc(1);
        if seen_files.done(path) {
            report.files_already_consumed += 1;
            continue;
        }
        let problem = |report: &mut IngestReport, reason: String| {
            report.problems.push(Problem {
                file: path.display().to_string(),
                reason,
            })
        };
        let (header, key, mut reader, body_at) = match open_feed_file(path) {
            Ok(Opened::Ready(h, k, r, b)) => (h, k, r, b),
            Ok(Opened::Incomplete) => {
                report.files_incomplete += 1;
                continue;
            }
            Ok(Opened::Bad(reason)) => {
                problem(&mut report, reason);
                seen_files.mark(path);
                continue;
            }
            Err(e) => {
                problem(&mut report, format!("cannot read: {e}"));
                continue;
            }
        };
        if node.store.feed_file_consumed(&key)? {
            report.files_already_consumed += 1;
            seen_files.mark(path);
            continue;
        }
        let publisher = header.publisher.node_id();
        if !trusted(node, &publisher)? {
            problem(
                &mut report,
                format!("published by {publisher}, which this node does not trust for broadcast (mycelium trust add {publisher} --broadcast)"),
            );
            continue;
        }
        report.files_read += 1;
        let seen = report
            .seen
            .entry((hex::encode(&header.feed_id[..4]), header.pass))
            .or_insert((0, 0));
        seen.0 += 1;
        seen.1 = seen.1.max(header.seq + 1);
        // Sealed bundles in this feed are held for relaying on its publisher's account.
        let contact = contact_tag(&publisher.to_string());
        let listed: HashSet<[u8; 32]> = header.hashes.iter().copied().collect();
        let mut found = 0usize;
        let mut batch: Vec<PartialShard> = Vec::new();
        let mut touched: HashMap<ObjectId, ([u8; 32], SegmentParams)> = HashMap::new();
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    problem(&mut report, format!("read error: {e}"));
                    break;
                }
            };
            match frame {
                Frame::Record { offset, bytes } => {
                    let offset = offset + body_at - 8;
                    if !listed.contains(blake3::hash(&bytes).as_bytes()) {
                        problem(
                            &mut report,
                            format!(
                                "record at byte {offset} is not in the signed header (corrupted)"
                            ),
                        );
                        reader.unread(bytes);
                        continue;
                    }
                    found += 1;
                    match decode_record(&bytes) {
                        Ok(rec) => {
                            let obj = segment_key(&publisher, &rec.segment);
                            report.symbols += 1;
                            touched.insert(obj, (rec.segment, rec.params));
                            batch.push(PartialShard {
                                object: obj,
                                leaf: u64::from(rec.symbol),
                                need: bytes.len() as u64 * u64::from(rec.params.source_symbols()),
                                record: bytes.clone(),
                            });
                        }
                        Err(e) => problem(&mut report, format!("record at byte {offset}: {e}")),
                    }
                }
                Frame::Damage { offset, reason } => {
                    let offset = offset + body_at - 8;
                    problem(&mut report, format!("at byte {offset}: {reason}"))
                }
            }
        }
        report.bytes += reader.offset() + body_at - 8;
        // Symbols of segments already rebuilt are not kept again.
        let mut done = HashSet::new();
        for obj in touched.keys() {
            if node.store.object_status(obj)?.is_some() {
                done.insert(*obj);
            }
        }
        batch.retain(|p| !done.contains(&p.object));
        for obj in touched.keys().filter(|o| !done.contains(*o)) {
            if !held.contains_key(obj) {
                held.insert(*obj, node.store.partial_count(obj)?);
            }
        }
        for p in &batch {
            // a repeated symbol overwrites its key (and the bound may evict a segment): the
            // count may run high, which only means a decode is tried and finds it needs more
            *held.entry(p.object).or_insert(0) += 1;
        }
        report.partial_evicted += node.store.save_partial(&batch, opts.now, false)?;
        let mut rebuilt = Vec::new();
        let mut rebuilt_bytes = 0usize;
        for (obj, (segment, params)) in touched {
            if done.contains(&obj) {
                continue;
            }
            if held.get(&obj).copied().unwrap_or(0) < params.source_symbols() as usize {
                continue;
            }
            match try_segment(
                node,
                &obj,
                &segment,
                params,
                opts,
                &publisher,
                &mut trusted,
                &mut report,
            )? {
                Some(r) => {
                    held.remove(&obj);
                    rebuilt_bytes += params.len as usize;
                    rebuilt.push(r);
                }
                // not decodable yet: recount exactly, so repeats do not fool the next try
                None => {
                    held.insert(obj, node.store.partial_count(&obj)?);
                }
            }
            // Many segments may complete with one file: store them in slices so memory
            // stays bounded by the slice, not by the feed.
            if rebuilt_bytes >= COMMIT_BYTES {
                commit(node, &mut rebuilt, &[], opts.now, &contact, &mut report)?;
                rebuilt_bytes = 0;
            }
        }
        // The rest, and this file marked consumed, in one synced write. A file with records
        // missing that changed within the last hour may be a recorder's preallocated file
        // still being filled: it is read again next time instead.
        let settled = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age.as_secs() >= SETTLE_SECS);
        let finished = found >= listed.len() || settled;
        let consumed = if finished {
            vec![(
                cf::FEED_FILES,
                key.to_vec(),
                opts.now.0.to_be_bytes().to_vec(),
            )]
        } else {
            report.files_incomplete += 1;
            Vec::new()
        };
        commit(
            node,
            &mut rebuilt,
            &consumed,
            opts.now,
            &contact,
            &mut report,
        )?;
        if finished {
            seen_files.mark(path);
        }
    }
    let settled = node
        .settle_arrivals(&report.stored, opts.now)
        .map_err(|e| BroadcastError::Delivery(e.to_string()))?;
    report.new -= settled.dropped.len().min(report.new);
    report.stored.retain(|k| !settled.dropped.contains(k));
    Ok(report)
}

/// Rebuilt segments are committed in slices of about this many bytes.
const COMMIT_BYTES: usize = 8 << 20;

/// Store rebuilt segments (and `extra` writes) in one synced batch and count the outcome.
fn commit(
    node: &Node,
    rebuilt: &mut Vec<Rebuilt>,
    extra: &[(&str, Vec<u8>, Vec<u8>)],
    now: DtnTime,
    contact: &ContactTag,
    report: &mut IngestReport,
) -> Result<(), BroadcastError> {
    let committed = node
        .store
        .commit_rebuilt(rebuilt, extra, now, Some(contact))?;
    report.sealed_evicted += committed.sealed_evicted.count;
    for (it, outs) in rebuilt.iter().zip(committed.outcomes) {
        match &it.result {
            Ok(vbs) => {
                report.segments_completed += 1;
                for (vb, o) in vbs.iter().zip(outs) {
                    match o {
                        PutOutcome::New => {
                            report.new += 1;
                            report.stored.push(vb.id().key());
                        }
                        PutOutcome::Duplicate => report.duplicate += 1,
                    }
                }
            }
            Err(reason) => report.problems.push(Problem {
                file: format!("segment {}", hex::encode(&it.object[..8])),
                reason: reason.clone(),
            }),
        }
    }
    rebuilt.clear();
    Ok(())
}

/// Decode a segment from its stored symbols; `None` while more symbols are needed.
#[allow(clippy::too_many_arguments)]
fn try_segment(
    node: &Node,
    obj: &ObjectId,
    segment: &[u8; 32],
    params: SegmentParams,
    opts: &IngestOptions,
    publisher: &Eid,
    trusted: &mut impl FnMut(&Node, &Eid) -> Result<bool, StoreError>,
    report: &mut IngestReport,
) -> Result<Option<Rebuilt>, BroadcastError> {
    let recs = node.store.partial_shards(obj)?;
    let mut symbols: Vec<(u32, &[u8])> = Vec::with_capacity(recs.len());
    for r in &recs {
        if let Ok(rec) = decode_record(r) {
            if rec.params == params && &rec.segment == segment {
                symbols.push((rec.symbol, rec.data));
            }
        }
    }
    let data = match fountain::decode(params, &symbols) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Ok(Some(Rebuilt {
                object: *obj,
                result: Err(format!("segment from {publisher}: {e}")),
                had_partial: true,
            }))
        }
    };
    if blake3::hash(&data).as_bytes() != segment {
        return Ok(Some(Rebuilt {
            object: *obj,
            result: Err(format!("segment from {publisher} does not match its id")),
            had_partial: true,
        }));
    }
    let bundles = match unpack_segment(&data) {
        Ok(b) => b,
        Err(e) => {
            return Ok(Some(Rebuilt {
                object: *obj,
                result: Err(format!("malformed segment from {publisher}: {e}")),
                had_partial: true,
            }))
        }
    };
    let mut ok = Vec::new();
    // Signatures and stamps checked on every core.
    let decoded: Vec<_> = {
        use rayon::prelude::*;
        bundles
            .par_iter()
            .map(|raw| VerifiedBundle::decode(raw))
            .collect()
    };
    for d in decoded {
        match d {
            Ok(vb) => {
                if vb.bundle().expires_at(opts.now) <= opts.now {
                    continue;
                }
                // A sealed bundle has no signer to trust (its source is dtn:none); it is
                // taken on the word of the trusted publisher who signed this feed file,
                // and already carries a valid stamp.
                // Releases come from the keys trusted for them, whoever's feed carries them.
                let release = || -> Result<bool, StoreError> {
                    let kind = crate::adu::kind_label(vb.bundle().payload());
                    Ok((kind == crate::adu::release::KIND_RELEASE
                        || kind == crate::adu::release::KIND_RELEASE_CHUNK)
                        && node.store.trusted_for_release(
                            &vb.bundle().primary.source.node_id().to_string(),
                        )?)
                };
                if vb.is_sealed() || trusted(node, &vb.bundle().primary.source)? || release()? {
                    ok.push(vb);
                } else {
                    report.untrusted_bundles += 1;
                }
            }
            Err(e) => report.problems.push(Problem {
                file: format!("segment {}", hex::encode(&segment[..8])),
                reason: format!("bundle refused: {e}"),
            }),
        }
    }
    Ok(Some(Rebuilt {
        object: *obj,
        result: Ok(ok),
        had_partial: true,
    }))
}

impl IngestReport {
    /// The report as JSON (what `broadcast ingest --json` prints), with `partial`
    /// segments still incomplete in the store.
    pub fn to_json(&self, partial: usize) -> serde_json::Value {
        let r = self;
        serde_json::json!({
            "files_read": r.files_read, "files_already_consumed": r.files_already_consumed,
            "files_incomplete": r.files_incomplete, "bytes": r.bytes, "symbols": r.symbols,
            "segments_completed": r.segments_completed, "segments_partial": partial,
            "new": r.new, "duplicate": r.duplicate, "untrusted_bundles": r.untrusted_bundles,
            "loss_estimate": r.loss_estimate(),
            "partial_evicted": r.partial_evicted, "sealed_evicted": r.sealed_evicted,
            "problems_total": r.problems.total(),
            "problems": r.problems.iter().map(|p| serde_json::json!({"file": p.file, "reason": p.reason})).collect::<Vec<_>>(),
            "stored": r.stored.iter().map(hex::encode).collect::<Vec<_>>(),
        })
    }
}
