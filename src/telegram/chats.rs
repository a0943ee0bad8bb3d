//! The bridge's linked chats: one mesh identity per chat, each a node of its own
//! (`<home>/telegram/<chat id>/`: key file and store), so a chat can only ever act as, and
//! read, its own identity. Owns who may link (allow-list and one-time invite codes, in the
//! gateway's ledger), and the moves of bundles between the gateway's store and the chats'
//! stores: what a chat makes (messages, receipts, tasks) is handed to the gateway as any
//! contact's bundles are, and what arrives at the gateway for a chat (addressed to it, or
//! sealed so that its key opens it) is handed to the chat's node, which delivers it.

use crate::bundle::{Eid, VerifiedBundle};
use crate::node::{Node, NodeError};
use crate::store::{StoreError, Stored};
use crate::time::DtnTime;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Gateway ledger: `tg/chat/<chat id, 8 bytes BE>` → the chat's node ID.
const CHAT: &[u8] = b"tg/chat/";
/// Gateway ledger: `tg/allow/<chat id>` → chats the owner allowed (`telegram allow`).
const ALLOW: &[u8] = b"tg/allow/";
/// Gateway ledger: `tg/invite/<blake3 of the code>` → expiry (ms, 8 bytes BE).
const INVITE: &[u8] = b"tg/invite/";
/// Gateway ledger: the next update offset to ask for.
const OFFSET: &[u8] = b"tg/offset";
/// Gateway ledger: bundles received before this time (ms) were all routed to chats.
const ROUTED: &[u8] = b"tg/routed";
/// Chat ledger: the last update whose effect (a bundle made) is committed.
const LAST_UPDATE: &[u8] = b"tg/update";
/// Chat ledger: `tg/pushed/<key>`: shown in the chat already.
const PUSHED: &[u8] = b"tg/pushed/";

/// The folder of the chats' homes, under the gateway's home.
pub const DIR: &str = "telegram";
/// Chats' stores kept open at once (each is a RocksDB with its files); the least
/// recently used idle one is closed beyond this. Keys stay loaded for every chat.
pub const MAX_OPEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("this chat may not use this bridge: ask the gateway's owner for an invite code, then send /start CODE")]
    NotAllowed,
    #[error("that invite code is not valid (wrong, used or expired): ask the gateway's owner for a new one")]
    BadInvite,
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wallet(#[from] crate::wallet::WalletError),
    #[error("the bridge's work on the store stopped: {0}")]
    Stopped(String),
}

/// One linked chat's node, and the commits of its store not yet handed to the gateway.
pub struct Chat {
    pub id: i64,
    pub node: Node,
    commits: Mutex<broadcast::Receiver<Stored>>,
}

/// What handing bundles over did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bundles the other side stored.
    pub new: usize,
    /// Bundles it refused or had (duplicates, already delivered, expired).
    pub skipped: usize,
}

/// All linked chats of one gateway.
pub struct Chats {
    pub gateway: Arc<Node>,
    dir: PathBuf,
    /// Open chat stores, with when each was last used.
    open: Mutex<HashMap<i64, (Arc<Chat>, u64)>>,
    uses: std::sync::atomic::AtomicU64,
    /// Every linked chat's identity (for trying sealed bundles), by chat.
    keys: Mutex<HashMap<i64, Arc<crate::identity::Identity>>>,
}

