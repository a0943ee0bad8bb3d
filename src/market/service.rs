//! The marketplace over a node's store: takes the bundles addressed to the marketplace
//! that it has not processed yet (tasks, results, payments, offers, guild charters and
//! memberships), runs
//! them through the rules in batches, signs (and, where the recipient's key is known,
//! seals) what the rules send, and commits ledger changes, "processed" marks and the new
//! bundles in one synced write per batch. A crash between batches loses nothing: an
//! unmarked bundle is simply processed again.
//!
//! Owns: driving the marketplace from the store.

use super::engine::{Engine, Event, WorkerState};
use super::ledger::{Kv, Txn};
use super::MarketError;
use crate::adu::{self, market as m, Adu, MarketAdu};
use crate::bundle::Eid;
use crate::node::{Node, NodeError};
use crate::store::{Store, StoreError};
use crate::time::DtnTime;

/// Bundles processed per ledger commit.
pub const BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Market(#[from] MarketError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    let mut to_sign = Vec::with_capacity(out.len());
    for o in out {
        let to = match &o.to {
            Some(n) => Some(Eid::parse(n).map_err(NodeError::from)?),
            None => None,
        };
        to_sign.push((to, o.payload, o.lifetime_ms));
    }
    let c = node.compose(&to_sign, now, seal)?;
    node.store
        .commit_ledger(&writes, &c.bundles, &c.private, now)?;
    Ok(to_sign.len())
}

/// Judges a `generate` answer against its task: `None` when it cannot here (the model is
/// not held), else whether the answer passes.
pub type GenerationCheck = dyn FnMut(&m::Task, &[u8]) -> Option<Result<(), String>>;

/// One step of the rules at a time in this process: each reads the ledger, decides and
/// commits, so two at once (the daemon's market role and a `market grant` run through
/// it) would decide on the same state.
static RULES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    RULES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run one step of the rules with `f`, then commit.
pub fn with_engine<T>(
    node: &Node,
    now: DtnTime,
    seal: bool,
    f: impl FnOnce(&mut Engine) -> Result<T, MarketError>,
) -> Result<(T, Vec<Event>), ServiceError> {
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
    let me = node.node_id();
    // In order of arrival, then of creation: of two payments spending the same credits,
    // the one that reached the ledger first (or was signed first) wins.
    let mut pending = Vec::new();
    for key in node.store.for_destination_node(&me)? {
        if node.store.ledger_get(&done_key(&key))?.is_none() {
            if let Some(r) = node.store.record(&key)? {
                pending.push(((r.received_at.0, r.created_ms, r.seq), key));
            }
        }
    }
    pending.sort();
    let pending: Vec<[u8; 32]> = pending.into_iter().map(|p| p.1).collect();
    let mut report = Report::default();
    let mut chunks: Vec<&[[u8; 32]]> = pending.chunks(BATCH).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for chunk in chunks {
        let kv = StoreKv(&node.store);
        let mut eng = Engine::new(Txn::new(&kv), &me.to_string(), now.0);
        let check = &mut *check;
        eng.check = Some(Box::new(move |t, o| check(t, o)));
        for key in chunk {
            eng.tx.put(done_key(key), Vec::new());
            report.processed += 1;
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
                    MarketAdu::Payment(p) => {
                        eng.on_payment(&m::payment_id(payload), &signer, &p)?
                    }
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
        eng.match_open()?;
        eng.tick()?;
        let (tx, events) = eng.finish()?;
        report.sent += commit(node, tx, now, seal)?;
        report.events.extend(events);
    }
    Ok(report)
}

/// Every worker the marketplace knows (for `market reputation`).
pub fn workers(node: &Node) -> Result<Vec<(String, WorkerState)>, ServiceError> {
    let kv = StoreKv(&node.store);
    let eng = Engine::new(Txn::new(&kv), &node.node_id().to_string(), 0);
    Ok(eng.workers()?)
}
