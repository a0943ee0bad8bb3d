//! A node's home directory and what lives in it: the identity key file and the RocksDB
//! store. This is where identity and store are wired together for the commands (and,
//! later, for the daemon that adds transports and the worker).
//!
//! Layout of a home: `identity.key` (0600), `store/` (RocksDB). The home itself is 0700.

use crate::adu::{self, Adu};
use crate::bundle::{BundleBuilder, BundleError, BundleId, Eid, VerifiedBundle};
use crate::identity::{Identity, IdentityError};
use crate::store::{BundleRecord, PutOutcome, Store, StoreError};
use crate::time::DtnTime;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error("no sealing key known for {0}: it is not a Mycelium node ID (dtn://<52 base32 characters>/) and no node record or `mycelium contact add` named one; send with --no-seal")]
    NoSealKey(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create home directory {path}: {source}")]
    Home {
        path: String,
        source: std::io::Error,
    },
}

pub const KEY_FILE: &str = "identity.key";
pub const STORE_DIR: &str = "store";

/// The default home: `$MYCELIUM_HOME`, else `$XDG_DATA_HOME/mycelium`, else
/// `~/.local/share/mycelium`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MYCELIUM_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("mycelium");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/mycelium")
}

/// What [`Node::settle_arrivals`] did.
#[derive(Debug, Default)]
pub struct SettleReport {
    pub delivered: usize,
    pub purged: usize,
    /// Keys dropped because their delivery was already confirmed.
    pub dropped: Vec<[u8; 32]>,
}

/// Ledger key of the marketplace this node settles with.
pub const META_MARKET: &[u8] = b"cfg/market";

/// Signed (and perhaps sealed) bundles ready to commit.
#[derive(Debug, Default)]
pub struct Composed {
    /// Everything to store: inner and outer bundles.
    pub bundles: Vec<VerifiedBundle>,
    /// Keys of sealed inners, kept here only.
    pub private: Vec<[u8; 32]>,
    /// Keys of what travels, one per payload, in order.
    pub travelling: Vec<[u8; 32]>,
}

pub struct Node {
    pub home: PathBuf,
    pub identity: Identity,
    pub store: Store,
    /// One step of the marketplace's rules at a time on this node (see
    /// `market::service`).
    rules: std::sync::Mutex<()>,
    /// Deliveries whose receipt a running sync session of this process owes and will
    /// issue at its end ([`crate::route::delivery::Owed`]): [`Node::pay_owed`] leaves
    /// them to it.
    owed_live: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

/// A bundle addressed to this node, with its payload decoded where we can.
pub struct InboxItem {
    pub key: [u8; 32],
    pub record: BundleRecord,
    pub adu: Result<Adu, String>,
}

impl Node {
    /// Create a new node in `home`: identity (refusing to replace one) and store. (The
    /// `init` command also publishes the node record; see [`Node::publish_record`].)
    pub fn init(home: &Path) -> Result<Node, NodeError> {
        Node::init_as(home, Identity::generate())
    }

    /// [`Node::init`] with a given identity: another front node of a replicated
    /// marketplace signs as the same node.
    pub fn init_as(home: &Path, identity: Identity) -> Result<Node, NodeError> {
        create_private_dir(home)?;
        identity.save_new(&home.join(KEY_FILE))?;
        let store = Store::open(&home.join(STORE_DIR))?;
        Ok(Node {
            home: home.to_path_buf(),
            identity,
            store,
            rules: std::sync::Mutex::new(()),
            owed_live: Default::default(),
        })
    }

    /// Open an initialised node.
    pub fn open(home: &Path) -> Result<Node, NodeError> {
        let identity = Identity::load(&home.join(KEY_FILE))?;
        let store = Store::open(&home.join(STORE_DIR))?;
        // A home made before 2026-12 published its old sealing key in its node record
        // (and keeps it as its own contact): others may still seal to it.
        let legacy = identity.legacy_seal_key().public();
        let published = store.contact(&identity.node_id().to_string())?;
        let identity = identity.with_legacy_seal_key(published == Some(legacy));
        Ok(Node {
            home: home.to_path_buf(),
            identity,
            store,
            rules: std::sync::Mutex::new(()),
            owed_live: Default::default(),
        })
    }

    pub fn node_id(&self) -> Eid {
        self.identity.node_id()
    }

    /// Create, sign and durably store a bundle carrying `payload` for `to`.
    pub fn originate(
        &self,
        to: Eid,
        payload: Vec<u8>,
        lifetime_ms: u64,
        now: DtnTime,
    ) -> Result<VerifiedBundle, NodeError> {
        let ts = self.store.next_creation_timestamp(now)?;
        let vb = BundleBuilder::new(to, ts, lifetime_ms)
            .payload(payload)
            .sign(&self.identity)?;
        self.store.put(&vb, now)?;
        Ok(vb)
    }

