//! Delivery and receipts: what a node does with a verified bundle that arrived over any
//! medium (QUIC, stick, feed), and the forwarding rules that go with it. Pure policy over
//! a [`RouteStore`]: the RocksDB store implements it for real nodes, the simulation an
//! in-memory map.
//!
//! - Arrivals from one contact are handled as a [`Batch`]: one atomic commit, and
//!   receipts in bulk (one signed `receipts` bundle per source and [`RECEIPT_BATCH`]
//!   deliveries). The CPU work (signatures, stamps, opening sealed bundles) is done
//!   before, in parallel ([`prepare`]). A sync session's batches may leave their
//!   receipts [`Owed`] (marked on disk) for its last batch to issue.
//! - A bundle that reached its destination is delivered once: the destination keeps it
//!   (its inbox), records a tombstone so it never offers it to anyone, and owes the
//!   source a receipt.
//! - A sealed bundle's receipt goes back sealed and reveals, in its envelope, the
//!   delivery secrets of the sealed bundles it acknowledges: any node holding one of them
//!   drops it, without learning who received it (`bundles/README.md` §11.5).
//! - A node that sees a receipt signed by the original's destination records a tombstone
//!   and drops its copy of the original (anti-entropy: copies die out once delivered).
//!   Tombstones live until the original would have expired, so a late copy is refused
//!   instead of being carried again. A receipt signed by anyone else cannot suppress a
//!   bundle: a tombstone only counts when its signer is that bundle's destination.
//! - Forwarding increments the hop count; a bundle at its hop limit stays put.

use crate::adu::{self, Adu};
use crate::bundle::{
    block_types, Bundle, BundleBuilder, BundleError, CreationTimestamp, Eid, HopCount,
    VerifiedBundle,
};
use crate::identity::Identity;
use crate::time::DtnTime;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// "Delivered; do not carry": kept until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Node ID that signed the receipt (or this node, at the destination).
    pub signer: String,
    /// The original's creation time (DTN ms): its place in reconciliation order.
    pub created: u64,
    pub expires: DtnTime,
    /// The signer was checked against the bundle's destination (this node held it, or is
    /// its destination). Only verified tombstones stop a node offering or asking for a key;
    /// an unverified one only refuses a late copy whose destination is the signer.
    #[serde(default)]
    pub verified: bool,
}

/// One atomic change to a store: bundles to add, tombstones to record, keys to drop.
#[derive(Default)]
pub struct Change {
    pub put: Vec<VerifiedBundle>,
    pub tombstones: Vec<([u8; 32], Tombstone)>,
    pub delete: Vec<[u8; 32]>,
    /// Sealing keys learnt from signed node records: (node ID, X25519 key).
    pub contacts: Vec<(String, [u8; 32])>,
    /// Keys of stored bundles that must never be offered, reconciled or exported: the
    /// opened insides of sealed bundles.
    pub private: Vec<[u8; 32]>,
    /// Sealed bundles taken from a contact to relay, with the contact they came from: the
    /// store counts them against its bound on relayed sealed bundles and may evict them
    /// (recorded only for bundles this change newly stores).
    pub relayed: Vec<([u8; 32], ContactTag)>,
    /// Bundles a batch import stored earlier whose routing duties this change does: no
    /// longer waiting to be settled (see `Store::commit_rebuilt`).
    pub settled: Vec<[u8; 32]>,
    /// Deliveries whose receipt a later change issues ([`Batch::commit_owing`]): bundle
    /// key and its owed mark ([`Owed::from_marks`] reads them back after a crash).
    pub owed: Vec<OwedMarkBytes>,
    /// Owed receipts this change issues ([`Batch::owe`]): their marks go.
    pub owed_paid: Vec<[u8; 32]>,
}

/// Who brought a bundle, as far as the store's fairness needs to know: a hash of a sync
/// peer's node ID or of a feed's publisher, or a random tag per stick (sticks name nobody).
pub type ContactTag = [u8; 16];

/// The contact tag of a named source (a peer's or publisher's node ID).
pub fn contact_tag(name: &str) -> ContactTag {
    let mut h = blake3::Hasher::new_derive_key("mycelium contact tag v1");
    h.update(name.as_bytes());
    let mut t = [0u8; 16];
    t.copy_from_slice(&h.finalize().as_bytes()[..16]);
    t
}

