//! The node's RocksDB store: verified bundles by key, a metadata record per bundle, and
//! indexes by destination node, by ADU kind and by expiry; plus node metadata (the
//! creation-timestamp sequence counter). Every write is one synced `WriteBatch`, so a put
//! that returned is durable and indexes never disagree with the bundles.
//!
//! Owns: on-disk layout, and the bounds on what outside input may make it hold
//! ([`Limits`], `bounds`). Accepts only [`VerifiedBundle`]s. Takes times as values.

use crate::adu;
use crate::bundle::{BundleError, BundleId, CreationTimestamp, Eid, VerifiedBundle};
use crate::time::DtnTime;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod bounds;
mod ledger;
mod objects;
mod routing;
pub use bounds::{Limits, Tally};
pub use objects::{
    Committed, ObjectStatus, PartialShard, PartialSummary, Rebuilt, TRUST_BROADCAST, TRUST_RELEASE,
};
pub use routing::PeerRecord;

/// Column families.
pub mod cf {
    /// bundle key (32 bytes) → exact bundle bytes
    pub const BUNDLES: &str = "bundles";
    /// bundle key → CBOR [`super::BundleRecord`]
    pub const RECORDS: &str = "records";
    /// destination node ID text ‖ 0x00 ‖ bundle key → ()
    pub const BY_DEST: &str = "idx_dest";
    /// kind text ‖ 0x00 ‖ bundle key → ()
    pub const BY_KIND: &str = "idx_kind";
    /// expiry (u64 BE, DTN ms) ‖ bundle key → ()
    pub const BY_EXPIRY: &str = "idx_expiry";
    /// text key → value: node metadata
    pub const META: &str = "meta";
    /// object id ‖ leaf index (u64 BE) → verified shard record, for incomplete objects
    pub const PARTIAL: &str = "partial_shards";
    /// object id → first seen (u64 BE, DTN ms) ‖ bytes held (u64 BE) ‖ shards held (u64
    /// BE) ‖ bytes the object needs (u64 BE), for expiring and bounding incomplete objects
    /// (older stores wrote the first field alone)
    pub const PARTIAL_SEEN: &str = "partial_seen";
    /// object id → CBOR [`super::ObjectStatus`]: objects already rebuilt and stored
    pub const OBJECTS: &str = "objects";
    /// peer node ID text → that peer's latest signed have-summary
    pub const PEERS: &str = "peers";
    /// node ID text → 1 if trusted for broadcast feeds
    pub const TRUST: &str = "trust";
    /// feed file key (blake3 of its signed header) → consumed at (u64 BE, DTN ms)
    pub const FEED_FILES: &str = "feed_files";
    /// bundle key ‖ signer node ID → CBOR tombstone: delivered, do not carry
    /// (route::delivery)
    pub const TOMBSTONES: &str = "tombstones";
    /// peer node ID text → CBOR peer sync record
    pub const SYNC_PEERS: &str = "sync_peers";
    /// bundle key → spray-and-wait copies this node may still hand out (u32 BE); absent
    /// for bundles without a copy limit
    pub const COPIES: &str = "copies";
    /// node ID text → its X25519 sealing key (32 bytes), from its signed node record
    pub const CONTACTS: &str = "contacts";
    /// bundle key → (): stored bundles never offered, reconciled, exported or published
    /// (the opened insides of sealed bundles, and what this node sealed)
    pub const PRIVATE: &str = "private";
    /// prefixed text keys → marketplace, worker and wallet state (`store::ledger`,
    /// rules in `market`)
    pub const LEDGER: &str = "ledger";
    /// bundle key → contact tag (16) ‖ arrived (u64 BE, DTN ms) ‖ size (u64 BE): sealed
    /// bundles taken from a contact to relay, the ones the sealed bound counts and evicts
    pub const SEALED_FROM: &str = "sealed_from";
    /// sealed bundle's destination tag (16 bytes) ‖ 0x00 ‖ bundle key → (): how a revealed
    /// delivery secret finds the copy it lets this node drop (route::delivery)
    pub const BY_TAG: &str = "idx_sealed_tag";
    pub const ALL: [&str; 20] = [
        BY_TAG,
        SEALED_FROM,
        LEDGER,
        CONTACTS,
        PRIVATE,
        COPIES,
        TOMBSTONES,
        SYNC_PEERS,
        TRUST,
        FEED_FILES,
        BUNDLES,
        RECORDS,
        BY_DEST,
        BY_KIND,
        BY_EXPIRY,
        META,
        PARTIAL,
        PARTIAL_SEEN,
        OBJECTS,
        PEERS,
    ];
}

