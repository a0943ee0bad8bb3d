//! The marketplace over a node's store: takes the bundles addressed to the marketplace
//! that it has not processed yet (tasks, results, payments, offers, guild charters and
//! memberships), runs
//! them through the rules in batches, signs (and, where the recipient's key is known,
//! seals) what the rules send, and commits ledger changes, "processed" marks and the new
//! bundles in one synced write per batch. A crash between batches loses nothing: an
//! unmarked bundle is simply processed again.
//!
//! The ledger lives in the node's own store ([`Ledger::Local`]) or in an etcd cluster that
//! several front nodes share ([`Ledger::Etcd`]): there each batch is an optimistic etcd
//! transaction (run again on conflict), the "processed" marks are shared, and what a batch
//! sends goes through etcd's outbox (see [`super::etcd`]); this node also marks locally
//! what it has handed to the ledger.
//!
//! Owns: driving the marketplace from the store.

use super::engine::{Engine, Event, WorkerState};
use super::etcd::{Committed, EtcdError, EtcdLedger, SEQ_BLOCK_BITS};
use super::ledger::{Kv, KvWrite, Txn};
use super::MarketError;
use crate::adu::{self, market as m, Adu, MarketAdu};
use crate::bundle::Eid;
use crate::node::{Node, NodeError};
use crate::store::{Store, StoreError};
use crate::time::DtnTime;
use std::sync::Arc;

/// Bundles processed per ledger commit.
pub const BATCH: usize = 512;
/// Bundles per etcd transaction at first (halved while etcd refuses one as too large).
pub const ETCD_BATCH: usize = 64;
/// Attempts of one batch that keep meeting another front node's commits.
const ETCD_ATTEMPTS: u32 = 200;

/// Where the marketplace's ledger lives.
#[derive(Clone, Default)]
pub enum Ledger {
    /// In this node's own store: one marketplace node.
    #[default]
    Local,
    /// In an etcd cluster shared by the marketplace's front nodes.
    Etcd(Arc<EtcdLedger>),
}

impl Ledger {
    /// The ledger at `addr` (`etcd://HOST:PORT[,...]`), or this node's store for `None`.
    /// A front node that has never done so claims its own block of creation sequence
    /// numbers here (so it needs etcd the first time).
    pub fn open(node: &Node, addr: Option<&str>) -> Result<Ledger, ServiceError> {
        let Some(addr) = addr else {
            return Ok(Ledger::Local);
        };
        let l = EtcdLedger::connect(addr, &node.node_id().to_string())?;
        if node.store.next_creation_seq()? < 1 << SEQ_BLOCK_BITS {
            let floor = l.claim_sequence_block()?;
            node.store.raise_creation_seq(floor)?;
            tracing::info!(
                block = floor >> SEQ_BLOCK_BITS,
                "front node claimed its block of creation sequence numbers"
            );
        }
        Ok(Ledger::Etcd(Arc::new(l)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Market(#[from] MarketError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("the ledger in etcd kept changing under this batch: {0} attempts, none committed")]
    Busy(u32),
}

/// The ledger column family as the rules' [`Kv`].
pub struct StoreKv<'s>(pub &'s Store);

impl Kv for StoreKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MarketError> {
        self.0
            .ledger_get(key)
            .map_err(|e| MarketError::Storage(e.to_string()))
    }
    fn scan(&self, prefix: &[u8]) -> Result<super::ledger::Entries, MarketError> {
        self.0
            .ledger_scan(prefix)
            .map_err(|e| MarketError::Storage(e.to_string()))
    }
}

/// What one [`process`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// Bundles taken from the store.
    pub processed: usize,
    /// Bundles signed and stored for sending.
    pub sent: usize,
    pub events: Vec<Event>,
}

fn done_key(key: &[u8; 32]) -> Vec<u8> {
    [b"done/".as_slice(), key].concat()
}

/// Sign (and seal) what a transaction sends and commit it with the transaction.
pub fn commit(node: &Node, tx: Txn, now: DtnTime, seal: bool) -> Result<usize, ServiceError> {
    let (writes, out) = tx.into_parts();
    let (c, n) = sign(node, out, now, seal)?;
    node.store
        .commit_ledger(&writes, &c.bundles, &c.private, now)?;
    Ok(n)
}

fn sign(
    node: &Node,
    out: Vec<super::Outgoing>,
    now: DtnTime,
    seal: bool,
) -> Result<(crate::node::Composed, usize), ServiceError> {
    let mut to_sign = Vec::with_capacity(out.len());
    for o in out {
        let to = match &o.to {
            Some(n) => Some(Eid::parse(n).map_err(NodeError::from)?),
            None => None,
        };
        to_sign.push((to, o.payload, o.lifetime_ms));
    }
    Ok((node.compose(&to_sign, now, seal)?, to_sign.len()))
}

/// How to run one batch on etcd: the time, whether to seal what it sends, ledger writes for
/// this node's own store once it commits, how long etcd keeps its processed marks.
struct Step<'a> {
    now: DtnTime,
    seal: bool,
    local: &'a [KvWrite],
    done_ttl_s: i64,
}