/// What delivery needs from a store. `commit` must apply a [`Change`] atomically.
pub trait RouteStore {
    type Error: std::error::Error + Send + Sync + 'static;
    fn has(&self, key: &[u8; 32]) -> Result<bool, Self::Error>;
    /// Node ID (text) of the destination of a stored bundle.
    fn destination_node(&self, key: &[u8; 32]) -> Result<Option<String>, Self::Error>;
    /// The tombstone for `key` recorded from `signer`, if any (tombstones are kept per
    /// signer, so a forged receipt can neither suppress nor overwrite a genuine one).
    fn tombstone(&self, key: &[u8; 32], signer: &str) -> Result<Option<Tombstone>, Self::Error>;
    fn next_creation_timestamp(&self, now: DtnTime) -> Result<CreationTimestamp, Self::Error>;
    fn commit(&self, change: Change, now: DtnTime) -> Result<(), Self::Error>;
    /// Creation time (DTN ms) of a stored bundle.
    fn created_ms(&self, _key: &[u8; 32]) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    /// The X25519 sealing key of a node, from its node record, if known.
    fn contact(&self, _node: &str) -> Result<Option<[u8; 32]>, Self::Error> {
        Ok(None)
    }
    /// The stored sealed bundles whose destination tag is `tag` (one, unless someone
    /// copied a tag onto junk).
    fn sealed_by_tag(&self, _tag: &[u8; 16]) -> Result<Vec<[u8; 32]>, Self::Error> {
        Ok(Vec::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Store(E),
    #[error("cannot sign a receipt: {0}")]
    Receipt(BundleError),
    #[error("cannot seal a receipt: {0}")]
    Seal(crate::seal::SealError),
}

/// What became of an arriving bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Stored. `delivered`: this node is its destination (a receipt is issued);
    /// `purged`: copies this node dropped because it was a receipt.
    New {
        delivered: bool,
        purged: usize,
    },
    Duplicate,
    /// Its destination already confirmed delivery: refused, nothing stored.
    AlreadyDelivered,
    Expired,
    /// A sealed bundle for this node that does not open or holds something else than a
    /// bundle for this node: dropped, nothing stored.
    Refused(String),
}

/// A sealed bundle whose creation time is further ahead of this node's clock is refused
/// (it would outlive its lifetime cap).
pub const MAX_CLOCK_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Shortest life given to a receipt, so one for a nearly expired bundle still travels.
pub const MIN_RECEIPT_LIFETIME_MS: u64 = 60 * 60 * 1000;

/// Most deliveries one receipt bundle acknowledges (a batch with more makes several).
pub const RECEIPT_BATCH: usize = 1024;

/// Signer of the tombstone of a sealed bundle dropped because its delivery secret was
/// revealed: its destination node (no signed bundle can have this source).
pub const SEALED_SIGNER: &str = "dtn://sealed/";

/// Signer of a reveal mark: a delivery secret seen for a tag this node holds no bundle of,
/// kept so that a later copy is refused (§11.5).
const REVEALED_SIGNER: &str = "revealed";

/// Reveal marks one batch (one contact's worth of arrivals) may record: a hostile contact
/// cannot fill the tombstone table with secrets for bundles that do not exist.
pub const MARKS_PER_BATCH: usize = crate::seal::QUOTA_PER_CONTACT as usize;

/// Where a reveal mark for `tag` is kept among the tombstones (never a bundle key).
fn mark_key(tag: &[u8; 16]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(tag);
    k[16..].copy_from_slice(b"revealed-mark/v1");
    k
}

/// An arriving verified bundle with the CPU work on it done: a sealed one tried with this
/// node's key. Pure, no store access: callers make these in parallel ([`prepare`]).
pub struct Arriving {
    pub vb: VerifiedBundle,
    opened: Option<crate::seal::Opened>,
}

impl Arriving {
    pub fn new(vb: VerifiedBundle, me: &Identity) -> Arriving {
        let opened = match vb.is_sealed() {
            // A sealed bundle for this node that does not open is carried like any other.
            true => crate::seal::open_with_any(vb.bundle(), me.seal_keys(), &me.node_id())
                .ok()
                .flatten(),
            false => None,
        };
        Arriving { vb, opened }
    }

    /// The bundle, and what opening it gave (to store the bundle first, then settle it
    /// with [`Arriving::join`] without opening it again).
    pub fn split(self) -> (VerifiedBundle, Option<crate::seal::Opened>) {
        (self.vb, self.opened)
    }

