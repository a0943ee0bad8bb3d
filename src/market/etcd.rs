//! The marketplace's ledger in an etcd v3 cluster, shared by several front nodes: one
//! marketplace identity, each front node its own home and store, one ledger.
//!
//! - Reads ([`Snapshot`], the rules' [`Kv`]) remember what they saw: every key's
//!   `mod_revision` (0 when absent) and every prefix scanned with the revision it is known
//!   complete at. A batch reads through this front node's cache of the ledger (what it last
//!   read or wrote), so a batch costs one round trip, not one per key: a key not cached is
//!   taken as absent, and the commit's compares find out when it was not. A failed commit
//!   brings back, in the same round trip, the current value of everything the batch read;
//!   the batch then runs again on that. Reports read a fresh view pinned at one revision.
//! - [`EtcdLedger::commit`] is one etcd transaction: it applies the batch's writes and puts
//!   the bundles the batch sends into an outbox, only if every key read still has the
//!   revision it was read at and no key under a scanned prefix changed since (a key added
//!   there fails it too). Two front nodes deciding on the same state: one commits, the
//!   other sees [`Committed::Conflict`] and runs its batch again on the new state. So a
//!   payment, a result or an escrow is applied once, and each outgoing bundle is signed
//!   once, by whichever front node's batch commits.
//! - The outbox (`out/<bundle key>`) keeps those bundles until a front node has stored them:
//!   the one that committed stores and clears them at once; if it dies first, any front
//!   node's next step takes them ([`EtcdLedger::outbox`]).
//! - Sequence blocks: front nodes sign as one BPv7 source, so each claims, when it
//!   connects, a block of 2^40 creation sequence numbers no other front node ever uses
//!   ([`EtcdLedger::claim_sequence_block`]); no (creation time, sequence number) pair
//!   repeats across them.
//!
//! Keys live under `mycelium/market/<marketplace node ID>/`, so one cluster can hold
//! several marketplaces. etcd's default `--max-txn-ops` (128) is too small for a batch:
//! batches shrink when etcd refuses one, and the error names the setting (README).
//!
//! Owns: talking to etcd for the ledger. Blocking calls over its own small runtime.

use super::ledger::{Entries, Kv, KvWrite};
use super::MarketError;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use etcd_client::{GetResponse, TxnOpResponse};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An outbox entry: a bundle's key and what is kept for it.
pub type OutboxEntry = ([u8; 32], Vec<u8>);
/// A key read, its value and its `mod_revision`.
type Row = (Vec<u8>, Vec<u8>, i64);

/// Sequence numbers per front node's block (see the module comment).
pub const SEQ_BLOCK_BITS: u32 = 40;

const OUTBOX: &[u8] = b"out/";
const DONE: &[u8] = b"done/";
const SEQ_BLOCK: &[u8] = b"fronts/seq-block";

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("ledger address {0:?}: expected etcd://HOST:PORT[,HOST:PORT...]")]
    Address(String),
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error(
        "etcd at {endpoints} refused a transaction of {ops} operations ({reason}); start its \
         members with a larger --max-txn-ops (8192) and --max-request-bytes (see the README)"
    )]
    TooLarge {
        endpoints: String,
        ops: usize,
        reason: String,
    },
    #[error("ledger entry {0} in etcd is corrupt")]
    Corrupt(String),
}

/// How a [`EtcdLedger::commit`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    Yes,
    /// Something this batch read was not as it saw it: nothing was written, and the cache
    /// now holds the current values. `raced`: another front node changed what this one had
    /// (not only keys this one had not read before).
    Conflict {
        raced: bool,
    },
}

/// Keys cached per front node before the cache starts afresh (it only saves round trips).
const CACHE_KEYS: usize = 200_000;

