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

pub struct Node {
    pub home: PathBuf,
    pub identity: Identity,
    pub store: Store,
}

/// A bundle addressed to this node, with its payload decoded where we can.
pub struct InboxItem {
    pub key: [u8; 32],
    pub record: BundleRecord,
    pub adu: Result<Adu, String>,
}

impl Node {
    /// Create a new node in `home`: identity (refusing to replace one) and store.
    pub fn init(home: &Path) -> Result<Node, NodeError> {
        create_private_dir(home)?;
        let identity = Identity::generate();
        identity.save_new(&home.join(KEY_FILE))?;
        let store = Store::open(&home.join(STORE_DIR))?;
        Ok(Node {
            home: home.to_path_buf(),
            identity,
            store,
        })
    }

    /// Open an initialised node.
    pub fn open(home: &Path) -> Result<Node, NodeError> {
        let identity = Identity::load(&home.join(KEY_FILE))?;
        let store = Store::open(&home.join(STORE_DIR))?;
        Ok(Node {
            home: home.to_path_buf(),
            identity,
            store,
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

    /// Decode, verify and store bytes that arrived from outside.
    pub fn receive(&self, bytes: &[u8], now: DtnTime) -> Result<(BundleId, PutOutcome), NodeError> {
        let vb = VerifiedBundle::decode(bytes)?;
        if vb.bundle().expires_at(now) <= now {
            return Err(NodeError::Bundle(BundleError::BadPrimary(format!(
                "bundle expired at {}",
                vb.bundle().expires_at(now).to_rfc3339()
            ))));
        }
        let outcome = self.store.put(&vb, now)?;
        Ok((vb.id(), outcome))
    }

    /// Routing duties for bundles a batch import just stored (sticks, feeds): receipts for
    /// those addressed here, receipts applied, copies already delivered dropped again.
    pub fn settle_arrivals(
        &self,
        keys: &[[u8; 32]],
        now: DtnTime,
    ) -> Result<SettleReport, NodeError> {
        let mut out = SettleReport::default();
        for key in keys {
            let Some(vb) = self.store.get(key)? else {
                continue;
            };
            let s = crate::route::delivery::settle(&self.store, &self.identity, &vb, now).map_err(
                |e| match e {
                    crate::route::delivery::DeliveryError::Store(s) => NodeError::Store(s),
                    crate::route::delivery::DeliveryError::Receipt(b) => NodeError::Bundle(b),
                },
            )?;
            out.delivered += s.delivered as usize;
            out.purged += s.purged as usize;
            if s.dropped {
                out.dropped.push(*key);
            }
        }
        Ok(out)
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
