//! The bounds on what outside input can make the store hold, and the order in which each
//! table gives way when it is full. Each bound has a count and a byte limit ([`Limits`]):
//!
//! - **Relayed sealed bundles** (`sealed_from`): sealed bundles taken from a contact (a
//!   stick, a feed's publisher, a sync peer) to carry on. Nobody can tell who made them, so
//!   however valid their stamps, the store keeps at most [`Limits::sealed_bundles`] of them
//!   and [`Limits::sealed_bytes`]. Over either, the contact holding the most (by count, or
//!   by bytes when the bytes are over) loses its earliest arrival; among contacts holding
//!   as much, the one that came last loses first. A flooder mostly evicts itself, and
//!   honest contacts keep an equal share. Sealed bundles this node made (its messages and
//!   receipts) or was handed by its user (`bundle load`) are not counted and never evicted;
//!   the opened inside of one addressed here is a private bundle, never evicted either.
//! - **Incomplete objects** (`partial_shards`, `partial_seen`): shards of stick objects and
//!   symbols of feed segments waiting for the rest. At most [`Limits::partial_objects`]
//!   objects and [`Limits::partial_bytes`] of shards; over either, the objects least far
//!   along (bytes held / bytes needed) go first, the oldest first among equals. A feed sends
//!   every segment's symbols round-robin, so all its segments grow together: keeping the
//!   ones furthest along lets them complete even when a whole pass does not fit.
//!
//! The totals are cached in memory (one process per store) as an upper bound: writes add
//! to them, deletions elsewhere do not subtract. When a cached total passes a limit, one
//! scan of the (small) index finds the exact totals and evicts what is over. A total that
//! runs high costs a scan, never an eviction that was not needed.

use super::{cf, key32, Store, StoreError};
use crate::fec::ObjectId;
use crate::route::delivery::ContactTag;
use crate::time::DtnTime;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// How much outside input the store keeps, and how many sealed bundles one contact may
/// bring. The defaults are the documented numbers (README, "Where data lives").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Relayed sealed bundles held, all contacts together.
    pub sealed_bundles: u64,
    /// Bytes of relayed sealed bundles held, all contacts together.
    pub sealed_bytes: u64,
    /// Sealed bundles new to this store that one stick may bring (QUIC sessions have
    /// their own knob, `QuicConfig::sealed_quota`, with the same default).
    pub sealed_per_contact: u64,
    /// Incomplete objects held (stick objects and feed segments together).
    pub partial_objects: u64,
    /// Bytes of shards and symbols of incomplete objects held.
    pub partial_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sealed_bundles: 100_000,
            sealed_bytes: 1 << 30,
            sealed_per_contact: crate::seal::QUOTA_PER_CONTACT,
            partial_objects: 10_000,
            partial_bytes: 1 << 30,
        }
    }
}

/// A count and a number of bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    fn plus(self, o: Tally) -> Tally {
        Tally {
            count: self.count.saturating_add(o.count),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }

    fn minus(self, o: Tally) -> Tally {
        Tally {
            count: self.count.saturating_sub(o.count),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }

    fn over(self, count: u64, bytes: u64) -> bool {
        self.count > count || self.bytes > bytes
    }
}

/// Cached totals (`None`: not counted since the store was opened).
#[derive(Debug, Default)]
pub(super) struct Held {
    sealed: Option<Tally>,
    partial: Option<Tally>,
}

/// One relayed sealed bundle, as its `sealed_from` entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SealedEntry {
    key: [u8; 32],
    tag: ContactTag,
    arrived: u64,
    size: u64,
}