/// A committed batch: what `f` returned, the rules' events, how many bundles it sent.
struct Done<T> {
    value: T,
    events: Vec<Event>,
    sent: usize,
}

/// One batch of the rules on the etcd ledger, run again while another front node's commit
/// changes what it read. `f` builds the batch's engine work (it may run several times);
/// `local` are ledger writes for this node's own store, made once the batch commits.
fn etcd_batch<T>(
    node: &Node,
    l: &EtcdLedger,
    how: Step,
    mut check: Option<&mut GenerationCheck>,
    f: &mut dyn FnMut(&mut Engine) -> Result<T, ServiceError>,
) -> Result<Result<Done<T>, EtcdError>, ServiceError> {
    let Step {
        now,
        seal,
        local,
        done_ttl_s,
    } = how;
    let me = node.node_id().to_string();
    for attempt in 0..ETCD_ATTEMPTS {
        let snap = l.batch_view();
        let mut eng = Engine::new(Txn::new(&snap), &me, now.0);
        if let Some(check) = check.as_deref_mut() {
            eng.check = Some(Box::new(move |t, o| check(t, o)));
        }
        // The rules read through this node's cache: an error may come of a stale view.
        let run = f(&mut eng).and_then(|v| Ok((v, eng.finish()?)));
        let (v, (tx, events)) = match run {
            Ok(r) => r,
            Err(e) => {
                if l.current(&snap)? {
                    return Err(e);
                }
                continue;
            }
        };
        let (writes, out) = tx.into_parts();
        let (c, sent) = sign(node, out, now, seal)?;
        let private: std::collections::HashSet<[u8; 32]> = c.private.iter().copied().collect();
        let outbox: Vec<super::etcd::OutboxEntry> = c
            .bundles
            .iter()
            .map(|vb| {
                let key = vb.id().key();
                (key, outbox_value(private.contains(&key), vb.raw()))
            })
            .collect();
        match l.commit(&snap, &writes, &outbox, done_ttl_s) {
            Ok(Committed::Yes) => {
                node.store
                    .commit_ledger(local, &c.bundles, &c.private, now)?;
                // Stored here: the outbox entries are no longer needed (cleared in the
                // background; if that fails, the next step of any front node stores them
                // again, the same bytes, and clears them).
                l.clear_outbox_soon(outbox.iter().map(|o| o.0).collect());
                return Ok(Ok(Done {
                    value: v,
                    events,
                    sent,
                }));
            }
            Ok(Committed::Conflict { raced: false }) => {
                tracing::debug!(attempt, "batch read keys this node had not cached: again");
            }
            Ok(Committed::Conflict { raced: true }) => {
                tracing::debug!(attempt, "ledger changed under the batch: again");
                // Again at once, on what the failed commit brought back: a front node that
                // waited here would leave the one that just committed to win every race.
                // Only a batch that keeps losing steps aside a moment, by chance.
                if attempt >= 8 {
                    let spin = rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 4;
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(spin)));
                }
            }
            Err(e @ EtcdError::TooLarge { .. }) => return Ok(Err(e)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Busy(ETCD_ATTEMPTS))
}

/// An outbox entry: a flag byte (1: private to the marketplace, 0: travels), the bundle.
fn outbox_value(private: bool, raw: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(raw.len() + 1);
    v.push(private as u8);
    v.extend_from_slice(raw);
    v
}

