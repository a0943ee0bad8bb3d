//! Delivery and receipts: what a node does with a verified bundle that arrived over any
//! medium (QUIC, stick, feed), and the forwarding rules that go with it. Pure policy over
//! a [`RouteStore`]: the RocksDB store implements it for real nodes, the simulation an
//! in-memory map.
//!
//! - A bundle that reached its destination is delivered once: the destination keeps it
//!   (its inbox), records a tombstone so it never offers it to anyone, and originates a
//!   signed `receipt` bundle back to the source.
//! - A node that sees a receipt signed by the original's destination records a tombstone
//!   and drops its copy of the original (anti-entropy: copies die out once delivered).
//!   Tombstones live until the original would have expired, so a late copy is refused
//!   instead of being carried again. A receipt signed by anyone else cannot suppress a
//!   bundle: a tombstone only counts when its signer is that bundle's destination.
//! - Forwarding increments the hop count; a bundle at its hop limit stays put.

use crate::adu::{self, Adu, Receipt};
use crate::bundle::{
    block_types, Bundle, BundleBuilder, BundleError, CreationTimestamp, HopCount, VerifiedBundle,
};
use crate::identity::Identity;
use crate::time::DtnTime;
use serde::{Deserialize, Serialize};

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
    /// Stored. `delivered`: this node is its destination (a receipt was issued);
    /// `purged`: it was a receipt and this node dropped the original.
    New {
        delivered: bool,
        purged: bool,
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
    let key = vb.id().key();
    let b = vb.bundle();
    let expires = b.expires_at(now);
    if expires <= now {
        return Ok(Arrival::Expired);
    }
    let dest_node = b.primary.destination.node_id();
    if store.has(&key).map_err(DeliveryError::Store)? {
        return Ok(Arrival::Duplicate);
    }
    if store
        .tombstone(&key, &dest_node.to_string())
        .map_err(DeliveryError::Store)?
        .is_some()
    {
        return Ok(Arrival::AlreadyDelivered);
    }
    let mut change = Change::default();
    if vb.is_sealed() {
        if b.primary.created.time.0 > now.0.saturating_add(MAX_CLOCK_AHEAD_MS) && now.0 != 0 {
            return Ok(Arrival::Refused(
                "sealed bundle created in the future".into(),
            ));
        }
        // Whether it opens here or not, the outer is stored and carried like any other:
        // a recipient that kept it back would show who it is.
        let opened = crate::seal::open(vb.bundle(), &me.seal_key(), &me.node_id());
        if let Some(tag) = from {
            change.relayed.push((key, tag));
        }
        change.put.push(vb);
        let (mut delivered, mut purged) = (false, false);
        if let Ok(Some(inner)) = opened {
            if !store.has(&inner.id().key()).map_err(DeliveryError::Store)? {
                (delivered, purged) = effects(store, me, &inner, now, &mut change, true)?;
                change.private.push(inner.id().key());
                change.put.push(inner);
            }
        }
        store.commit(change, now).map_err(DeliveryError::Store)?;
        return Ok(Arrival::New { delivered, purged });
    }
    let (delivered, purged) = effects(store, me, &vb, now, &mut change, false)?;
    change.put.insert(0, vb);
    store.commit(change, now).map_err(DeliveryError::Store)?;
    Ok(Arrival::New { delivered, purged })
}

/// For bundles that were stored by a path that does not go through [`accept`] (a stick's
/// or a feed's batch import): issue the receipt, apply a receipt, or drop a bundle whose
/// delivery was already confirmed (then `dropped`).
pub fn settle<S: RouteStore>(
    store: &S,
    me: &Identity,
    vb: &VerifiedBundle,
    now: DtnTime,
) -> Result<Settled, DeliveryError<S::Error>> {
    let key = vb.id().key();
    let dest_node = vb.bundle().primary.destination.node_id();
    let mut change = Change::default();
    if vb.is_sealed() {
        // The outer stays stored and travels on, opened or not (see `accept`).
        let mut out = Settled::default();
        if let Ok(Some(inner)) = crate::seal::open(vb.bundle(), &me.seal_key(), &me.node_id()) {
            if !store.has(&inner.id().key()).map_err(DeliveryError::Store)? {
                (out.delivered, out.purged) = effects(store, me, &inner, now, &mut change, true)?;
                change.private.push(inner.id().key());
                change.put.push(inner);
                store.commit(change, now).map_err(DeliveryError::Store)?;
            }
        }
        return Ok(out);
    }
    if store
        .tombstone(&key, &dest_node.to_string())
        .map_err(DeliveryError::Store)?
        .is_some()
    {
        {
            if dest_node != me.node_id() {
                change.delete.push(key);
                store.commit(change, now).map_err(DeliveryError::Store)?;
                return Ok(Settled {
                    dropped: true,
                    ..Settled::default()
                });
            }
            return Ok(Settled::default());
        }
    }
    let (delivered, purged) = effects(store, me, vb, now, &mut change, false)?;
    if !change.put.is_empty() || !change.tombstones.is_empty() || !change.delete.is_empty() {
        store.commit(change, now).map_err(DeliveryError::Store)?;
    }
    Ok(Settled {
        delivered,
        purged,
        dropped: false,
    })
}