    /// Originate a bundle for a single node and, if `seal`, store only its sealed form for
    /// travel (the signed inner bundle stays here, private). Returns (inner, outer).
    pub fn send(
        &self,
        to: Eid,
        payload: Vec<u8>,
        lifetime_ms: u64,
        now: DtnTime,
        seal: bool,
    ) -> Result<(VerifiedBundle, Option<VerifiedBundle>), NodeError> {
        if !seal {
            return Ok((self.originate(to, payload, lifetime_ms, now)?, None));
        }
        let xpk = self
            .seal_key_for(&to)?
            .ok_or_else(|| NodeError::NoSealKey(to.node_id().to_string()))?;
        let ts = self.store.next_creation_timestamp(now)?;
        let inner = BundleBuilder::new(to, ts, lifetime_ms)
            .payload(payload)
            .sign(&self.identity)?;
        let outer = crate::seal::seal(&inner, &xpk, now, &mut rand_core::OsRng)?;
        let change = crate::route::delivery::Change {
            put: vec![inner.clone(), outer.clone()],
            private: vec![inner.id().key()],
            ..Default::default()
        };
        crate::route::delivery::RouteStore::commit(&self.store, change, now)?;
        Ok((inner, Some(outer)))
    }

    /// The X25519 key to seal for `to`: the one its latest node record (or `contact add`)
    /// gave, else the one its node ID stands for (first contact needs nothing but the ID).
    pub fn seal_key_for(&self, to: &Eid) -> Result<Option<[u8; 32]>, NodeError> {
        let node = to.node_id();
        if let Some(k) = self.store.contact(&node.to_string())? {
            return Ok(Some(k));
        }
        Ok(crate::identity::seal_key_for_node_id(&node).ok())
    }

    /// Sign payloads for everyone (destination `dtn:none`, not sealed) and store them in
    /// one synced write, for travel: models, releases. Returns how many.
    pub fn store_for_everyone(
        &self,
        payloads: Vec<Vec<u8>>,
        lifetime_ms: u64,
        now: DtnTime,
    ) -> Result<usize, NodeError> {
        let out: Vec<(Option<Eid>, Vec<u8>, u64)> = payloads
            .into_iter()
            .map(|p| (None, p, lifetime_ms))
            .collect();
        let c = self.compose(&out, now, false)?;
        self.store.commit_ledger(&[], &c.bundles, &c.private, now)?;
        Ok(out.len())
    }

    /// Store the file at `path` (`size` bytes) for everyone in pieces of at most `chunk`
    /// bytes (one empty piece for an empty file), each made into a payload by
    /// `payload(index, data)`, committed four at a time so memory stays bounded. Returns
    /// how many bundles.
    pub fn store_file_chunks(
        &self,
        path: &Path,
        size: u64,
        chunk: usize,
        lifetime_ms: u64,
        now: DtnTime,
        mut payload: impl FnMut(u32, Vec<u8>) -> Vec<u8>,
    ) -> Result<usize, NodeError> {
        let err = |source| NodeError::File {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(err)?;
        let (mut n, mut batch) = (0, Vec::new());
        let pieces = size.div_ceil(chunk as u64).max(1) as u32;
        for index in 0..pieces {
            let left = size.saturating_sub(u64::from(index) * chunk as u64);
            let mut data = vec![0u8; (chunk as u64).min(left) as usize];
            std::io::Read::read_exact(&mut file, &mut data).map_err(err)?;
            batch.push(payload(index, data));
            if batch.len() == 4 || index + 1 == pieces {
                n += self.store_for_everyone(std::mem::take(&mut batch), lifetime_ms, now)?;
            }
        }
        Ok(n)
    }

    /// Sign payloads for sending (`to` = `None`: for everyone) and, if `seal`, seal each
    /// one for a recipient whose sealing key is known. Nothing is stored: the caller
    /// commits [`Composed`] together with its own state (see `Store::commit_ledger`).
    pub fn compose(
        &self,
        out: &[(Option<Eid>, Vec<u8>, u64)],
        now: DtnTime,
        seal: bool,
    ) -> Result<Composed, NodeError> {
        use rayon::prelude::*;
        let ts = self
            .store
            .reserve_creation_timestamps(now, out.len() as u64)?;
        let mut xpks = Vec::with_capacity(out.len());
        for (to, _, _) in out {
            xpks.push(match (seal, to) {
                (true, Some(to)) => self.seal_key_for(to)?,
                _ => None,
            });
        }
        // Signing and sealing (the stamp's proof of work) on every core.
        let made: Vec<Result<(VerifiedBundle, Option<VerifiedBundle>), NodeError>> = out
            .par_iter()
            .zip(ts)
            .zip(xpks)
            .map(|(((to, payload, lifetime), ts), xpk)| {
                let dest = to.clone().unwrap_or(Eid::Null);
                let inner = BundleBuilder::new(dest, ts, *lifetime)
                    .payload(payload.clone())
                    .sign(&self.identity)?;
                let outer = match xpk {
                    Some(xpk) => Some(crate::seal::seal(&inner, &xpk, now, &mut rand_core::OsRng)?),
                    None => None,
                };
                Ok((inner, outer))
            })
            .collect();
        let mut c = Composed::default();
        for m in made {
            match m? {
                (inner, Some(outer)) => {
                    c.private.push(inner.id().key());
                    c.travelling.push(outer.id().key());
                    c.bundles.push(inner);
                    c.bundles.push(outer);
                }
                (inner, None) => {
                    c.travelling.push(inner.id().key());
                    c.bundles.push(inner);
                }
            }
        }
        Ok(c)
    }

    /// Held while one step of the marketplace's rules reads the ledger, decides and
    /// commits: two at once on one node would decide on the same state.
    pub fn rules_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The marketplace this node settles with (`mycelium market use`), if set.
    pub fn market(&self) -> Result<Option<Eid>, NodeError> {
        Ok(self
            .store
            .ledger_get(META_MARKET)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| Eid::parse(&s).ok()))
    }