const META_SCHEMA: &[u8] = b"schema";
/// Prefix of the marks of bundles a batch import stored and has not settled yet (receipts,
/// tombstones, opening): `unsettled/` ‖ bundle key → ().
const META_UNSETTLED: &[u8] = b"unsettled/";

fn unsettled_key(key: &[u8; 32]) -> Vec<u8> {
    [META_UNSETTLED, key].concat()
}
/// Prefix of the marks of deliveries whose receipt is owed (a sync session acknowledges
/// at its end what its batches delivered): `owed/` ‖ bundle key → the mark
/// ([`crate::route::delivery::Owed::from_marks`]).
const META_OWED: &[u8] = b"owed/";

fn owed_key(key: &[u8; 32]) -> Vec<u8> {
    [META_OWED, key].concat()
}
const META_SEQ: &[u8] = b"creation_seq";
const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is in use by another mycelium process (or was left locked): {reason}"
    )]
    Locked { path: String, reason: String },
    #[error("RocksDB error in {path}: {reason}")]
    Db { path: String, reason: String },
    #[error("store record for {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store at {path} has schema version {found}, this build understands {SCHEMA_VERSION}")]
    Schema { path: String, found: u64 },
    #[error("no bundle matches id {0:?}: `mycelium list` shows what is stored")]
    NotFound(String),
    #[error("id {prefix:?} matches {count} bundles: give more hex digits")]
    Ambiguous { prefix: String, count: usize },
    #[error("{0:?} is not a bundle id (hex digits, at least 4)")]
    BadId(String),
    #[error("stored bundle {key} no longer verifies: {source}")]
    Invalid { key: String, source: BundleError },
}

/// What the store knows about a bundle without decoding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub source: String,
    pub destination: String,
    pub created_ms: u64,
    pub seq: u64,
    pub lifetime_ms: u64,
    pub received_at: DtnTime,
    pub expires_at: DtnTime,
    pub kind: String,
    pub size: u64,
}

/// Outcome of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    New,
    /// A bundle with the same BPv7 identity is already stored; nothing changed.
    Duplicate,
}

pub struct Store {
    db: DB,
    path: PathBuf,
    write_lock: Mutex<()>,
    limits: Limits,
    /// What the bounds count, cached (see `bounds`): taken only under `write_lock`.
    held: Mutex<bounds::Held>,
    /// Bundles staged by the write in progress (under `write_lock`), announced on
    /// `commits` once that write is durable.
    pending: Mutex<Vec<Stored>>,
    commits: tokio::sync::broadcast::Sender<Stored>,
}

/// A bundle newly stored by a durable (synced) write. The daemon's roles wake on these
/// ([`Store::subscribe`]) instead of polling the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: [u8; 32],
    /// The payload's kind label (`message`, `assignment`, `result`, ...).
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub size: u64,
}

/// How many commit announcements a slow subscriber may fall behind before it is told it
/// lagged (it then looks at the store afresh).
const COMMITS_BACKLOG: usize = 4096;
/// Bundles of at least this many bytes are kept in RocksDB's blob files.
const BLOB_MIN: u64 = 4096;