/// What this front node last knew of the ledger, possibly stale: every commit compares
/// what it used, so staleness costs a retry, never a wrong write.
#[derive(Default)]
struct Cache {
    /// Key → (`mod_revision`, value); (0, `None`) when known absent.
    keys: BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)>,
    /// Prefixes whose keys are all in `keys`, with the revision they were complete at.
    prefixes: BTreeMap<Vec<u8>, i64>,
}

impl Cache {
    fn complete(&self, key: &[u8]) -> Option<i64> {
        self.prefixes
            .iter()
            .find(|(p, _)| key.starts_with(p))
            .map(|(_, r)| *r)
    }

    /// Take in a fresh listing of `prefix` at `rev`.
    fn listing(&mut self, prefix: &[u8], rows: Vec<Row>, rev: i64) {
        let stale: Vec<Vec<u8>> = self
            .keys
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.keys.remove(&k);
        }
        for (k, v, r) in rows {
            self.keys.insert(k, (r, Some(v)));
        }
        self.prefixes.insert(prefix.to_vec(), rev);
    }

    fn trim(&mut self) {
        if self.keys.len() > CACHE_KEYS {
            *self = Cache::default();
        }
    }
}

/// A lease the processed marks share while it has long enough to live.
struct Lease {
    id: i64,
    until: Instant,
}

/// A connection to the cluster for one marketplace's ledger.
pub struct EtcdLedger {
    rt: Option<tokio::runtime::Runtime>,
    /// One client per member: requests go to `current` and move to the next member when it
    /// cannot answer (down, cut off, without a leader).
    clients: Vec<Client>,
    current: AtomicUsize,
    ns: Vec<u8>,
    endpoints: String,
    cache: Mutex<Cache>,
    lease: Mutex<Option<Lease>>,
    /// Outbox entries this front node stored and is clearing in the background.
    clearing: Arc<Mutex<HashSet<[u8; 32]>>>,
}

/// gRPC codes worth asking another member for (tonic's numbering): cancelled, unknown,
/// deadline exceeded, aborted, internal, unavailable.
const RETRY_CODES: [i32; 6] = [1, 2, 4, 10, 13, 14];

/// Whether another member might answer where this one failed.
fn member_failed(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => RETRY_CODES.contains(&i32::from(s.code())),
        _ => false,
    }
}