    /// Settle with, submit tasks to and take assignments from `market`.
    pub fn set_market(&self, market: &Eid) -> Result<(), NodeError> {
        let kv = [(
            META_MARKET.to_vec(),
            Some(market.node_id().to_string().into_bytes()),
        )];
        self.store.commit_ledger(&kv, &[], &[], DtnTime(0))?;
        Ok(())
    }

    /// Publish this node's record (its sealing key), signed, for everyone: the way other
    /// nodes learn how to seal for it. Lives a year; `init` makes the first.
    pub fn publish_record(&self, now: DtnTime) -> Result<VerifiedBundle, NodeError> {
        let rec = adu::NodeRecord {
            x25519: self.identity.seal_key().public(),
        };
        let vb = self.originate(
            Eid::Null,
            adu::encode_kind(adu::KIND_NODE, &rec),
            365 * 24 * 3600 * 1000,
            now,
        )?;
        // Our own key, so bundles we seal to ourselves (tests, loops) work too.
        self.store
            .set_contact(&self.node_id().to_string(), &rec.x25519)?;
        Ok(vb)
    }

    /// Decode, verify and store bytes that arrived from outside (one bundle file), with
    /// the same delivery rules as any contact: receipts, sealed bundles opened, node
    /// records learnt.
    pub fn receive(&self, bytes: &[u8], now: DtnTime) -> Result<(BundleId, PutOutcome), NodeError> {
        use crate::route::delivery::{self, Arrival};
        let vb = VerifiedBundle::decode(bytes)?;
        let id = vb.id();
        let refuse = |why: String| NodeError::Bundle(BundleError::BadPrimary(why));
        match delivery::accept(&self.store, &self.identity, vb, now)? {
            Arrival::New { .. } => Ok((id, PutOutcome::New)),
            Arrival::Duplicate => Ok((id, PutOutcome::Duplicate)),
            Arrival::Expired => Err(refuse("bundle expired".into())),
            Arrival::AlreadyDelivered => Err(refuse(
                "its destination has already confirmed delivery".into(),
            )),
            Arrival::Refused(why) => Err(refuse(why)),
        }
    }

    /// Routing duties for bundles a batch import just stored (sticks, feeds): receipts for
    /// those addressed here (in bulk), receipts applied, copies already delivered dropped
    /// again. Bundles are read back and opened in parallel, and settled in atomic batches.
    pub fn settle_arrivals(
        &self,
        keys: &[[u8; 32]],
        now: DtnTime,
    ) -> Result<SettleReport, NodeError> {
        use crate::route::delivery;
        /// Bytes of bundles read back at once: memory stays bounded by this, however
        /// large the import.
        const SETTLE_BYTES: usize = 4 << 20;
        let mut out = SettleReport::default();
        let mut rest = keys;
        while !rest.is_empty() {
            let (mut raws, mut bytes, mut taken) = (Vec::new(), 0, 0);
            for key in rest {
                if raws.len() >= delivery::RECEIPT_BATCH || (bytes >= SETTLE_BYTES && taken > 0) {
                    break;
                }
                taken += 1;
                if let Some(raw) = self.store.get_raw(key)? {
                    bytes += raw.len();
                    raws.push(raw);
                }
            }
            let keys = &rest[..taken];
            rest = &rest[taken..];
            // What fails to verify now was stored before by this node: it stays as it is.
            let arriving = delivery::prepare(raws, &self.identity)
                .into_iter()
                .flatten();
            self.settle_batch(arriving, keys, now, &mut out)?;
        }
        Ok(out)
    }