fn sealed_value(tag: &ContactTag, arrived: DtnTime, size: u64) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(tag);
    v[16..24].copy_from_slice(&arrived.0.to_be_bytes());
    v[24..].copy_from_slice(&size.to_be_bytes());
    v
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The relayed sealed bundles to evict so that `entries` fit `limits`, in order: the
/// contact holding the most (count while the count is over, then bytes) loses its earliest
/// arrival (then lowest key); among contacts holding as much, the latest to arrive first.
fn sealed_victims(entries: &[SealedEntry], limits: &Limits) -> Vec<[u8; 32]> {
    struct Batch {
        items: Vec<SealedEntry>,
        next: usize,
        held: Tally,
        last: u64,
    }
    let mut by_tag: HashMap<ContactTag, Batch> = HashMap::new();
    let mut total = Tally::default();
    for e in entries {
        let b = by_tag.entry(e.tag).or_insert_with(|| Batch {
            items: Vec::new(),
            next: 0,
            held: Tally::default(),
            last: 0,
        });
        b.items.push(*e);
        b.held = b.held.plus(Tally {
            count: 1,
            bytes: e.size,
        });
        b.last = b.last.max(e.arrived);
        total = total.plus(Tally {
            count: 1,
            bytes: e.size,
        });
    }
    for b in by_tag.values_mut() {
        b.items.sort_by_key(|e| (e.arrived, e.key));
    }
    let mut out = Vec::new();
    for by_count in [true, false] {
        let weight = |t: Tally| if by_count { t.count } else { t.bytes };
        let over = |t: Tally| {
            if by_count {
                t.count > limits.sealed_bundles
            } else {
                t.bytes > limits.sealed_bytes
            }
        };
        let mut heap: BinaryHeap<(u64, u64, ContactTag)> = by_tag
            .iter()
            .filter(|(_, b)| b.next < b.items.len())
            .map(|(t, b)| (weight(b.held), b.last, *t))
            .collect();
        while over(total) {
            let Some((_, _, tag)) = heap.pop() else { break };
            let Some(b) = by_tag.get_mut(&tag) else { break };
            let e = b.items[b.next];
            b.next += 1;
            let gone = Tally {
                count: 1,
                bytes: e.size,
            };
            b.held = b.held.minus(gone);
            total = total.minus(gone);
            out.push(e.key);
            if b.next < b.items.len() {
                heap.push((weight(b.held), b.last, tag));
            }
        }
    }
    out
}

/// What `partial_seen` says about one incomplete object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartialMeta {
    pub seen: u64,
    pub bytes: u64,
    pub shards: u64,
    /// Bytes of shards the object needs to complete (0: unknown, an older store's entry).
    pub need: u64,
}

impl PartialMeta {
    pub fn encode(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        for (i, x) in [self.seen, self.bytes, self.shards, self.need]
            .iter()
            .enumerate()
        {
            v[i * 8..i * 8 + 8].copy_from_slice(&x.to_be_bytes());
        }
        v
    }

    /// A full entry; `None` for an older store's entry (first seen alone: see
    /// [`legacy_seen`]), or anything else.
    pub fn decode(v: &[u8]) -> Option<PartialMeta> {
        (v.len() == 32).then(|| PartialMeta {
            seen: be64(&v[0..]),
            bytes: be64(&v[8..]),
            shards: be64(&v[16..]),
            need: be64(&v[24..]),
        })
    }

    /// Less far along than `o` (bytes held / bytes needed; unknown counts as nothing).
    fn behind(&self, o: &PartialMeta) -> Ordering {
        let p = |m: &PartialMeta| if m.need == 0 { 0 } else { m.bytes };
        let a = u128::from(p(self)) * u128::from(o.need.max(1));
        let b = u128::from(p(o)) * u128::from(self.need.max(1));
        a.cmp(&b)
    }
}

/// The first-seen time of any `partial_seen` entry, old (8 bytes) or new.
pub(super) fn legacy_seen(v: &[u8]) -> u64 {
    if v.len() >= 8 {
        be64(v)
    } else {
        0
    }
}

/// The incomplete objects to evict so that `metas` fit `limits`: least far along first,
/// then oldest, then lowest id.
fn partial_victims(metas: &mut [(ObjectId, PartialMeta)], limits: &Limits) -> Vec<ObjectId> {
    let mut total = Tally::default();
    for (_, m) in metas.iter() {
        total = total.plus(Tally {
            count: 1,
            bytes: m.bytes,
        });
    }
    metas.sort_by(|(ia, a), (ib, b)| {
        a.behind(b)
            .then(a.seen.cmp(&b.seen))
            .then_with(|| ia.cmp(ib))
    });
    let mut out = Vec::new();
    for (id, m) in metas.iter() {
        if !total.over(limits.partial_objects, limits.partial_bytes) {
            break;
        }
        total = total.minus(Tally {
            count: 1,
            bytes: m.bytes,
        });
        out.push(*id);
    }
    out
}