    /// Put back together what [`Arriving::split`] took apart (the same bundle).
    pub fn join(vb: VerifiedBundle, opened: Option<crate::seal::Opened>) -> Arriving {
        Arriving { vb, opened }
    }
}

/// Decode, verify and (if sealed) try to open arriving bundles, in parallel across the
/// cores; results in input order.
pub fn prepare(raws: Vec<Vec<u8>>, me: &Identity) -> Vec<Result<Arriving, BundleError>> {
    use rayon::prelude::*;
    raws.into_par_iter()
        .map(|raw| VerifiedBundle::decode_owned(raw).map(|vb| Arriving::new(vb, me)))
        .collect()
}

/// Handle a verified bundle that arrived from outside, at time `now`.
pub fn accept<S: RouteStore>(
    store: &S,
    me: &Identity,
    vb: VerifiedBundle,
    now: DtnTime,
) -> Result<Arrival, DeliveryError<S::Error>> {
    accept_from(store, me, vb, now, None)
}

/// [`accept`] for a bundle a contact brought (`from`): a sealed one is held for relaying
/// under that contact's tag, within the store's bound on relayed sealed bundles.
pub fn accept_from<S: RouteStore>(
    store: &S,
    me: &Identity,
    vb: VerifiedBundle,
    now: DtnTime,
    from: Option<ContactTag>,
) -> Result<Arrival, DeliveryError<S::Error>> {
    let mut batch = Batch::new(store, me, now);
    let a = batch.add(Arriving::new(vb, me), from)?;
    batch.commit()?;
    Ok(a)
}

/// What [`Batch::settle`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Addressed to this node: a receipt was issued.
    pub delivered: bool,
    /// Copies this node dropped because a receipt (or revealed delivery secrets) said
    /// they were delivered.
    pub purged: usize,
    /// Its delivery was already confirmed: dropped again.
    pub dropped: bool,
}

/// A delivery to acknowledge: the delivered bundle, when its copies may die, and (for a
/// sealed v2 bundle) the delivery secret that lets relays drop its outer copies.
struct Ack {
    key: [u8; 32],
    expires: DtnTime,
    secret: Option<[u8; 16]>,
}

/// A mark as stored (an owed mark, say): the bundle's key, and the mark.
pub type OwedMarkBytes = ([u8; 32], Vec<u8>);

/// Deliveries to acknowledge, by source node (its node ID as text): the source, and the
/// deliveries.
type Acks = BTreeMap<String, (Eid, Vec<Ack>)>;

/// Deliveries acknowledged by a later commit's receipts ([`Batch::commit_owing`], then
/// [`Batch::owe`]): a sync session writes its batches as they fill and acknowledges what
/// they delivered in one receipt per source at its end, not one per batch (each receipt
/// carries a proof-of-work stamp, and on a slow link a batch may hold a handful of
/// bundles). Until its receipt is written each delivery is marked owed on disk, in the
/// same write that delivered it, so a crash in between loses no receipt
/// ([`Owed::from_marks`]).
#[derive(Default)]
pub struct Owed {
    clear: Acks,
    sealed: Acks,
    /// Marks that could not be read back: dropped, with no receipt.
    unreadable: Vec<[u8; 32]>,
}

/// The delivered bundles' keys in two sets of acknowledgements.
fn ack_keys<'a>(clear: &'a Acks, sealed: &'a Acks) -> impl Iterator<Item = [u8; 32]> + 'a {
    clear
        .values()
        .chain(sealed.values())
        .flat_map(|(_, acks)| acks.iter().map(|a| a.key))
}

/// Add `theirs` to `mine`, source by source.
fn merge_acks(mine: &mut Acks, theirs: Acks) {
    for (signer, (source, acks)) in theirs {
        mine.entry(signer)
            .or_insert_with(|| (source, Vec::new()))
            .1
            .extend(acks);
    }
}

/// An owed mark on disk: whom the receipt goes to and what it says of the delivery.
#[derive(Serialize, Deserialize)]
struct OwedMark {
    signer: String,
    source: String,
    sealed: bool,
    expires: u64,
    secret: Option<[u8; 16]>,
}