    /// Settle what an import stored and could not settle before it was stopped (a crash,
    /// a pulled stick): the receipts, tombstones and openings it owed.
    pub fn settle_unsettled(&self, now: DtnTime) -> Result<SettleReport, NodeError> {
        self.pay_owed(now)?;
        let keys = self.store.unsettled()?;
        if keys.is_empty() {
            return Ok(SettleReport::default());
        }
        tracing::info!(
            bundles = keys.len(),
            "settling bundles an interrupted import stored"
        );
        self.settle_arrivals(&keys, now)
    }

    /// Issue the receipts a sync session stopped before its end (a crash, a cut) owes for
    /// what it delivered: one write, receipts in bulk. Deliveries a session of this
    /// process still holds are left to it. Returns how many were acknowledged.
    pub fn pay_owed(&self, now: DtnTime) -> Result<usize, NodeError> {
        let marks = self.store.owed_marks()?;
        if marks.is_empty() {
            return Ok(0);
        }
        let owed = {
            let live = self.owed_live.lock().unwrap_or_else(|p| p.into_inner());
            crate::route::delivery::Owed::from_marks(
                marks.into_iter().filter(|(k, _)| !live.contains(k)),
            )
        };
        if owed.is_empty() {
            return Ok(0);
        }
        let n = owed.len();
        tracing::info!(
            deliveries = n,
            "acknowledging what an interrupted sync delivered"
        );
        let mut batch = crate::route::delivery::Batch::new(&self.store, &self.identity, now);
        batch.owe(owed);
        batch.commit()?;
        Ok(n)
    }

    /// Keys a running session owes receipts for ([`Node::pay_owed`] leaves them alone):
    /// `owing` adds them, else they are taken off.
    pub fn owed_live(&self, keys: impl IntoIterator<Item = [u8; 32]>, owing: bool) {
        let mut live = self.owed_live.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if owing {
                live.insert(k);
            } else {
                live.remove(&k);
            }
        }
    }

    /// [`Node::settle_arrivals`] for bundles just stored whose CPU work (verifying,
    /// opening) is already done: one atomic batch, adding to `out`.
    pub fn settle_prepared(
        &self,
        arriving: impl IntoIterator<Item = crate::route::delivery::Arriving>,
        now: DtnTime,
        out: &mut SettleReport,
    ) -> Result<(), NodeError> {
        self.settle_batch(arriving, &[], now, out)
    }

    /// Settle `arriving`; `keys` (stored bundles among which some may be gone or no
    /// longer verify) stop waiting to be settled in the same commit.
    fn settle_batch(
        &self,
        arriving: impl IntoIterator<Item = crate::route::delivery::Arriving>,
        keys: &[[u8; 32]],
        now: DtnTime,
        out: &mut SettleReport,
    ) -> Result<(), NodeError> {
        let mut batch = crate::route::delivery::Batch::new(&self.store, &self.identity, now);
        for k in keys {
            batch.give_up(*k);
        }
        for a in arriving {
            let key = a.vb.id().key();
            let s = batch.settle(a)?;
            out.delivered += s.delivered as usize;
            out.purged += s.purged;
            if s.dropped {
                out.dropped.push(key);
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        Ok(())
    }

    /// Bundles addressed to this node, oldest first.
    pub fn inbox(&self) -> Result<Vec<InboxItem>, NodeError> {
        let mut out = Vec::new();
        for key in self.store.for_destination_node(&self.node_id())? {
            let Some(record) = self.store.record(&key)? else {
                continue;
            };
            let adu = match self.store.get(&key)? {
                Some(vb) => adu::decode(vb.bundle().payload()).map_err(|e| e.to_string()),
                None => continue,
            };
            out.push(InboxItem { key, record, adu });
        }
        out.sort_by_key(|i| (i.record.created_ms, i.record.seq, i.record.received_at));
        Ok(out)
    }
}

impl From<crate::route::delivery::DeliveryError<StoreError>> for NodeError {
    fn from(e: crate::route::delivery::DeliveryError<StoreError>) -> NodeError {
        use crate::route::delivery::DeliveryError;
        match e {
            DeliveryError::Store(s) => NodeError::Store(s),
            DeliveryError::Receipt(b) => NodeError::Bundle(b),
            DeliveryError::Seal(x) => NodeError::Seal(x),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), NodeError> {
    let err = |source| NodeError::Home {
        path: dir.display().to_string(),
        source,
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}