fn chat_key(prefix: &[u8], id: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn invite_key(code: &str) -> Vec<u8> {
    let mut k = INVITE.to_vec();
    k.extend_from_slice(blake3::hash(code.trim().as_bytes()).as_bytes());
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// A new invite code: 20 random characters of base32 (100 bits).
pub fn new_invite_code() -> String {
    let mut b = [0u8; 13];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    let s = data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase();
    s[..20].to_string()
}

/// Store an invite code (its hash only) in the gateway's ledger, valid until `expires`.
pub fn add_invite(gateway: &Node, code: &str, expires: DtnTime) -> Result<(), StoreError> {
    gateway.store.commit_ledger(
        &[(invite_key(code), Some(expires.0.to_be_bytes().to_vec()))],
        &[],
        &[],
        DtnTime(0),
    )
}

/// Allow a chat to link without an invite code.
pub fn allow(gateway: &Node, chat: i64) -> Result<(), StoreError> {
    gateway.store.commit_ledger(
        &[(chat_key(ALLOW, chat), Some(Vec::new()))],
        &[],
        &[],
        DtnTime(0),
    )
}

/// Linked chats: (chat id, node ID).
pub fn linked(gateway: &Node) -> Result<Vec<(i64, String)>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in gateway.store.ledger_scan(CHAT)? {
        if let (Ok(id), Ok(node)) = (
            <[u8; 8]>::try_from(&k[CHAT.len()..]).map(i64::from_be_bytes),
            String::from_utf8(v),
        ) {
            out.push((id, node));
        }
    }
    Ok(out)
}

impl Chats {
    pub fn new(gateway: Arc<Node>) -> Chats {
        let dir = gateway.home.join(DIR);
        Chats {
            gateway,
            dir,
            open: Mutex::new(HashMap::new()),
            uses: std::sync::atomic::AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn home_of(&self, id: i64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The update offset to ask Telegram for (0 at first).
    pub fn offset(&self) -> Result<i64, StoreError> {
        Ok(self
            .gateway
            .store
            .ledger_get(OFFSET)?
            .and_then(|v| be_u64(&v))
            .map(|v| v as i64)
            .unwrap_or(0))
    }

    pub fn set_offset(&self, offset: i64) -> Result<(), StoreError> {
        self.gateway.store.commit_ledger(
            &[(
                OFFSET.to_vec(),
                Some((offset as u64).to_be_bytes().to_vec()),
            )],
            &[],
            &[],
            DtnTime(0),
        )
    }

    /// The chat's node, if the chat is linked (opened on first use).
    pub fn get(&self, id: i64) -> Result<Option<Arc<Chat>>, ChatError> {
        if let Some(c) = self.touch(id) {
            return Ok(Some(c));
        }
        if self
            .gateway
            .store
            .ledger_get(&chat_key(CHAT, id))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(self.open_chat(id, false)?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (Arc<Chat>, u64)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self) -> u64 {
        self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn touch(&self, id: i64) -> Option<Arc<Chat>> {
        let t = self.tick();
        let mut open = self.lock();
        let e = open.get_mut(&id)?;
        e.1 = t;
        Some(e.0.clone())
    }

    /// Linked chats' identities: (chat, identity, node ID).
    pub fn identities(
        &self,
    ) -> Result<Vec<(i64, Arc<crate::identity::Identity>, String)>, ChatError> {
        let mut out = Vec::new();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for (id, node) in linked(&self.gateway)? {
            let ident = match keys.get(&id) {
                Some(i) => i.clone(),
                None => {
                    let path = self.home_of(id).join(crate::node::KEY_FILE);
                    let i =
                        Arc::new(crate::identity::Identity::load(&path).map_err(NodeError::from)?);
                    keys.insert(id, i.clone());
                    i
                }
            };
            out.push((id, ident, node));
        }
        Ok(out)
    }

    fn open_chat(&self, id: i64, create: bool) -> Result<Arc<Chat>, ChatError> {
        let t = self.tick();
        let mut open = self.lock();
        if let Some(c) = open.get(&id) {
            return Ok(c.0.clone());
        }
        // Close the least recently used idle store beyond the bound.
        while open.len() >= MAX_OPEN {
            let idle = open
                .iter()
                .filter(|(_, (c, _))| Arc::strong_count(c) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            match idle {
                Some(k) => {
                    open.remove(&k);
                }
                None => break,
            }
        }
        let home = self.home_of(id);
        let node = if create && !home.join(crate::node::KEY_FILE).exists() {
            std::fs::create_dir_all(&self.dir).map_err(|source| NodeError::Home {
                path: self.dir.display().to_string(),
                source,
            })?;
            Node::init(&home)?
        } else {
            Node::open(&home)?
        };
        let commits = Mutex::new(node.store.subscribe());
        let chat = Arc::new(Chat { id, node, commits });
        open.insert(id, (chat.clone(), t));
        drop(open);
        // Whatever a crash left unhanded, and the marketplace the gateway settles with.
        self.sync_market(&chat)?;
        self.hand_all_to_gateway(&chat)?;
        Ok(chat)
    }

    /// The chat settles with the gateway's marketplace.
    fn sync_market(&self, chat: &Chat) -> Result<(), ChatError> {
        if let Some(m) = self.gateway.market()? {
            if chat.node.market()? != Some(m.clone()) {
                chat.node.set_market(&m)?;
            }
        }
        Ok(())
    }

    /// Link `id` (`/start`): allowed when the config's `allow` names it, the owner allowed
    /// it, or `invite` is a valid code (then used up). Linking again returns the same
    /// identity. Returns the chat and whether it was new.
    pub fn link(
        &self,
        id: i64,
        invite: Option<&str>,
        allowed: &[i64],
        now: DtnTime,
    ) -> Result<(Arc<Chat>, bool), ChatError> {
        if let Some(c) = self.get(id)? {
            return Ok((c, false));
        }
        let store = &self.gateway.store;
        let mut kv = Vec::new();
        let ok = allowed.contains(&id) || store.ledger_get(&chat_key(ALLOW, id))?.is_some();
        if !ok {
            let Some(code) = invite else {
                return Err(ChatError::NotAllowed);
            };
            let key = invite_key(code);
            match store.ledger_get(&key)?.and_then(|v| be_u64(&v)) {
                Some(exp) if exp > now.0 => kv.push((key, None)),
                _ => return Err(ChatError::BadInvite),
            }
        }
        let chat = self.open_chat(id, true)?;
        kv.push((
            chat_key(CHAT, id),
            Some(chat.node.node_id().to_string().into_bytes()),
        ));
        store.commit_ledger(&kv, &[], &[], DtnTime(0))?;
        Ok((chat, true))
    }

    /// Hand what the chat's store newly holds to the gateway (as a contact's bundles):
    /// everything but what stays with the chat (its private inners, what is addressed to
    /// it, what is delivered).
    pub fn hand_to_gateway(&self, chat: &Chat) -> Result<Moved, ChatError> {
        let mut keys = Vec::new();
        let lagged = {
            let mut rx = chat.commits.lock().unwrap_or_else(|p| p.into_inner());
            let mut lagged = false;
            loop {
                match rx.try_recv() {
                    Ok(s) => keys.push(s.key),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            lagged
        };
        if lagged {
            return self.hand_all_to_gateway(chat);
        }
        self.hand_keys(chat, &keys)
    }

    fn hand_all_to_gateway(&self, chat: &Chat) -> Result<Moved, ChatError> {
        let keys: Vec<[u8; 32]> = chat
            .node
            .store
            .records()?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.hand_keys(chat, &keys)
    }

    fn hand_keys(&self, chat: &Chat, keys: &[[u8; 32]]) -> Result<Moved, ChatError> {
        let mut moved = Moved::default();
        if keys.is_empty() {
            return Ok(moved);
        }
        let held = chat.node.store.held_back(&chat.node.node_id())?;
        let now = DtnTime::now();
        for key in keys {
            if held.contains(key) {
                continue;
            }
            let Some(raw) = chat.node.store.get_raw(key)? else {
                continue;
            };
            match self.gateway.receive(&raw, now) {
                Ok((_, crate::store::PutOutcome::New)) => moved.new += 1,
                Ok(_) => moved.skipped += 1,
                Err(NodeError::Bundle(e)) => {
                    tracing::debug!(chat = chat.id, "gateway refused a chat's bundle: {e}");
                    moved.skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(moved)
    }

    /// Hand bundles the gateway just stored to the chats they are for: addressed to a
    /// chat's node, or sealed so that its key opens them. Returns the chats that received
    /// something (their deliveries and receipts already handed back to the gateway).
    pub fn route_from_gateway(&self, stored: &[Stored]) -> Result<Vec<Arc<Chat>>, ChatError> {
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        // Bundles are read into memory a bounded piece at a time: 512, or 32 MiB (or one
        // bundle, however large).
        if stored.len() > 1 {
            let mut bytes = 0u64;
            let over = stored.iter().position(|s| {
                bytes += s.size;
                bytes > 32 << 20
            });
            let cut = match over {
                Some(i) => Some(i.max(1)),
                None => (stored.len() > 512).then_some(512),
            };
            if let Some(cut) = cut {
                return self.route_in_pieces(stored, cut);
            }
        }
        let idents = self.identities()?;
        if idents.is_empty() {
            return Ok(Vec::new());
        }
        let by_node: HashMap<&str, i64> =
            idents.iter().map(|(id, _, n)| (n.as_str(), *id)).collect();
        let now = DtnTime::now();
        // What goes to each chat, to be stored there in one write.
        let mut arriving: HashMap<i64, Vec<VerifiedBundle>> = HashMap::new();
        for s in stored {
            let dest = Eid::parse(&s.destination)
                .map(|e| e.node_id().to_string())
                .unwrap_or_default();
            let direct = by_node.get(dest.as_str()).copied();
            if direct.is_none() && s.kind != crate::seal::KIND_SEALED {
                continue;
            }
            let Some(raw) = self.gateway.store.get_raw(&s.key)? else {
                continue;
            };
            let Ok(vb) = VerifiedBundle::decode(&raw) else {
                continue;
            };
            let target = match direct {
                Some(id) => Some(id),
                None => idents
                    .iter()
                    .find(|(_, ident, _)| opens(&vb, ident))
                    .map(|(id, _, _)| *id),
            };
            if let Some(id) = target {
                arriving.entry(id).or_default().push(vb);
            }
        }
        let mut touched: HashMap<i64, Arc<Chat>> = HashMap::new();
        for (id, vbs) in arriving {
            let Some(chat) = self.get(id)? else { continue };
            // As any contact's arrivals: opened, delivered, receipts in bulk, one write.
            let me = &chat.node.identity;
            let mut batch = crate::route::delivery::Batch::new(&chat.node.store, me, now);
            for vb in vbs {
                let a = crate::route::delivery::Arriving::new(vb, me);
                batch.add(a, None).map_err(NodeError::from)?;
            }
            batch.commit().map_err(NodeError::from)?;
            touched.insert(id, chat);
        }
        for c in touched.values() {
            self.hand_to_gateway(c)?;
        }
        Ok(touched.into_values().collect())
    }

    fn route_in_pieces(&self, stored: &[Stored], cut: usize) -> Result<Vec<Arc<Chat>>, ChatError> {
        let (head, tail) = stored.split_at(cut.min(stored.len()));
        let mut touched: HashMap<i64, Arc<Chat>> = HashMap::new();
        for part in [head, tail] {
            for c in self.route_from_gateway(part)? {
                touched.insert(c.id, c);
            }
        }
        Ok(touched.into_values().collect())
    }

    /// Bundles received before this time (ms) were all routed ([`Chats::set_routed`]).
    pub fn routed(&self) -> Result<u64, StoreError> {
        Ok(self
            .gateway
            .store
            .ledger_get(ROUTED)?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Note that everything received before `before` (ms) was routed.
    pub fn set_routed(&self, before: u64) -> Result<(), StoreError> {
        self.gateway.store.commit_ledger(
            &[(ROUTED.to_vec(), Some(before.to_be_bytes().to_vec()))],
            &[],
            &[],
            DtnTime(0),
        )
    }

    /// Route what the gateway holds that was received at or after `since` (ms; at start:
    /// what came while the bridge was off; 0 for everything).
    pub fn route_all(&self, since: u64) -> Result<Vec<Arc<Chat>>, ChatError> {
        let mut stored = Vec::new();
        for (key, r) in self.gateway.store.records()? {
            if r.received_at.0 < since {
                continue;
            }
            stored.push(Stored {
                key,
                kind: r.kind,
                source: r.source,
                destination: r.destination,
                size: r.size,
            });
        }
        self.route_from_gateway(&stored)
    }
}

/// Whether this identity's key opens the sealed bundle (the trial every recipient makes).
fn opens(vb: &VerifiedBundle, ident: &crate::identity::Identity) -> bool {
    matches!(
        crate::seal::open_with_any(vb.bundle(), ident.seal_keys(), &ident.node_id()),
        Ok(Some(_))
    )
}

impl Chat {
    /// The last update whose effect is committed in this chat's store.
    pub fn last_update(&self) -> Result<i64, StoreError> {
        Ok(self
            .node
            .store
            .ledger_get(LAST_UPDATE)?
            .and_then(|v| be_u64(&v))
            .map(|v| v as i64)
            .unwrap_or(-1))
    }

    /// The ledger entry that marks `update` handled (commit it with the update's effect).
    pub fn update_mark(update: i64) -> (Vec<u8>, Option<Vec<u8>>) {
        (
            LAST_UPDATE.to_vec(),
            Some((update as u64).to_be_bytes().to_vec()),
        )
    }

    /// Inbox items not yet shown in the chat, oldest first (only those are decoded).
    pub fn unpushed(&self) -> Result<Vec<crate::node::InboxItem>, NodeError> {
        let store = &self.node.store;
        let mut out = Vec::new();
        for key in store.for_destination_node(&self.node.node_id())? {
            let mut k = PUSHED.to_vec();
            k.extend_from_slice(&key);
            if store.ledger_get(&k)?.is_some() {
                continue;
            }
            let (Some(record), Some(vb)) = (store.record(&key)?, store.get(&key)?) else {
                continue;
            };
            let adu = crate::adu::decode(vb.bundle().payload()).map_err(|e| e.to_string());
            out.push(crate::node::InboxItem { key, record, adu });
        }
        out.sort_by_key(|i| (i.record.created_ms, i.record.seq, i.record.received_at));
        Ok(out)
    }

    /// Mark an inbox item shown.
    pub fn mark_pushed(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        let mut k = PUSHED.to_vec();
        k.extend_from_slice(key);
        self.node
            .store
            .commit_ledger(&[(k, Some(Vec::new()))], &[], &[], DtnTime(0))
    }

    pub fn home(&self) -> &Path {
        &self.node.home
    }
}