impl Owed {
    /// Deliveries owed a receipt.
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.keys().next().is_none() && self.unreadable.is_empty()
    }

    /// The delivered bundles' keys.
    pub fn keys(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        ack_keys(&self.clear, &self.sealed)
    }

    /// Add `other`'s deliveries.
    pub fn merge(&mut self, other: Owed) {
        merge_acks(&mut self.clear, other.clear);
        merge_acks(&mut self.sealed, other.sealed);
        self.unreadable.extend(other.unreadable);
    }

    /// The owed marks a store holds (bundle key, mark), as [`Change::owed`] wrote them:
    /// what a session stopped before its end (a crash, a cut) still owes.
    pub fn from_marks(marks: impl IntoIterator<Item = OwedMarkBytes>) -> Owed {
        let mut out = Owed::default();
        for (key, bytes) in marks {
            let m: Option<OwedMark> = ciborium::from_reader(bytes.as_slice()).ok();
            let Some((m, source)) = m.and_then(|m| Eid::parse(&m.source).ok().map(|s| (m, s)))
            else {
                tracing::warn!(key = %hex::encode(key), "an owed receipt's mark is unreadable: dropped");
                out.unreadable.push(key);
                continue;
            };
            let acks = if m.sealed {
                &mut out.sealed
            } else {
                &mut out.clear
            };
            acks.entry(m.signer)
                .or_insert_with(|| (source, Vec::new()))
                .1
                .push(Ack {
                    key,
                    expires: DtnTime(m.expires),
                    secret: m.secret,
                });
        }
        out
    }

    /// The marks that stand for these deliveries on disk.
    fn marks(&self) -> Vec<OwedMarkBytes> {
        let mut out = Vec::new();
        for (sealed, acks) in [(false, &self.clear), (true, &self.sealed)] {
            for (signer, (source, list)) in acks {
                for a in list {
                    let mut bytes = Vec::new();
                    let mark = OwedMark {
                        signer: signer.clone(),
                        source: source.to_string(),
                        sealed,
                        expires: a.expires.0,
                        secret: a.secret,
                    };
                    // Writing CBOR into a vector does not fail.
                    let _ = ciborium::into_writer(&mark, &mut bytes);
                    out.push((a.key, bytes));
                }
            }
        }
        out
    }
}

/// Many arrivals from one contact handled together: one atomic [`Change`] for all of
/// them, and receipts in bulk (one per source and [`RECEIPT_BATCH`] deliveries) instead
/// of one per delivered bundle. Reads see what the batch has staged.
pub struct Batch<'a, S: RouteStore> {
    store: &'a S,
    me: &'a Identity,
    now: DtnTime,
    change: Change,
    /// Staged bundles: destination node and creation time.
    staged: HashMap<[u8; 32], (String, u64)>,
    staged_tags: HashMap<[u8; 16], Vec<[u8; 32]>>,
    deleted: HashSet<[u8; 32]>,
    /// Staged tombstones, by key and signer.
    stones: HashMap<([u8; 32], String), Tombstone>,
    /// Deliveries to acknowledge, by source node: in clear, or sealed for the source.
    clear: Acks,
    sealed: Acks,
    marks_left: usize,
    items: usize,
}