impl Store {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        // All memtables together stay under 32 MiB and the block cache at 8 MiB, however much
        // a feed or a stick brings:
        // memory is bounded by this, not by the size of the input.
        opts.set_db_write_buffer_size(32 << 20);
        let cache = rocksdb::Cache::new_lru_cache(8 << 20);
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_write_buffer_size(8 << 20);
            let mut bo = rocksdb::BlockBasedOptions::default();
            bo.set_block_cache(&cache);
            o.set_block_based_table_factory(&bo);
            o.set_max_write_buffer_number(2);
            if *name == cf::BUNDLES {
                // Bundle bytes of 4 KiB and more live in blob files: a flush writes them once
                // and compactions move only their keys (a megabyte file is not rewritten at
                // every level). Mostly sealed, so not compressed; blobs of deleted bundles
                // are reclaimed as compactions reach their files.
                o.set_enable_blob_files(true);
                o.set_min_blob_size(BLOB_MIN);
                o.set_blob_file_size(64 << 20);
                o.set_blob_compression_type(DBCompressionType::None);
                o.set_enable_blob_gc(true);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("lock") {
                StoreError::Locked {
                    path: p.clone(),
                    reason,
                }
            } else {
                StoreError::Db {
                    path: p.clone(),
                    reason,
                }
            }
        })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            write_lock: Mutex::new(()),
            limits: Limits::default(),
            held: Mutex::new(bounds::Held::default()),
            pending: Mutex::new(Vec::new()),
            commits: tokio::sync::broadcast::channel(COMMITS_BACKLOG).0,
        };
        match store.meta_u64(META_SCHEMA)? {
            None => store.put_meta_u64(META_SCHEMA, SCHEMA_VERSION)?,
            Some(SCHEMA_VERSION) => {}
            Some(found) => return Err(StoreError::Schema { path: p, found }),
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every bundle newly stored from now on, announced after its write is durable,
    /// whichever medium or role brought it.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Stored> {
        self.commits.subscribe()
    }

    /// Take the write lock; whatever an earlier, abandoned write staged is forgotten.
    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        let g = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        g
    }

    fn db_err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // All column families are created in `open`; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was not opened"))
    }

    fn synced() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::META), key)
            .map_err(|e| self.db_err(e))?;
        match v {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into(),
                    reason: "metadata value is not 8 bytes".into(),
                })?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    }

    fn put_meta_u64(&self, key: &[u8], v: u64) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(cf::META), key, v.to_be_bytes(), &Self::synced())
            .map_err(|e| self.db_err(e))
    }

    /// The creation timestamp for a new bundle: `now` with a sequence number that never
    /// repeats for this node (RFC 9171 §4.2.7). With `now` = 0 (clock unknown) the sequence
    /// alone keeps bundle IDs unique. The counter is persisted (synced) before it is used.
    pub fn next_creation_timestamp(&self, now: DtnTime) -> Result<CreationTimestamp, StoreError> {
        let _g = self.lock_writes();
        let seq = self.meta_u64(META_SEQ)?.map_or(0, |s| s + 1);
        self.put_meta_u64(META_SEQ, seq)?;
        Ok(CreationTimestamp { time: now, seq })
    }

    /// A write batch with room for `bundles` and their index entries up front: a batch of
    /// megabyte bundles otherwise grows by doubling, copying (and page-faulting) several
    /// times what it holds.
    fn batch_for<'b>(bundles: impl IntoIterator<Item = &'b VerifiedBundle>) -> WriteBatch {
        let bytes: usize = bundles.into_iter().map(|vb| vb.raw().len() + 512).sum();
        WriteBatch::with_capacity_bytes(bytes + 16 * 1024)
    }

    /// Store a verified bundle durably. Dedup is on BPv7 identity: a second bundle with
    /// the same identity is reported as a duplicate and changes nothing.
    pub fn put(&self, vb: &VerifiedBundle, now: DtnTime) -> Result<PutOutcome, StoreError> {
        let _g = self.lock_writes();
        let mut batch = Self::batch_for([vb]);
        let outcome = self.stage_put(&mut batch, vb, now, &mut HashSet::new())?;
        if outcome == PutOutcome::New {
            self.write_synced(batch)?;
        }
        Ok(outcome)
    }

    /// Add a bundle's writes to `batch` unless it is already stored (or already staged,
    /// per `staged`). The caller holds the write lock.
    fn stage_put(
        &self,
        batch: &mut WriteBatch,
        vb: &VerifiedBundle,
        now: DtnTime,
        staged: &mut HashSet<[u8; 32]>,
    ) -> Result<PutOutcome, StoreError> {
        let b = vb.bundle();
        let key = vb.id().key();
        if staged.contains(&key)
            || self
                .db
                .get_pinned_cf(self.cf(cf::RECORDS), key)
                .map_err(|e| self.db_err(e))?
                .is_some()
        {
            return Ok(PutOutcome::Duplicate);
        }
        staged.insert(key);
        let p = &b.primary;
        let rec = BundleRecord {
            source: p.source.to_string(),
            destination: p.destination.to_string(),
            created_ms: p.created.time.0,
            seq: p.created.seq,
            lifetime_ms: p.lifetime_ms,
            received_at: now,
            expires_at: b.expires_at(now),
            kind: adu::kind_label(b.payload()),
            size: vb.raw().len() as u64,
        };
        let mut rec_bytes = Vec::new();
        let _ = ciborium::into_writer(&rec, &mut rec_bytes);
        batch.put_cf(self.cf(cf::BUNDLES), key, vb.raw());
        batch.put_cf(self.cf(cf::RECORDS), key, &rec_bytes);
        batch.put_cf(
            self.cf(cf::BY_DEST),
            index_key(p.destination.node_id().to_string().as_bytes(), &key),
            [],
        );
        batch.put_cf(
            self.cf(cf::BY_KIND),
            index_key(rec.kind.as_bytes(), &key),
            [],
        );
        batch.put_cf(self.cf(cf::BY_EXPIRY), expiry_key(rec.expires_at, &key), []);
        if let Some(tag) = crate::seal::tag_of(b) {
            batch.put_cf(self.cf(cf::BY_TAG), index_key(&tag, &key), []);
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Stored {
                key,
                kind: rec.kind.clone(),
                source: rec.source.clone(),
                destination: rec.destination.clone(),
                size: rec.size,
            });
        Ok(PutOutcome::New)
    }

    /// Write `batch` durably, then announce the bundles it stored. The caller holds the
    /// write lock.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let r = self
            .db
            .write_opt(batch, &Self::synced())
            .map_err(|e| self.db_err(e));
        let stored = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if r.is_ok() {
            for s in stored {
                // No subscriber is fine: nobody is waiting.
                let _ = self.commits.send(s);
            }
        }
        r
    }

    /// Whether a bundle with this identity is stored.
    pub fn contains(&self, id: &BundleId) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf::RECORDS), id.key())
            .map_err(|e| self.db_err(e))?
            .is_some())
    }

    /// The exact stored bytes of a bundle.
    pub fn get_raw(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf::BUNDLES), key)
            .map_err(|e| self.db_err(e))
    }

    /// `f` of a stored bundle's bytes, read in place (RocksDB's pinned buffer: no copy).
    pub fn with_raw<T>(
        &self,
        key: &[u8; 32],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf::BUNDLES), key)
            .map_err(|e| self.db_err(e))?
            .map(|v| f(&v)))
    }

    /// A stored bundle, decoded and re-verified (a disk that rots is caught here).
    pub fn get(&self, key: &[u8; 32]) -> Result<Option<VerifiedBundle>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(raw) => {
                VerifiedBundle::decode(&raw)
                    .map(Some)
                    .map_err(|source| StoreError::Invalid {
                        key: hex::encode(key),
                        source,
                    })
            }
        }
    }

    pub fn record(&self, key: &[u8; 32]) -> Result<Option<BundleRecord>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::RECORDS), key)
            .map_err(|e| self.db_err(e))?;
        v.map(|b| decode_record(key, &b)).transpose()
    }

    /// Every stored bundle's key and record, in key order.
    pub fn records(&self) -> Result<Vec<([u8; 32], BundleRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::RECORDS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = key32(&k)?;
            out.push((key, decode_record(&key, &v)?));
        }
        Ok(out)
    }

    pub fn len(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::RECORDS), IteratorMode::Start)
        {
            item.map_err(|e| self.db_err(e))?;
            n += 1;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    fn index_scan(&self, cf_name: &str, prefix: &[u8]) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut p = prefix.to_vec();
        p.push(0);
        let mut out = Vec::new();
        let it = self
            .db
            .iterator_cf(self.cf(cf_name), IteratorMode::From(&p, Direction::Forward));
        for item in it {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&p) {
                break;
            }
            out.push(key32(&k[p.len()..])?);
        }
        Ok(out)
    }

    /// Bundles a batch import stored and did not settle (it was stopped in between):
    /// the next import settles them.
    pub fn unsettled(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        Ok(self
            .meta_marks(META_UNSETTLED)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The bundle-keyed marks under `prefix` in META: (bundle key, value).
    fn meta_marks(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<crate::route::delivery::OwedMarkBytes>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(cf::META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((key32(&k[prefix.len()..])?, v.to_vec()));
        }
        Ok(out)
    }

    /// Deliveries whose receipt is owed (bundle key, mark): what a sync session stopped
    /// before its end did not acknowledge yet.
    pub fn owed_marks(&self) -> Result<Vec<crate::route::delivery::OwedMarkBytes>, StoreError> {
        self.meta_marks(META_OWED)
    }

    /// Keys of bundles addressed to any endpoint of `node` (its node ID).
    pub fn for_destination_node(&self, node: &Eid) -> Result<Vec<[u8; 32]>, StoreError> {
        self.index_scan(cf::BY_DEST, node.node_id().to_string().as_bytes())
    }

    /// Keys of bundles whose payload is of ADU kind `kind` (`opaque` for non-envelopes).
    pub fn of_kind(&self, kind: &str) -> Result<Vec<[u8; 32]>, StoreError> {
        self.index_scan(cf::BY_KIND, kind.as_bytes())
    }

    /// Resolve a hex prefix (at least 4 digits) to one stored bundle key.
    pub fn resolve(&self, prefix: &str) -> Result<[u8; 32], StoreError> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.len() < 4 || p.len() > 64 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::BadId(prefix.to_string()));
        }
        // Seek to the first key >= the prefix padded with zeros.
        let mut start = [0u8; 32];
        let even = &p[..p.len() & !1];
        if hex::decode_to_slice(even, &mut start[..even.len() / 2]).is_err() {
            return Err(StoreError::BadId(prefix.to_string()));
        }
        if p.len() % 2 == 1 {
            let nib = u8::from_str_radix(&p[p.len() - 1..], 16)
                .map_err(|_| StoreError::BadId(prefix.to_string()))?;
            start[p.len() / 2] = nib << 4;
        }
        let mut found = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(cf::RECORDS),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if !hex::encode(&k).starts_with(&p) {
                break;
            }
            found.push(key32(&k)?);
            if found.len() > 1 {
                break;
            }
        }
        match found.len() {
            0 => Err(StoreError::NotFound(prefix.to_string())),
            1 => Ok(found[0]),
            _ => Err(StoreError::Ambiguous {
                prefix: prefix.to_string(),
                count: found.len(),
            }),
        }
    }

    /// Delete every bundle whose expiry is at or before `now`; returns how many.
    pub fn purge_expired(&self, now: DtnTime) -> Result<usize, StoreError> {
        self.purge_tombstones(now)?;
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::BY_EXPIRY), IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if k.len() != 40 {
                return Err(StoreError::Corrupt {
                    key: hex::encode(&k),
                    reason: "expiry index key is not 40 bytes".into(),
                });
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&k[..8]);
            if u64::from_be_bytes(t) > now.0 {
                break;
            }
            let key = key32(&k[8..])?;
            self.stage_delete(&mut batch, &key)?;
            batch.delete_cf(self.cf(cf::PRIVATE), key);
            batch.delete_cf(self.cf(cf::BY_EXPIRY), &k);
            n += 1;
        }
        if n > 0 {
            self.db
                .write_opt(batch, &Self::synced())
                .map_err(|e| self.db_err(e))?;
        }
        Ok(n)
    }
}