impl Store {
    /// The bounds this store keeps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Keep other bounds (tests use small ones; the defaults are the documented numbers).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stage the mark of a sealed bundle newly stored from contact `tag`: it counts against
    /// the sealed bound and may be evicted. The caller holds the write lock.
    pub(super) fn stage_relayed(
        &self,
        batch: &mut WriteBatch,
        key: &[u8; 32],
        tag: &ContactTag,
        now: DtnTime,
        size: u64,
    ) {
        batch.put_cf(self.cf(cf::SEALED_FROM), key, sealed_value(tag, now, size));
    }

    fn sealed_entries(&self) -> Result<Vec<SealedEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::SEALED_FROM), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = key32(&k)?;
            if v.len() != 32 {
                return Err(StoreError::Corrupt {
                    key: hex::encode(key),
                    reason: "sealed_from entry is not 32 bytes".into(),
                });
            }
            let mut tag = [0u8; 16];
            tag.copy_from_slice(&v[..16]);
            out.push(SealedEntry {
                key,
                tag,
                arrived: be64(&v[16..]),
                size: be64(&v[24..]),
            });
        }
        Ok(out)
    }

    /// Relayed sealed bundles held (taken from contacts): how many, and their bytes.
    pub fn sealed_held(&self) -> Result<Tally, StoreError> {
        Ok(self
            .sealed_entries()?
            .iter()
            .fold(Tally::default(), |t, e| {
                t.plus(Tally {
                    count: 1,
                    bytes: e.size,
                })
            }))
    }

    /// After a write that stored `added` relayed sealed bundles, evict down to the bound.
    /// The caller holds the write lock. Returns what was evicted.
    pub(super) fn bound_sealed(&self, added: Tally) -> Result<Tally, StoreError> {
        let (max_n, max_b) = (self.limits.sealed_bundles, self.limits.sealed_bytes);
        let mut held = self.held();
        if let Some(t) = held.sealed {
            let t = t.plus(added);
            held.sealed = Some(t);
            if !t.over(max_n, max_b) {
                return Ok(Tally::default());
            }
        }
        let entries = self.sealed_entries()?;
        let total = entries.iter().fold(Tally::default(), |t, e| {
            t.plus(Tally {
                count: 1,
                bytes: e.size,
            })
        });
        held.sealed = Some(total);
        if !total.over(max_n, max_b) {
            return Ok(Tally::default());
        }
        let victims = sealed_victims(&entries, &self.limits);
        let size: HashMap<[u8; 32], u64> = entries.iter().map(|e| (e.key, e.size)).collect();
        let mut batch = WriteBatch::default();
        let mut gone = Tally::default();
        for key in &victims {
            self.stage_delete(&mut batch, key)?;
            gone = gone.plus(Tally {
                count: 1,
                bytes: size.get(key).copied().unwrap_or(0),
            });
        }
        self.write_synced(batch)?;
        held.sealed = Some(total.minus(gone));
        Ok(gone)
    }

    /// Every incomplete object's entry (older entries completed by counting its shards).
    pub(super) fn partial_metas(&self) -> Result<Vec<(ObjectId, PartialMeta)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::PARTIAL_SEEN), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let Ok(obj) = <ObjectId>::try_from(&k[..]) else {
                continue;
            };
            out.push((obj, self.partial_meta(&obj, &v)?));
        }
        Ok(out)
    }

    /// An object's `partial_seen` entry; an older store's entry (first seen alone) is
    /// completed by counting the object's shards.
    pub(super) fn partial_meta(&self, obj: &ObjectId, v: &[u8]) -> Result<PartialMeta, StoreError> {
        if let Some(m) = PartialMeta::decode(v) {
            return Ok(m);
        }
        let mut m = PartialMeta {
            seen: legacy_seen(v),
            bytes: 0,
            shards: 0,
            need: 0,
        };
        for rec in self.partial_shards(obj)? {
            m.bytes += rec.len() as u64;
            m.shards += 1;
        }
        Ok(m)
    }

    /// After a write that added `added` to the incomplete objects, evict down to the
    /// bound. The caller holds the write lock. Returns how many objects were evicted.
    pub(super) fn bound_partial(&self, added: Tally, sync: bool) -> Result<u64, StoreError> {
        let (max_n, max_b) = (self.limits.partial_objects, self.limits.partial_bytes);
        let mut held = self.held();
        if let Some(t) = held.partial {
            let t = t.plus(added);
            held.partial = Some(t);
            if !t.over(max_n, max_b) {
                return Ok(0);
            }
        }
        let mut metas = self.partial_metas()?;
        let total = metas.iter().fold(Tally::default(), |t, (_, m)| {
            t.plus(Tally {
                count: 1,
                bytes: m.bytes,
            })
        });
        held.partial = Some(total);
        if !total.over(max_n, max_b) {
            return Ok(0);
        }
        let bytes: HashMap<ObjectId, u64> = metas.iter().map(|(o, m)| (*o, m.bytes)).collect();
        let victims = partial_victims(&mut metas, &self.limits);
        let mut batch = WriteBatch::default();
        let mut gone = Tally::default();
        for obj in &victims {
            self.stage_drop_partial(&mut batch, obj);
            gone = gone.plus(Tally {
                count: 1,
                bytes: bytes.get(obj).copied().unwrap_or(0),
            });
        }
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        self.db.write_opt(batch, &w).map_err(|e| self.db_err(e))?;
        held.partial = Some(total.minus(gone));
        Ok(gone.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u8, n: u8, arrived: u64) -> SealedEntry {
        SealedEntry {
            key: [n; 32],
            tag: [tag; 16],
            arrived,
            size: 1000,
        }
    }

    #[test]
    fn the_contact_holding_the_most_loses_first_and_ties_go_to_the_latest() {
        let limits = Limits {
            sealed_bundles: 6,
            ..Limits::default()
        };
        // An honest contact with 2, then flooders with 4 each, arriving later.
        let mut v = vec![e(1, 1, 10), e(1, 2, 10)];
        for (t, at) in [(2u8, 20u64), (3, 30), (4, 40)] {
            for i in 0..4 {
                v.push(e(t, t * 10 + i, at));
            }
        }
        let out = sealed_victims(&v, &limits);
        assert_eq!(out.len(), v.len() - 6);
        assert!(
            !out.contains(&[1; 32]) && !out.contains(&[2; 32]),
            "{out:?}"
        );
        // Equal shares left, the honest contact's whole: 2, 2, 1, 1 (latest cut first).
        let left = |t: u8| {
            v.iter()
                .filter(|x| x.tag == [t; 16] && !out.contains(&x.key))
                .count()
        };
        assert_eq!((left(1), left(2), left(3), left(4)), (2, 2, 1, 1));
    }

    #[test]
    fn bytes_over_evict_from_the_contact_holding_the_most_bytes() {
        let limits = Limits {
            sealed_bytes: 5000,
            ..Limits::default()
        };
        let mut v = vec![e(1, 1, 10)];
        v.push(SealedEntry {
            size: 4500,
            ..e(2, 2, 20)
        });
        v.push(e(3, 3, 30));
        assert_eq!(sealed_victims(&v, &limits), vec![[2; 32]]);
    }

    #[test]
    fn incomplete_objects_least_far_along_go_first_then_the_oldest() {
        let limits = Limits {
            partial_objects: 2,
            ..Limits::default()
        };
        let m = |seen, bytes, need| PartialMeta {
            seen,
            bytes,
            shards: 1,
            need,
        };
        let mut metas = vec![
            ([1; 32], m(1, 90, 100)),
            ([2; 32], m(5, 10, 100)),
            ([3; 32], m(2, 1, 10)),
            ([4; 32], m(9, 50, 100)),
        ];
        // 10% (old) and 10% (newer): the older goes first, then the newer.
        assert_eq!(partial_victims(&mut metas, &limits), vec![[3; 32], [2; 32]]);
    }
}