impl<'a, S: RouteStore> Batch<'a, S> {
    pub fn new(store: &'a S, me: &'a Identity, now: DtnTime) -> Batch<'a, S> {
        Batch {
            store,
            me,
            now,
            change: Change::default(),
            staged: HashMap::new(),
            staged_tags: HashMap::new(),
            deleted: HashSet::new(),
            stones: HashMap::new(),
            clear: BTreeMap::new(),
            sealed: BTreeMap::new(),
            marks_left: MARKS_PER_BATCH,
            items: 0,
        }
    }

    /// Arrivals handled so far.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0 && self.change.settled.is_empty() && self.change.owed_paid.is_empty()
    }

    /// Keys of the deliveries this batch acknowledges (or, committed owing, owes).
    pub fn acked_keys(&self) -> Vec<[u8; 32]> {
        ack_keys(&self.clear, &self.sealed).collect()
    }

    /// Acknowledge `owed` (deliveries an earlier commit left owed) in this batch's
    /// receipts: their marks go in the same write.
    pub fn owe(&mut self, owed: Owed) {
        self.change.owed_paid.extend(owed.keys());
        self.change.owed_paid.extend(owed.unreadable);
        merge_acks(&mut self.clear, owed.clear);
        merge_acks(&mut self.sealed, owed.sealed);
    }

    /// A stored bundle that waited to be settled and cannot be (gone, or no longer
    /// verifying): it stops waiting, as it is.
    pub fn give_up(&mut self, key: [u8; 32]) {
        self.change.settled.push(key);
    }

    fn has(&self, key: &[u8; 32]) -> Result<bool, DeliveryError<S::Error>> {
        if self.staged.contains_key(key) {
            return Ok(true);
        }
        if self.deleted.contains(key) {
            return Ok(false);
        }
        self.store.has(key).map_err(DeliveryError::Store)
    }

    fn destination_node(&self, key: &[u8; 32]) -> Result<Option<String>, DeliveryError<S::Error>> {
        if let Some((d, _)) = self.staged.get(key) {
            return Ok(Some(d.clone()));
        }
        if self.deleted.contains(key) {
            return Ok(None);
        }
        self.store
            .destination_node(key)
            .map_err(DeliveryError::Store)
    }

    fn created_ms(&self, key: &[u8; 32]) -> Result<Option<u64>, DeliveryError<S::Error>> {
        if let Some((_, c)) = self.staged.get(key) {
            return Ok(Some(*c));
        }
        self.store.created_ms(key).map_err(DeliveryError::Store)
    }

    fn stone(
        &self,
        key: &[u8; 32],
        signer: &str,
    ) -> Result<Option<Tombstone>, DeliveryError<S::Error>> {
        if let Some(t) = self.stones.get(&(*key, signer.to_string())) {
            return Ok(Some(t.clone()));
        }
        self.store
            .tombstone(key, signer)
            .map_err(DeliveryError::Store)
    }

    fn tombstoned(&self, key: &[u8; 32], signer: &str) -> Result<bool, DeliveryError<S::Error>> {
        Ok(self.stone(key, signer)?.is_some())
    }

    fn sealed_by_tag(&self, tag: &[u8; 16]) -> Result<Vec<[u8; 32]>, DeliveryError<S::Error>> {
        let mut keys: Vec<[u8; 32]> = self
            .store
            .sealed_by_tag(tag)
            .map_err(DeliveryError::Store)?
            .into_iter()
            .filter(|k| !self.deleted.contains(k))
            .collect();
        keys.extend(self.staged_tags.get(tag).into_iter().flatten());
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    fn put(&mut self, vb: VerifiedBundle) {
        let b = vb.bundle();
        let key = vb.id().key();
        if let Some(tag) = crate::seal::tag_of(b) {
            self.staged_tags.entry(tag).or_default().push(key);
        }
        self.staged.insert(
            key,
            (
                b.primary.destination.node_id().to_string(),
                b.primary.created.time.0,
            ),
        );
        self.deleted.remove(&key);
        self.change.put.push(vb);
    }

    fn delete(&mut self, key: [u8; 32]) {
        self.staged.remove(&key);
        for keys in self.staged_tags.values_mut() {
            keys.retain(|k| *k != key);
        }
        self.deleted.insert(key);
        self.change.delete.push(key);
    }

    fn tombstone(&mut self, key: [u8; 32], t: Tombstone) {
        self.stones.insert((key, t.signer.clone()), t.clone());
        self.change.tombstones.push((key, t));
    }

    /// Handle a bundle that arrived from outside (`from`: the contact that brought it).
    pub fn add(
        &mut self,
        a: Arriving,
        from: Option<ContactTag>,
    ) -> Result<Arrival, DeliveryError<S::Error>> {
        self.items += 1;
        let now = self.now;
        let Arriving { vb, opened } = a;
        let key = vb.id().key();
        let b = vb.bundle();
        let expires = b.expires_at(now);
        if expires <= now {
            return Ok(Arrival::Expired);
        }
        let dest_node = b.primary.destination.node_id().to_string();
        if self.has(&key)? {
            return Ok(Arrival::Duplicate);
        }
        if let Some(t) = self.stone(&key, &dest_node)? {
            if !t.verified {
                // The receipt came before any copy: this copy shows its destination is
                // the signer, so the tombstone now counts (and is reconciled, with the
                // bundle's own creation time, so peers stop offering it).
                self.tombstone(
                    key,
                    Tombstone {
                        created: b.primary.created.time.0,
                        verified: true,
                        ..t
                    },
                );
            }
            return Ok(Arrival::AlreadyDelivered);
        }
        if !vb.is_sealed() {
            let (delivered, purged) = self.effects(&vb, None)?;
            self.put(vb);
            return Ok(Arrival::New { delivered, purged });
        }
        if b.primary.created.time.0 > now.0.saturating_add(MAX_CLOCK_AHEAD_MS) && now.0 != 0 {
            return Ok(Arrival::Refused(
                "sealed bundle created in the future".into(),
            ));
        }
        if let Some(tag) = crate::seal::tag_of(b) {
            if self.tombstoned(&mark_key(&tag), REVEALED_SIGNER)? {
                // Its recipient revealed its secret before this copy came: delivered.
                self.sealed_done(key, b.primary.created.time.0, expires);
                return Ok(Arrival::AlreadyDelivered);
            }
        }
        let mut purged = self.apply_reveals(&vb)?;
        let mut delivered = false;
        match opened {
            Some(o) if !self.has(&o.inner.id().key())? => {
                let (d, p) = self.effects(&o.inner, Some(o.secret))?;
                (delivered, purged) = (d, purged + p);
                self.change.private.push(o.inner.id().key());
                self.put(o.inner);
                if o.secret.is_some() {
                    // Delivered here, and the receipt reveals its secret: nobody needs
                    // this copy any more, so it is not kept (it stays in the reconciled
                    // set as a tombstone, so peers do not send it again).
                    self.sealed_done(key, b.primary.created.time.0, expires);
                    return Ok(Arrival::New { delivered, purged });
                }
            }
            _ => {}
        }
        // Whether it opened here or not, the outer is stored and carried like any other:
        // a recipient that kept it back would show who it is.
        if let Some(tag) = from {
            self.change.relayed.push((key, tag));
        }
        self.put(vb);
        Ok(Arrival::New { delivered, purged })
    }

    /// Routing duties for a bundle a batch import already stored (sticks, feeds).
    pub fn settle(&mut self, a: Arriving) -> Result<Settled, DeliveryError<S::Error>> {
        self.items += 1;
        let Arriving { vb, opened } = a;
        let key = vb.id().key();
        self.change.settled.push(key);
        let b = vb.bundle();
        let dest_node = b.primary.destination.node_id().to_string();
        let mut out = Settled::default();
        if vb.is_sealed() {
            let revealed = match crate::seal::tag_of(b) {
                Some(tag) => self.tombstoned(&mark_key(&tag), REVEALED_SIGNER)?,
                None => false,
            };
            if revealed {
                self.sealed_done(key, b.primary.created.time.0, b.expires_at(self.now));
                self.delete(key);
                out.dropped = true;
                return Ok(out);
            }
            out.purged = self.apply_reveals(&vb)?;
            if let Some(o) = opened {
                if !self.has(&o.inner.id().key())? {
                    let (d, p) = self.effects(&o.inner, Some(o.secret))?;
                    out.delivered = d;
                    out.purged += p;
                    self.change.private.push(o.inner.id().key());
                    self.put(o.inner);
                    if o.secret.is_some() {
                        self.sealed_done(key, b.primary.created.time.0, b.expires_at(self.now));
                        self.delete(key);
                    }
                }
            }
            return Ok(out);
        }
        if self.tombstoned(&key, &dest_node)? {
            if dest_node != self.me.node_id().to_string() {
                self.delete(key);
                out.dropped = true;
            }
            return Ok(out);
        }
        (out.delivered, out.purged) = self.effects(&vb, None)?;
        Ok(out)
    }

    /// A sealed bundle whose delivery is known (its secret was revealed): tombstoned so
    /// it is neither kept, offered nor taken again.
    fn sealed_done(&mut self, key: [u8; 32], created: u64, expires: DtnTime) {
        self.tombstone(
            key,
            Tombstone {
                signer: SEALED_SIGNER.into(),
                created,
                expires,
                verified: true,
            },
        );
    }

    /// Apply the delivery secrets a sealed bundle reveals: drop the sealed bundles they
    /// open, remember the others' tags. Returns how many copies were dropped.
    fn apply_reveals(&mut self, vb: &VerifiedBundle) -> Result<usize, DeliveryError<S::Error>> {
        let own = vb.id().key();
        let expires = vb.bundle().expires_at(self.now);
        let mut purged = 0;
        for secret in crate::seal::reveals(vb.bundle()) {
            let tag = crate::seal::reveal_tag(&secret);
            let held: Vec<[u8; 32]> = self
                .sealed_by_tag(&tag)?
                .into_iter()
                .filter(|k| *k != own)
                .collect();
            for k in &held {
                let created = self.created_ms(k)?.unwrap_or(0);
                self.sealed_done(*k, created, expires);
                self.delete(*k);
                purged += 1;
            }
            if held.is_empty()
                && self.marks_left > 0
                && !self.tombstoned(&mark_key(&tag), REVEALED_SIGNER)?
            {
                self.marks_left -= 1;
                self.tombstone(
                    mark_key(&tag),
                    Tombstone {
                        signer: REVEALED_SIGNER.into(),
                        created: 0,
                        expires,
                        verified: false,
                    },
                );
            }
        }
        Ok(purged)
    }

    /// Apply "`signer` received `key`": a tombstone, and the copy dropped if the signer
    /// is its destination. Returns whether a copy was dropped.
    fn apply_ack(
        &mut self,
        signer: &str,
        key: [u8; 32],
        created: u64,
        expires: DtnTime,
    ) -> Result<bool, DeliveryError<S::Error>> {
        // Checked against the copy held here, if any: only the destination's word counts.
        let verified = self.destination_node(&key)?.is_some_and(|d| d == signer);
        let created = match verified {
            true => self.created_ms(&key)?.unwrap_or(created),
            false => created,
        };
        if verified {
            self.delete(key);
        }
        self.tombstone(
            key,
            Tombstone {
                signer: signer.to_string(),
                created,
                expires,
                verified,
            },
        );
        Ok(verified)
    }

    /// What storing `vb` implies besides storing it: receipts applied or owed, sealing
    /// keys learnt. `sealed`: it arrived sealed (with its delivery secret, for v2), so
    /// its receipt goes back sealed. Returns (delivered here, copies dropped).
    fn effects(
        &mut self,
        vb: &VerifiedBundle,
        sealed: Option<Option<[u8; 16]>>,
    ) -> Result<(bool, usize), DeliveryError<S::Error>> {
        let key = vb.id().key();
        let b = vb.bundle();
        let expires = b.expires_at(self.now);
        let dest_node = b.primary.destination.node_id();
        let signer = b.primary.source.node_id().to_string();
        // Only a node record or a receipt changes anything here: a payload whose head
        // names another kind is not decoded (a megabyte file is not copied for nothing).
        let may_matter = !matches!(
            adu::peek_kind(b.payload()),
            Some(k) if ![adu::KIND_NODE, adu::KIND_RECEIPT, adu::KIND_RECEIPTS].contains(&k)
        );
        match may_matter.then(|| adu::decode(b.payload())) {
            Some(Ok(Adu::Node(rec))) => {
                // A key that gives no shared secret (low-order point) is never learnt.
                if crate::seal::usable_key(&rec.x25519) {
                    self.change.contacts.push((signer, rec.x25519));
                }
                Ok((false, 0))
            }
            Some(Ok(Adu::Receipt(r))) => {
                // Never past the receipt's own expiry, whatever the body claims.
                let until = DtnTime(r.expires).min(expires);
                let p = self.apply_ack(&signer, r.bundle, r.created, until)?;
                Ok((false, p as usize))
            }
            Some(Ok(Adu::Receipts(r))) => {
                let until = DtnTime(r.expires).min(expires);
                let mut purged = 0;
                for k in r.keys() {
                    purged += self.apply_ack(&signer, k, 0, until)? as usize;
                }
                Ok((false, purged))
            }
            _ if dest_node == self.me.node_id() && !b.primary.source.is_null() => {
                let me = self.me.node_id().to_string();
                self.tombstone(
                    key,
                    Tombstone {
                        signer: me,
                        created: b.primary.created.time.0,
                        expires,
                        verified: true,
                    },
                );
                let source = b.primary.source.node_id();
                let secret = sealed.flatten();
                let owed = match sealed {
                    Some(_) => &mut self.sealed,
                    None => &mut self.clear,
                };
                owed.entry(signer)
                    .or_insert_with(|| (source, Vec::new()))
                    .1
                    .push(Ack {
                        key,
                        expires,
                        secret,
                    });
                Ok((true, 0))
            }
            _ => Ok((false, 0)),
        }
    }

    /// Commit everything in one atomic write, but sign no receipts: what this batch
    /// delivered is marked owed in the same write and returned, for a later batch to
    /// acknowledge ([`Batch::owe`]).
    pub fn commit_owing(mut self) -> Result<Owed, DeliveryError<S::Error>> {
        let owed = Owed {
            clear: std::mem::take(&mut self.clear),
            sealed: std::mem::take(&mut self.sealed),
            unreadable: Vec::new(),
        };
        self.change.owed = owed.marks();
        self.commit()?;
        Ok(owed)
    }

    /// Sign the receipts owed (in bulk: one per source and [`RECEIPT_BATCH`] deliveries)
    /// and commit everything in one atomic write.
    pub fn commit(mut self) -> Result<(), DeliveryError<S::Error>> {
        let clear = std::mem::take(&mut self.clear);
        for (_, (source, acks)) in clear {
            for chunk in acks.chunks(RECEIPT_BATCH) {
                let rb = self.receipt(&source, chunk)?;
                self.put(rb);
            }
        }
        let sealed = std::mem::take(&mut self.sealed);
        for (node, (source, acks)) in sealed {
            // The key its node record named, else the one its node ID stands for.
            let xpk = match self.store.contact(&node).map_err(DeliveryError::Store)? {
                Some(k) => Some(k),
                None => crate::identity::seal_key_for_node_id(&source.node_id()).ok(),
            };
            for chunk in acks.chunks(RECEIPT_BATCH) {
                let reveals: Vec<[u8; 16]> = chunk.iter().filter_map(|a| a.secret).collect();
                // Without a sealing key for the source (not a Mycelium node ID) the receipt
                // cannot go back to it (one in clear would show who talks to whom); if it
                // reveals secrets, it still goes, sealed for nobody, so relays drop the
                // delivered copies.
                let xpk = match (xpk, reveals.is_empty()) {
                    (Some(k), _) => k,
                    (None, false) => crate::seal::nobody(&mut rand_core::OsRng),
                    (None, true) => continue,
                };
                let rb = self.receipt(&source, chunk)?;
                // Best effort: a receipt that cannot be sealed (no clock, a bad key) is not
                // sent, and never stops the delivery itself.
                if let Ok(outer) = crate::seal::seal_revealing(
                    &rb,
                    &xpk,
                    self.now,
                    &mut rand_core::OsRng,
                    &reveals,
                ) {
                    self.put(outer);
                }
            }
        }
        let c = &self.change;
        if c.put.is_empty()
            && c.tombstones.is_empty()
            && c.delete.is_empty()
            && c.contacts.is_empty()
            && c.settled.is_empty()
            && c.owed.is_empty()
            && c.owed_paid.is_empty()
        {
            return Ok(());
        }
        self.store
            .commit(self.change, self.now)
            .map_err(DeliveryError::Store)
    }

    /// One signed `receipts` bundle for `acks`, addressed to `source`.
    fn receipt(
        &self,
        source: &Eid,
        acks: &[Ack],
    ) -> Result<VerifiedBundle, DeliveryError<S::Error>> {
        let now = self.now;
        let expires = acks.iter().map(|a| a.expires).max().unwrap_or(now);
        let body = adu::encode_receipts(&adu::Receipts {
            bundles: acks.iter().flat_map(|a| a.key).collect(),
            expires: expires.0,
            at: now.0,
        });
        let ts = self
            .store
            .next_creation_timestamp(now)
            .map_err(DeliveryError::Store)?;
        let lifetime = expires.0.saturating_sub(now.0).max(MIN_RECEIPT_LIFETIME_MS);
        BundleBuilder::new(source.clone(), ts, lifetime)
            .payload(body)
            .sign(self.me)
            .map_err(DeliveryError::Receipt)
    }
}