/// Store what etcd's outbox holds (bundles some front node committed and may not have
/// stored: it died first), then clear it. Only bundles signed by this marketplace are
/// taken. Returns how many were new here.
pub fn take_outbox(node: &Node, l: &EtcdLedger, now: DtnTime) -> Result<usize, ServiceError> {
    let mut entries = l.outbox()?;
    // This node's own, stored already and being cleared.
    entries.retain(|(key, _)| !l.being_cleared(key));
    if entries.is_empty() {
        return Ok(0);
    }
    let me = node.node_id();
    let (mut bundles, mut private, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (key, v) in entries {
        keys.push(key);
        let Some((flag, raw)) = v.split_first() else {
            tracing::warn!("empty outbox entry {} in etcd: dropped", hex::encode(key));
            continue;
        };
        match crate::bundle::VerifiedBundle::decode(raw) {
            Ok(vb) if vb.id().key() == key && vb.bundle().primary.source.node_id() == me => {
                if *flag == 1 {
                    private.push(key);
                }
                bundles.push(vb);
            }
            Ok(_) => tracing::warn!(
                "outbox entry {} in etcd is not this marketplace's bundle: dropped",
                hex::encode(key)
            ),
            Err(e) => tracing::warn!("outbox entry {} in etcd: {e}: dropped", hex::encode(key)),
        }
    }
    let new = bundles
        .iter()
        .filter(|vb| matches!(node.store.record(&vb.id().key()), Ok(None)))
        .count();
    node.store.commit_ledger(&[], &bundles, &private, now)?;
    l.clear_outbox(&keys)?;
    Ok(new)
}

/// Judges a `generate` answer against its task: `None` when it cannot here (the model is
/// not held), else whether the answer passes.
pub type GenerationCheck = dyn FnMut(&m::Task, &[u8]) -> Option<Result<(), String>>;

/// Run one step of the rules with `f`, then commit.
pub fn with_engine<T>(
    node: &Node,
    now: DtnTime,
    seal: bool,
    f: impl FnOnce(&mut Engine) -> Result<T, MarketError>,
) -> Result<(T, Vec<Event>), ServiceError> {
    let _one = node.rules_lock();
    local_engine(node, now, seal, f)
}

/// [`with_engine`] on `ledger` (on etcd `f` may run more than once: the batch is run
/// again when another front node's commit changed what it read).
pub fn with_engine_on<T>(
    node: &Node,
    ledger: &Ledger,
    now: DtnTime,
    seal: bool,
    mut f: impl FnMut(&mut Engine) -> Result<T, MarketError>,
) -> Result<(T, Vec<Event>), ServiceError> {
    let _one = node.rules_lock();
    match ledger {
        Ledger::Local => local_engine(node, now, seal, f),
        Ledger::Etcd(l) => {
            let how = Step {
                now,
                seal,
                local: &[],
                done_ttl_s: 0,
            };
            let d = etcd_batch(node, l, how, None, &mut |e| Ok(f(e)?))??;
            Ok((d.value, d.events))
        }
    }
}

fn local_engine<T>(
    node: &Node,
    now: DtnTime,
    seal: bool,
    f: impl FnOnce(&mut Engine) -> Result<T, MarketError>,
) -> Result<(T, Vec<Event>), ServiceError> {
    let kv = StoreKv(&node.store);
    let me = node.node_id().to_string();
    let mut eng = Engine::new(Txn::new(&kv), &me, now.0);
    let v = f(&mut eng)?;
    let (tx, events) = eng.finish()?;
    commit(node, tx, now, seal)?;
    Ok((v, events))
}

/// Process everything new addressed to this marketplace, match open tasks, close those
/// past their deadline.
///
/// `check` judges a `generate` answer against the task (`None`: cannot judge here, e.g. the
/// model is not held); the worker role provides one (`worker::judge`), so the marketplace
/// does not depend on the engines.
pub fn process(
    node: &Node,
    now: DtnTime,
    seal: bool,
    check: &mut GenerationCheck,
) -> Result<Report, ServiceError> {
    process_on(node, &Ledger::Local, now, seal, check)
}

/// [`process`] with the ledger in `ledger`.
pub fn process_on(
    node: &Node,
    ledger: &Ledger,
    now: DtnTime,
    seal: bool,
    check: &mut GenerationCheck,
) -> Result<Report, ServiceError> {
    let _one = node.rules_lock();
    let mut report = Report::default();
    if let Ledger::Etcd(l) = ledger {
        report.sent += take_outbox(node, l, now)?;
    }
    let (pending, expiry) = pending(node)?;
    match ledger {
        Ledger::Local => {
            let mut chunks: Vec<&[[u8; 32]]> = pending.chunks(BATCH).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                let kv = StoreKv(&node.store);
                let mut eng = Engine::new(Txn::new(&kv), &node.node_id().to_string(), now.0);
                let check = &mut *check;
                eng.check = Some(Box::new(move |t, o| check(t, o)));
                report.processed += feed(&mut eng, node, chunk, now)?;
                eng.match_open()?;
                eng.tick()?;
                let (tx, events) = eng.finish()?;
                report.sent += commit(node, tx, now, seal)?;
                report.events.extend(events);
            }
        }
        Ledger::Etcd(l) => {
            // A bundle past its lifetime is no longer processed here: its processed mark
            // in etcd may be gone (see `done_ttl_s`).
            let (mut live, mut live_expiry) = (Vec::new(), Vec::new());
            let mut local = Vec::new();
            for (key, exp) in pending.into_iter().zip(expiry) {
                if exp > now.0 {
                    live.push(key);
                    live_expiry.push(exp);
                } else {
                    local.push((done_key(&key), Some(Vec::new())));
                }
            }
            if !local.is_empty() {
                node.store.commit_ledger(&local, &[], &[], now)?;
            }
            let mut size = ETCD_BATCH;
            let mut rest: &[[u8; 32]] = &live;
            loop {
                let chunk = &rest[..size.min(rest.len())];
                // Marked here too, so this node does not offer them to the ledger again.
                let local: Vec<KvWrite> = chunk
                    .iter()
                    .map(|k| (done_key(k), Some(Vec::new())))
                    .collect();
                let done = live.len() - rest.len();
                let ttl = done_ttl_s(&live_expiry[done..done + chunk.len()], now);
                let how = Step {
                    now,
                    seal,
                    local: &local,
                    done_ttl_s: ttl,
                };
                let r = etcd_batch(node, l, how, Some(&mut *check), &mut |eng| {
                    let n = feed(eng, node, chunk, now)?;
                    eng.match_open()?;
                    eng.tick()?;
                    Ok(n)
                })?;
                match r {
                    Ok(d) => {
                        report.processed += d.value;
                        report.sent += d.sent;
                        report.events.extend(d.events);
                        rest = &rest[chunk.len()..];
                        if rest.is_empty() {
                            break;
                        }
                    }
                    Err(e) if chunk.len() > 1 => {
                        size = chunk.len() / 2;
                        tracing::debug!("{e}: batches of {size} bundles from now");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(report)
}

/// How long etcd keeps the processed marks of a batch whose bundles expire at `expiry`:
/// until the last of them expires, and a day more.
fn done_ttl_s(expiry: &[u64], now: DtnTime) -> i64 {
    let last = expiry.iter().copied().fold(now.0, u64::max);
    ((last - now.0) / 1000 + 86_400) as i64
}

/// Bundles addressed to this marketplace that this node has not handed to the ledger, in
/// order of arrival, then of creation: of two payments spending the same credits, the one
/// that reached the ledger first (or was signed first) wins. With each, when it expires.
fn pending(node: &Node) -> Result<(Vec<[u8; 32]>, Vec<u64>), ServiceError> {
    let mut pending = Vec::new();
    for key in node.store.for_destination_node(&node.node_id())? {
        if node.store.ledger_get(&done_key(&key))?.is_none() {
            if let Some(r) = node.store.record(&key)? {
                pending.push(((r.received_at.0, r.created_ms, r.seq), key, r.expires_at.0));
            }
        }
    }
    pending.sort();
    Ok(pending.into_iter().map(|p| (p.1, p.2)).unzip())
}

/// Run `chunk`'s bundles through the rules, marking each processed; one the ledger already
/// marks (another front node processed it) is skipped. Returns how many were processed.
fn feed(
    eng: &mut Engine,
    node: &Node,
    chunk: &[[u8; 32]],
    now: DtnTime,
) -> Result<usize, ServiceError> {
    let mut processed = 0;
    for key in chunk {
        if eng.tx.get(&done_key(key))?.is_some() {
            continue;
        }
        eng.tx.put(done_key(key), Vec::new());
        processed += 1;
        let Some(vb) = node.store.get(key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        let payload = vb.bundle().payload();
        match adu::decode(payload) {
            Ok(Adu::Market(a)) => match *a {
                MarketAdu::Task(t) => eng.on_task(key, &signer, vb.raw(), &t)?,
                MarketAdu::Result(r) => {
                    let arrived = node
                        .store
                        .record(key)?
                        .map_or(now.0, |rec| rec.received_at.0);
                    eng.on_result(key, &signer, &r, arrived)?
                }
                MarketAdu::Payment(p) => eng.on_payment(&m::payment_id(payload), &signer, &p)?,
                MarketAdu::Offer(o) => eng.on_offer(&signer, &o)?,
                MarketAdu::Guild(g) => eng.on_guild(&signer, &g, m::charter_hash(payload))?,
                MarketAdu::Membership(mb) => eng.on_membership(&signer, &mb)?,
                _ => {}
            },
            Err(adu::AduError::BadBody { kind, reason }) => eng.events.push(Event::Refused {
                what: format!("{kind} {}", &hex::encode(key)[..12]),
                reason,
            }),
            _ => {}
        }
    }
    Ok(processed)
}

/// Every worker the marketplace knows (for `market reputation`).
pub fn workers(node: &Node) -> Result<Vec<(String, WorkerState)>, ServiceError> {
    workers_on(node, &Ledger::Local)
}

/// [`workers`] from `ledger`.
pub fn workers_on(
    node: &Node,
    ledger: &Ledger,
) -> Result<Vec<(String, WorkerState)>, ServiceError> {
    let me = node.node_id().to_string();
    match ledger {
        Ledger::Local => {
            let kv = StoreKv(&node.store);
            let w = Engine::new(Txn::new(&kv), &me, 0).workers()?;
            Ok(w)
        }
        Ledger::Etcd(l) => {
            let snap = l.snapshot();
            let w = Engine::new(Txn::new(&snap), &me, 0).workers()?;
            Ok(w)
        }
    }
}