impl Drop for EtcdLedger {
    fn drop(&mut self) {
        // Dropped from async code too (the daemon's roles): never block there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `etcd://h1:p1,h2:p2` → the endpoints as URLs.
pub fn parse_address(addr: &str) -> Result<Vec<String>, EtcdError> {
    let bad = || EtcdError::Address(addr.to_string());
    let rest = addr.strip_prefix("etcd://").ok_or_else(bad)?;
    let mut eps = Vec::new();
    for hp in rest.split(',') {
        let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty()
            || port.parse::<u16>().is_err()
            || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(bad());
        }
        eps.push(format!("http://{host}:{port}"));
    }
    Ok(eps)
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdLedger {
    /// Connect to the cluster at `addr` (`etcd://HOST:PORT[,...]`) for the ledger of the
    /// marketplace `market` (its node ID). Fails when no member answers within a few
    /// seconds.
    pub fn connect(addr: &str, market: &str) -> Result<EtcdLedger, EtcdError> {
        let eps = parse_address(addr)?;
        let endpoints = eps.join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| EtcdError::Etcd {
                endpoints: endpoints.clone(),
                reason: format!("cannot start its runtime: {e}"),
            })?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from its cluster says so at once instead of waiting.
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(eps.len());
        for ep in eps {
            // Connections are made when first used: a member down now is no error yet.
            let c = rt
                .block_on(Client::connect([ep], Some(opts.clone())))
                .map_err(|e| EtcdError::Etcd {
                    endpoints: endpoints.clone(),
                    reason: e.to_string(),
                })?;
            clients.push(c);
        }
        let l = EtcdLedger {
            rt: Some(rt),
            clients,
            current: AtomicUsize::new(0),
            ns: format!("mycelium/market/{market}/").into_bytes(),
            endpoints,
            cache: Mutex::new(Cache::default()),
            lease: Mutex::new(None),
            clearing: Arc::default(),
        };
        // One read: the cluster answers, with a quorum.
        l.get_latest(b"seq")?;
        Ok(l)
    }

    /// The members, as given.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn err(&self, e: etcd_client::Error) -> EtcdError {
        EtcdError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: e.to_string(),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            // Only `drop` takes the runtime.
            None => unreachable!("the runtime lives as long as the ledger"),
        }
    }

    /// Run `f` on the current member's client; where that member cannot answer, on the
    /// next, each member once. The last error when none answers.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match self.block_on(f(self.clients[at].clone())) {
                Ok(v) => {
                    if i > 0 {
                        self.current.store(at, Ordering::Relaxed);
                        tracing::info!(member = at, "etcd: moved to another member");
                    }
                    return Ok(v);
                }
                Err(e) if member_failed(&e) => {
                    tracing::debug!(member = at, error = %e, "etcd member did not answer");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd members".into())))
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        [self.ns.as_slice(), k].concat()
    }

    fn get_latest(&self, k: &[u8]) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let key = self.key(k);
        let r = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .map_err(|e| self.err(e))?;
        Ok(r.kvs()
            .first()
            .map(|x| (x.value().to_vec(), x.mod_revision())))
    }

    /// A consistent view of the ledger (pinned at its first read), read fresh: for reports.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.view(false)
    }

    /// The view one batch of the rules reads: through this front node's cache (see the
    /// module comment); [`EtcdLedger::commit`] finds out whether it was current.
    pub fn batch_view(&self) -> Snapshot<'_> {
        self.view(true)
    }

    fn view(&self, cached: bool) -> Snapshot<'_> {
        Snapshot {
            l: self,
            cached,
            rev: Cell::new(0),
            seen: RefCell::new(BTreeMap::new()),
            guessed: RefCell::new(BTreeSet::new()),
            scanned: RefCell::new(Vec::new()),
            listed: RefCell::new(BTreeSet::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic elsewhere while it was held leaves a cache worth nothing: start afresh.
        self.cache.lock().unwrap_or_else(|p| {
            let mut c = p.into_inner();
            *c = Cache::default();
            c
        })
    }

    /// A lease for processed marks that must live `ttl_s` seconds: the last one while it
    /// has that long left, else a new one (an hour longer, so the next batches share it).
    fn lease_for(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let ttl_s = ttl_s.max(60);
        let mut held = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let need = Instant::now() + Duration::from_secs(ttl_s as u64);
        if let Some(l) = held.as_ref() {
            if l.until >= need {
                return Ok(l.id);
            }
        }
        let grant = ttl_s + 3600;
        let asked = Instant::now();
        let r = self
            .call(|mut c| async move { c.lease_grant(grant, None).await })
            .map_err(|e| self.err(e))?;
        // etcd counts from when it granted; counting from before the request is safe.
        let ttl = r.ttl().clamp(0, grant) as u64;
        *held = Some(Lease {
            id: r.id(),
            until: asked + Duration::from_secs(ttl),
        });
        Ok(r.id())
    }

    /// Apply `writes` and put `outbox` entries (`(bundle key, value)`) if everything `snap`
    /// read is as it saw it. Writes under `done/` (the "processed" marks) are kept for
    /// `done_ttl_s` seconds (an etcd lease), then etcd forgets them: by then the bundles
    /// they mark have expired and are no longer processed.
    pub fn commit(
        &self,
        snap: &Snapshot,
        writes: &[KvWrite],
        outbox: &[OutboxEntry],
        done_ttl_s: i64,
    ) -> Result<Committed, EtcdError> {
        let marks = writes
            .iter()
            .any(|(k, v)| v.is_some() && k.starts_with(DONE));
        match self.try_commit(snap, writes, outbox, done_ttl_s, marks) {
            // The shared lease is gone (revoked, or the cluster's clock ran past it): once
            // more with a new one.
            Err(EtcdError::Etcd { reason, .. }) if marks && reason.contains("lease not found") => {
                *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.try_commit(snap, writes, outbox, done_ttl_s, marks)
            }
            r => r,
        }
    }

    fn try_commit(
        &self,
        snap: &Snapshot,
        writes: &[KvWrite],
        outbox: &[OutboxEntry],
        done_ttl_s: i64,
        marks: bool,
    ) -> Result<Committed, EtcdError> {
        let lease = if marks {
            Some(self.lease_for(done_ttl_s)?)
        } else {
            None
        };
        let seen = snap.seen.borrow();
        let scanned = snap.scanned.borrow();
        let listed = snap.listed.borrow();
        // Keys known only from a listing are covered by their prefix's compare (no key under
        // it changed since); every other key read is compared on its own.
        let keyed: Vec<(&Vec<u8>, i64)> = seen
            .iter()
            .filter(|(k, _)| !listed.contains(*k))
            .map(|(k, (r, _))| (k, *r))
            .collect();
        let mut when = Vec::with_capacity(keyed.len() + scanned.len());
        for (k, mod_rev) in &keyed {
            when.push(Compare::mod_revision(
                self.key(k),
                CompareOp::Equal,
                *mod_rev,
            ));
        }
        for (p, rev) in scanned.iter() {
            let k = self.key(p);
            when.push(
                Compare::mod_revision(k.clone(), CompareOp::Less, rev + 1)
                    .with_range(prefix_end(&k)),
            );
        }
        let mut ops = Vec::with_capacity(writes.len() + outbox.len());
        for (k, v) in writes {
            ops.push(match v {
                Some(v) => {
                    let opts = match lease {
                        Some(id) if k.starts_with(DONE) => Some(PutOptions::new().with_lease(id)),
                        _ => None,
                    };
                    TxnOp::put(self.key(k), v.clone(), opts)
                }
                None => TxnOp::delete(self.key(k), None),
            });
        }
        for (key, v) in outbox {
            ops.push(TxnOp::put(self.outbox_key(key), v.clone(), None));
        }
        // Where it fails: what everything read is now, for the cache and the next attempt.
        let mut back = Vec::new();
        if snap.cached {
            for (k, _) in &keyed {
                back.push(TxnOp::get(self.key(k), None));
            }
            for (p, _) in scanned.iter() {
                back.push(TxnOp::get(
                    self.key(p),
                    Some(GetOptions::new().with_prefix()),
                ));
            }
        }
        let n = when.len().max(ops.len()).max(back.len());
        let txn = Txn::new().when(when).and_then(ops).or_else(back);
        // A transaction sent to a member that fell over may have been applied anyway: then
        // its retry elsewhere fails its compares (a conflict), the batch runs again and
        // finds its bundles processed, and the outbox still holds what it sent.
        let r = match self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        }) {
            Ok(r) => r,
            Err(e) => return Err(self.refused(e, n)),
        };
        let rev = r.header().map_or(0, |h| h.revision());
        if !snap.cached {
            return Ok(if r.succeeded() {
                Committed::Yes
            } else {
                Committed::Conflict { raced: true }
            });
        }
        let mut cache = self.cache();
        if r.succeeded() {
            let compared: BTreeSet<&[u8]> = scanned.iter().map(|(p, _)| p.as_slice()).collect();
            for (k, v) in writes {
                let entry = match v {
                    Some(v) => (rev, Some(v.clone())),
                    None => (0, None),
                };
                cache.keys.insert(k.clone(), entry);
                // A prefix this batch did not compare may have changed since it was
                // complete: no longer known whole.
                let stale: Vec<Vec<u8>> = cache
                    .prefixes
                    .keys()
                    .filter(|p| k.starts_with(p) && !compared.contains(p.as_slice()))
                    .cloned()
                    .collect();
                for p in stale {
                    cache.prefixes.remove(&p);
                }
            }
            for p in compared {
                // (Only a listing still held whole: one dropped meanwhile stays dropped.)
                if let Some(r) = cache.prefixes.get_mut(p) {
                    *r = rev;
                }
            }
            cache.trim();
            return Ok(Committed::Yes);
        }
        let guessed = snap.guessed.borrow();
        let mut raced = false;
        let mut got = r.op_responses().into_iter();
        for (k, mod_rev) in &keyed {
            let Some(TxnOpResponse::Get(g)) = got.next() else {
                return Err(EtcdError::Corrupt("a failed transaction's reads".into()));
            };
            let now = self.rows(&g).into_iter().find(|(x, _, _)| x == *k);
            let entry = match now {
                Some((_, v, r)) => (r, Some(v)),
                None => (0, None),
            };
            if entry.0 != *mod_rev && !guessed.contains(*k) {
                raced = true;
            }
            cache.keys.insert(k.to_vec(), entry);
        }
        for (p, rev_then) in scanned.iter() {
            let Some(TxnOpResponse::Get(g)) = got.next() else {
                return Err(EtcdError::Corrupt("a failed transaction's reads".into()));
            };
            let rows = self.rows(&g);
            if rows.iter().any(|(_, _, r)| r > rev_then) {
                raced = true;
            }
            cache.listing(p, rows, rev);
        }
        cache.trim();
        Ok(Committed::Conflict { raced })
    }

    /// Whether everything `snap` read is current: when it is not, the cache is brought up
    /// to date (and `false`). For a batch that failed on what it read.
    pub fn current(&self, snap: &Snapshot) -> Result<bool, EtcdError> {
        Ok(self.commit(snap, &[], &[], 0)? == Committed::Yes)
    }

    /// Rows of a range response, keys without the namespace.
    fn rows(&self, r: &GetResponse) -> Vec<Row> {
        let n = self.ns.len();
        r.kvs()
            .iter()
            .filter(|x| x.key().len() >= n)
            .map(|x| (x.key()[n..].to_vec(), x.value().to_vec(), x.mod_revision()))
            .collect()
    }

    fn refused(&self, e: etcd_client::Error, ops: usize) -> EtcdError {
        let reason = e.to_string();
        if reason.contains("too many operations") || reason.contains("too large") {
            EtcdError::TooLarge {
                endpoints: self.endpoints.clone(),
                ops,
                reason,
            }
        } else {
            self.err(e)
        }
    }

    fn outbox_key(&self, key: &[u8; 32]) -> Vec<u8> {
        self.key(&[OUTBOX, hex::encode(key).as_bytes()].concat())
    }

    /// Everything in the outbox: bundles committed by some front node and not yet known
    /// to be stored by it.
    ///
    /// Read from the member asked, without a quorum round (serializable): an entry missed
    /// is taken at a later step, one already cleared is stored again (the same bytes).
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, EtcdError> {
        let p = self.key(OUTBOX);
        let r = self
            .call(|mut c| {
                let p = p.clone();
                let opts = GetOptions::new().with_prefix().with_serializable();
                async move { c.get(p, Some(opts)).await }
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for x in r.kvs() {
            let name = &x.key()[p.len()..];
            let key = hex::decode(name)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| EtcdError::Corrupt(String::from_utf8_lossy(x.key()).into()))?;
            out.push((key, x.value().to_vec()));
        }
        Ok(out)
    }

    /// Take `keys` out of the outbox (they are stored).
    pub fn clear_outbox(&self, keys: &[[u8; 32]]) -> Result<(), EtcdError> {
        for txn in self.clearing_txns(keys) {
            self.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Transactions deleting `keys` from the outbox, 100 at a time (etcd's default
    /// `--max-txn-ops` is 128).
    fn clearing_txns(&self, keys: &[[u8; 32]]) -> Vec<Txn> {
        keys.chunks(100)
            .map(|part| {
                Txn::new().and_then(
                    part.iter()
                        .map(|k| TxnOp::delete(self.outbox_key(k), None::<DeleteOptions>))
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    /// [`EtcdLedger::clear_outbox`] without waiting for it: the batch that stored these
    /// goes on. Until it is done, [`EtcdLedger::being_cleared`] says so for each key (this
    /// node does not store them again). If it fails, they stay in the outbox and the next
    /// step of some front node stores them again (the same bytes) and clears them.
    pub fn clear_outbox_soon(&self, keys: Vec<[u8; 32]>) {
        let Some(rt) = &self.rt else { return };
        if keys.is_empty() {
            return;
        }
        let clearing = self.clearing.clone();
        clearing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys.iter().copied());
        let txns = self.clearing_txns(&keys);
        let mut client =
            self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].clone();
        rt.spawn(async move {
            for txn in txns {
                if let Err(e) = client.txn(txn).await {
                    tracing::debug!("outbox left in etcd for the next step: {e}");
                    break;
                }
            }
            let mut c = clearing.lock().unwrap_or_else(|p| p.into_inner());
            for k in &keys {
                c.remove(k);
            }
        });
    }

    /// Whether this node stored outbox entry `key` and is clearing it.
    pub fn being_cleared(&self, key: &[u8; 32]) -> bool {
        self.clearing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Claim a block of creation sequence numbers no other front node has: returns its
    /// first number (block `b` starts at `b << SEQ_BLOCK_BITS`; blocks start at 1, so
    /// they lie above whatever a home counted before it became a front node).
    pub fn claim_sequence_block(&self) -> Result<u64, EtcdError> {
        loop {
            let cur = self.get_latest(SEQ_BLOCK)?;
            let (n, when) = match &cur {
                None => (
                    1u64,
                    Compare::version(self.key(SEQ_BLOCK), CompareOp::Equal, 0),
                ),
                Some((v, rev)) => {
                    let a: [u8; 8] = v
                        .as_slice()
                        .try_into()
                        .map_err(|_| EtcdError::Corrupt("fronts/seq-block".into()))?;
                    (
                        u64::from_be_bytes(a) + 1,
                        Compare::mod_revision(self.key(SEQ_BLOCK), CompareOp::Equal, *rev),
                    )
                }
            };
            if n >= 1 << (64 - SEQ_BLOCK_BITS) {
                return Err(EtcdError::Corrupt(
                    "fronts/seq-block (all blocks used)".into(),
                ));
            }
            let put = TxnOp::put(self.key(SEQ_BLOCK), n.to_be_bytes().to_vec(), None);
            let txn = Txn::new().when(vec![when]).and_then(vec![put]);
            let r = self
                .call(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .map_err(|e| self.err(e))?;
            if r.succeeded() {
                return Ok(n << SEQ_BLOCK_BITS);
            }
        }
    }

    /// Every ledger entry under `prefix` as it is now (for reports and tests).
    pub fn scan_latest(&self, prefix: &[u8]) -> Result<Entries, EtcdError> {
        let p = self.key(prefix);
        let r = self
            .call(|mut c| {
                let p = p.clone();
                async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
            })
            .map_err(|e| self.err(e))?;
        Ok(r.kvs()
            .iter()
            .map(|x| (x.key()[self.ns.len()..].to_vec(), x.value().to_vec()))
            .collect())
    }
}

/// Reads for one batch, remembered for [`EtcdLedger::commit`]: fresh, all at one
/// revision (reports), or through the front node's cache (batches of the rules).
pub struct Snapshot<'l> {
    l: &'l EtcdLedger,
    cached: bool,
    /// The revision fresh reads are pinned at (0 until the first).
    rev: Cell<i64>,
    /// Key → (mod_revision when read, 0 if absent; value).
    #[allow(clippy::type_complexity)]
    seen: RefCell<BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)>>,
    /// Keys taken as absent only because they were not cached.
    guessed: RefCell<BTreeSet<Vec<u8>>>,
    /// Prefixes scanned, each with the revision its listing was complete at.
    scanned: RefCell<Vec<(Vec<u8>, i64)>>,
    /// Keys first seen in a listing (their prefix's compare covers them: a key deleted
    /// under it goes unnoticed, so the rules act on a listed task only after reading
    /// `task/<id>` itself, and never delete workers).
    listed: RefCell<BTreeSet<Vec<u8>>>,
}

impl Snapshot<'_> {
    fn read(&self, key: &[u8], prefix: bool) -> Result<(Vec<Row>, i64), MarketError> {
        let mut opts = GetOptions::new();
        if !self.cached && self.rev.get() > 0 {
            opts = opts.with_revision(self.rev.get());
        }
        if prefix {
            opts = opts.with_prefix();
        }
        let k = self.l.key(key);
        let r = self
            .l
            .call(|mut c| {
                let (k, opts) = (k.clone(), opts.clone());
                async move { c.get(k, Some(opts)).await }
            })
            .map_err(|e| MarketError::Storage(self.l.err(e).to_string()))?;
        let at = r.header().map_or(0, |h| h.revision());
        if !self.cached && self.rev.get() == 0 {
            self.rev.set(at);
        }
        let rev = if self.cached { at } else { self.rev.get() };
        Ok((self.l.rows(&r), rev))
    }

    /// How many keys and prefixes this batch depends on.
    pub fn reads(&self) -> usize {
        self.seen.borrow().len() + self.scanned.borrow().len()
    }
}

impl Kv for Snapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MarketError> {
        if let Some((_, v)) = self.seen.borrow().get(key) {
            return Ok(v.clone());
        }
        let (rev, v) = if self.cached {
            let cache = self.l.cache();
            match cache.keys.get(key) {
                Some((r, v)) => (*r, v.clone()),
                None => {
                    // Absent as far as this node knows; the commit checks.
                    if cache.complete(key).is_none() {
                        self.guessed.borrow_mut().insert(key.to_vec());
                    }
                    (0, None)
                }
            }
        } else {
            match self
                .read(key, false)?
                .0
                .into_iter()
                .find(|(k, _, _)| k == key)
            {
                Some((_, v, r)) => (r, Some(v)),
                None => (0, None),
            }
        };
        self.seen
            .borrow_mut()
            .insert(key.to_vec(), (rev, v.clone()));
        Ok(v)
    }

    fn scan(&self, prefix: &[u8]) -> Result<Entries, MarketError> {
        let listed = if self.cached {
            let cache = self.l.cache();
            cache.prefixes.get(prefix).map(|rev| {
                let rows: Vec<Row> = cache
                    .keys
                    .range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter_map(|(k, (r, v))| v.as_ref().map(|v| (k.clone(), v.clone(), *r)))
                    .collect();
                (rows, *rev)
            })
        } else {
            None
        };
        let (rows, rev) = match listed {
            Some(l) => l,
            None => {
                let (rows, rev) = self.read(prefix, true)?;
                if self.cached {
                    self.l.cache().listing(prefix, rows.clone(), rev);
                }
                (rows, rev)
            }
        };
        let mut seen = self.seen.borrow_mut();
        let mut listed = self.listed.borrow_mut();
        let mut out = Vec::with_capacity(rows.len());
        for (k, v, r) in rows {
            // A key this batch already read keeps its own compare: if the listing differs
            // from what it read, that compare fails the commit.
            if !seen.contains_key(&k) {
                seen.insert(k.clone(), (r, Some(v.clone())));
                listed.insert(k.clone());
            }
            out.push((k, v));
        }
        self.scanned.borrow_mut().push((prefix.to_vec(), rev));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("etcd://127.0.0.1:2379,h2:1").unwrap(),
            vec!["http://127.0.0.1:2379", "http://h2:1"]
        );
        for bad in [
            "http://h:1",
            "etcd://",
            "etcd://h",
            "etcd://h:99999",
            "etcd://:1",
            "etcd://h:1,",
            "etcd://u@h:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