impl Store {
    /// Add the deletion of a stored bundle and its index entries to `batch` (nothing if
    /// it is not stored). The caller holds the write lock.
    fn stage_delete(&self, batch: &mut WriteBatch, key: &[u8; 32]) -> Result<(), StoreError> {
        if let Some(rec) = self.record(key)? {
            batch.delete_cf(
                self.cf(cf::BY_DEST),
                index_key(dest_node(&rec.destination).as_bytes(), key),
            );
            batch.delete_cf(self.cf(cf::BY_KIND), index_key(rec.kind.as_bytes(), key));
            batch.delete_cf(self.cf(cf::BY_EXPIRY), expiry_key(rec.expires_at, key));
            if let Some(tag) = sealed_tag(&rec.destination) {
                batch.delete_cf(self.cf(cf::BY_TAG), index_key(&tag, key));
            }
        }
        batch.delete_cf(self.cf(cf::BUNDLES), key);
        batch.delete_cf(self.cf(cf::RECORDS), key);
        batch.delete_cf(self.cf(cf::COPIES), key);
        batch.delete_cf(self.cf(cf::SEALED_FROM), key);
        // The private mark outlives the bundle while a tombstone for its key exists, so the
        // key never enters a reconciliation (purge_tombstones and purge_expired clear it).
        Ok(())
    }
}