/// What [`settle`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Addressed to this node: a receipt was issued.
    pub delivered: bool,
    /// A receipt: this node dropped its copy of the original.
    pub purged: bool,
    /// Its delivery was already confirmed: dropped again.
    pub dropped: bool,
}

/// What storing `vb` implies besides storing it: receipts issued or applied, sealing keys
/// learnt. `sealed`: it arrived sealed, so its receipt goes back sealed (or not at all: a
/// receipt in clear would show who talks to whom).
fn effects<S: RouteStore>(
    store: &S,
    me: &Identity,
    vb: &VerifiedBundle,
    now: DtnTime,
    change: &mut Change,
    sealed: bool,
) -> Result<(bool, bool), DeliveryError<S::Error>> {
    let key = vb.id().key();
    let b = vb.bundle();
    let expires = b.expires_at(now);
    let dest_node = b.primary.destination.node_id();
    let mut purged = false;
    let mut delivered = false;
    let adu = adu::decode(b.payload());
    if let Ok(Adu::Node(rec)) = &adu {
        // A key that gives no shared secret (low-order point) is never learnt.
        if crate::seal::usable_key(&rec.x25519) {
            change
                .contacts
                .push((b.primary.source.node_id().to_string(), rec.x25519));
        }
    }
    if let Ok(Adu::Receipt(r)) = &adu {
        let signer = b.primary.source.node_id().to_string();
        // Checked against the copy held here, if any: only the destination's word counts.
        let verified = store
            .destination_node(&r.bundle)
            .map_err(DeliveryError::Store)?
            .is_some_and(|d| d == signer);
        let created = match verified {
            true => store
                .created_ms(&r.bundle)
                .map_err(DeliveryError::Store)?
                .unwrap_or(r.created),
            false => r.created,
        };
        if verified {
            change.delete.push(r.bundle);
            purged = true;
        }
        change.tombstones.push((
            r.bundle,
            Tombstone {
                signer,
                created,
                // Never past the receipt's own expiry, whatever the body claims.
                expires: DtnTime(r.expires).min(expires),
                verified,
            },
        ));
    } else if dest_node == me.node_id() && !b.primary.source.is_null() {
        delivered = true;
        change.tombstones.push((
            key,
            Tombstone {
                signer: me.node_id().to_string(),
                created: b.primary.created.time.0,
                expires,
                verified: true,
            },
        ));
        let receipt = adu::encode_receipt(&Receipt {
            bundle: key,
            created: b.primary.created.time.0,
            expires: expires.0,
            at: now.0,
        });
        let ts = store
            .next_creation_timestamp(now)
            .map_err(DeliveryError::Store)?;
        let lifetime = expires.0.saturating_sub(now.0).max(MIN_RECEIPT_LIFETIME_MS);
        let rb = BundleBuilder::new(b.primary.source.node_id(), ts, lifetime)
            .payload(receipt)
            .sign(me)
            .map_err(DeliveryError::Receipt)?;
        if !sealed {
            change.put.push(rb);
        } else if let Some(xpk) = store
            .contact(&b.primary.source.node_id().to_string())
            .map_err(DeliveryError::Store)?
        {
            // Best effort: a receipt that cannot be sealed (no clock, a bad key) is not
            // sent, and never stops the delivery itself.
            if let Ok(outer) = crate::seal::seal(&rb, &xpk, now, &mut rand_core::OsRng) {
                change.put.push(outer);
            }
        }
    }
    Ok((delivered, purged))
}

/// The bytes to send for a stored bundle: its hop count incremented. `None` when it is at
/// its hop limit and must not travel further.
pub fn forward_copy(raw: &[u8]) -> Result<Option<Vec<u8>>, BundleError> {
    let mut b = Bundle::decode(raw)?;
    let Some(pos) = b
        .blocks
        .iter()
        .position(|bl| bl.block_type == block_types::HOP_COUNT)
    else {
        return Ok(Some(raw.to_vec()));
    };
    let hc = HopCount::from_data(b.blocks[pos].number, &b.blocks[pos].data)?;
    if hc.count >= hc.limit {
        return Ok(None);
    }
    b.blocks[pos].data = HopCount {
        limit: hc.limit,
        count: hc.count + 1,
    }
    .to_data();
    Ok(Some(b.encode()))
}

/// Whether a bundle may still travel: not expired and below its hop limit.
pub fn may_forward(b: &Bundle, now: DtnTime) -> bool {
    b.expires_at(now) > now && b.hop_count().is_none_or(|h| h.count < h.limit)
}