/// The bytes to send for a stored bundle: its hop count incremented. `None` when it is at
/// its hop limit and must not travel further.
pub fn forward_copy(raw: &[u8]) -> Result<Option<Vec<u8>>, BundleError> {
    // Only the hop-count block changes: the rest (the payload above all) is copied as it
    // is, not decoded and encoded again.
    let Some((span, mut block)) = Bundle::find_block(raw, block_types::HOP_COUNT)? else {
        return Ok(Some(raw.to_vec()));
    };
    let hc = HopCount::from_data(block.number, &block.data)?;
    if hc.count >= hc.limit {
        return Ok(None);
    }
    block.data = HopCount {
        limit: hc.limit,
        count: hc.count + 1,
    }
    .to_data()
    .into();
    let mut w = crate::bundle::cbor::Writer::new();
    block.encode(&mut w);
    let block = w.into_vec();
    let mut out = Vec::with_capacity(raw.len() + block.len() - span.len().min(block.len()));
    out.extend_from_slice(&raw[..span.start]);
    out.extend_from_slice(&block);
    out.extend_from_slice(&raw[span.end..]);
    Ok(Some(out))
}

/// Whether a bundle may still travel: not expired and below its hop limit.
pub fn may_forward(b: &Bundle, now: DtnTime) -> bool {
    b.expires_at(now) > now && b.hop_count().is_none_or(|h| h.count < h.limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::DecodeLimits;

    fn bundle(hop_limit: Option<u64>, payload: usize) -> VerifiedBundle {
        let id = Identity::generate();
        let ts = CreationTimestamp {
            time: DtnTime(1_000_000),
            seq: 7,
        };
        BundleBuilder::new(id.node_id(), ts, 3_600_000)
            .payload(vec![0xa5; payload])
            .hop_limit(hop_limit)
            .sign(&id)
            .unwrap()
    }

    /// The copy is what decoding, counting the hop and encoding again gives, byte for
    /// byte; it verifies; at the limit nothing goes; without a hop count it is the same.
    #[test]
    fn forward_copy_counts_one_hop_and_leaves_the_rest_alone() {
        for payload in [0, 10, 70_000] {
            let vb = bundle(Some(3), payload);
            let mut raw = vb.raw().to_vec();
            for hop in 1..=3u64 {
                let mut want = Bundle::decode(&raw).unwrap();
                let pos = want
                    .blocks
                    .iter()
                    .position(|b| b.block_type == block_types::HOP_COUNT)
                    .unwrap();
                want.blocks[pos].data = HopCount {
                    limit: 3,
                    count: hop,
                }
                .to_data()
                .into();
                let got = forward_copy(&raw).unwrap().unwrap();
                assert_eq!(got, want.encode());
                let back = VerifiedBundle::decode_with(&got, &DecodeLimits::default()).unwrap();
                assert_eq!(back.bundle().hop_count().unwrap().count, hop);
                assert_eq!(back.bundle().payload(), vb.bundle().payload());
                raw = got;
            }
            assert_eq!(forward_copy(&raw).unwrap(), None, "at its hop limit");
            let plain = bundle(None, payload);
            assert_eq!(forward_copy(plain.raw()).unwrap().unwrap(), plain.raw());
        }
        assert!(forward_copy(b"\x9f\xff").is_err());
        assert!(forward_copy(b"").is_err());
    }
}