/// The tag of a sealed bundle's destination (`dtn://sealed/<hex>`).
fn sealed_tag(dest: &str) -> Option<[u8; 16]> {
    let hex_tag = dest.strip_prefix("dtn://sealed/")?;
    let mut tag = [0u8; 16];
    hex::decode_to_slice(hex_tag, &mut tag).ok()?;
    Some(tag)
}

/// The key of the stored sealed bundle with this destination tag.
impl Store {
    pub fn sealed_by_tag(&self, tag: &[u8; 16]) -> Result<Vec<[u8; 32]>, StoreError> {
        self.index_scan(cf::BY_TAG, tag)
    }
}

fn dest_node(dest: &str) -> String {
    Eid::parse(dest)
        .map(|e| e.node_id().to_string())
        .unwrap_or_else(|_| dest.to_string())
}

fn index_key(prefix: &[u8], key: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 33);
    k.extend_from_slice(prefix);
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn expiry_key(t: DtnTime, key: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&t.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn key32(b: &[u8]) -> Result<[u8; 32], StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt {
        key: hex::encode(b),
        reason: "key is not 32 bytes".into(),
    })
}

fn decode_record(key: &[u8; 32], b: &[u8]) -> Result<BundleRecord, StoreError> {
    ciborium::from_reader(b).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}
