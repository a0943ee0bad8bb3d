//! Erasure-coded objects in the store: verified shards of incomplete objects (kept until
//! rebuilt, expired or evicted by the bound in `bounds`), the status of objects already
//! rebuilt and stored (while their bundles are), and peers' have-summaries.

use super::bounds::{legacy_seen, PartialMeta};
use super::{cf, PutOutcome, Store, StoreError, Tally};
use crate::bundle::VerifiedBundle;
use crate::fec::ObjectId;
use crate::route::delivery::ContactTag;
use crate::time::DtnTime;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

/// Trust bits (`trust add`): feeds and the bundles in them from this node are taken.
pub const TRUST_BROADCAST: u8 = 1;
/// Trust bits: releases this node signs are installed by `update`.
pub const TRUST_RELEASE: u8 = 2;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// What became of an object whose shards were complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectStatus {
    /// Rebuilt, verified and stored as the bundles with these keys.
    Stored(Vec<[u8; 32]>),
    /// Written by older versions for an object that was refused. A refusal is no longer
    /// remembered (junk is free to make, and a refusal for the contact's quota must not
    /// block a later arrival): read as no status, and purged.
    Refused(String),
}

/// The outcome of one rebuild, committed together with others in one synced batch.
pub struct Rebuilt {
    pub object: ObjectId,
    /// The verified bundles it held (one for a sneakernet object, many for a feed
    /// segment), or why it was refused.
    pub result: Result<Vec<VerifiedBundle>, String>,
    /// Whether shards of it were kept in the store (only then are there any to delete:
    /// range deletions are not free for later reads, so none are issued needlessly).
    pub had_partial: bool,
}

/// What [`Store::commit_rebuilt`] did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Per object, the outcome of each of its bundles (empty for refused objects).
    pub outcomes: Vec<Vec<PutOutcome>>,
    /// Relayed sealed bundles evicted to keep the store within its bound.
    pub sealed_evicted: Tally,
}

/// One verified shard (or feed symbol) of an incomplete object, to keep.
pub struct PartialShard {
    pub object: ObjectId,
    /// Its place in the object (leaf index, symbol id): one record per place.
    pub leaf: u64,
    pub record: Vec<u8>,
    /// Bytes of records the object needs to complete (how far along it is decides what
    /// the bound evicts first).
    pub need: u64,
}

/// Incomplete objects held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialSummary {
    pub objects: usize,
    pub shards: usize,
    pub bytes: u64,
}

const META_OBJECTS_PURGED: &[u8] = b"objects_purged_at";
/// Statuses of objects whose bundles are gone are purged at most this often.
const OBJECTS_PURGE_EVERY_MS: u64 = 3600 * 1000;

fn shard_key(object: &ObjectId, leaf: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(object);
    k[32..].copy_from_slice(&leaf.to_be_bytes());
    k
}

impl Store {
    /// What became of an object: `Stored` while one of its bundles is still stored (or it
    /// held none for this node), else nothing: an object whose bundles expired, were
    /// evicted or were refused may be taken again.
    pub fn object_status(&self, object: &ObjectId) -> Result<Option<ObjectStatus>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::OBJECTS), object)
            .map_err(|e| self.db_err(e))?;
        let Some(b) = v else { return Ok(None) };
        let status: ObjectStatus =
            ciborium::from_reader(b.as_slice()).map_err(|e| StoreError::Corrupt {
                key: hex::encode(object),
                reason: e.to_string(),
            })?;
        match &status {
            ObjectStatus::Refused(_) => Ok(None),
            ObjectStatus::Stored(keys) => {
                if keys.is_empty() || self.any_stored(keys)? {
                    Ok(Some(status))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn any_stored(&self, keys: &[[u8; 32]]) -> Result<bool, StoreError> {
        for k in keys {
            if self
                .db
                .get_pinned_cf(self.cf(cf::RECORDS), k)
                .map_err(|e| self.db_err(e))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Drop the statuses of objects none of whose bundles is stored any more (and those
    /// older versions wrote for refused objects), at most once an hour; returns how many.
    pub fn purge_stale_objects(&self, now: DtnTime) -> Result<usize, StoreError> {
        let last = self.meta_u64(META_OBJECTS_PURGED)?.unwrap_or(0);
        if last != 0 && now.0 >= last && now.0 - last < OBJECTS_PURGE_EVERY_MS {
            return Ok(0);
        }
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::OBJECTS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let stale = match ciborium::from_reader::<ObjectStatus, _>(&v[..]) {
                Ok(ObjectStatus::Stored(keys)) => !self.any_stored(&keys)?,
                // refused (older versions), or unreadable: a status only saves work
                _ => true,
            };
            if stale {
                batch.delete_cf(self.cf(cf::OBJECTS), &k);
                n += 1;
            }
        }
        batch.put_cf(self.cf(cf::META), META_OBJECTS_PURGED, now.0.to_be_bytes());
        self.write_synced(batch)?;
        Ok(n)
    }

    /// Shard records held for an incomplete object.
    pub fn partial_shards(&self, object: &ObjectId) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(cf::PARTIAL),
            IteratorMode::From(object, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(object) {
                break;
            }
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// How many shard records are held for an incomplete object (keys only).
    pub fn partial_count(&self, object: &ObjectId) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut ro = rocksdb::ReadOptions::default();
        let mut upper = object.to_vec();
        upper.extend_from_slice(&[0xff; 9]);
        ro.set_iterate_upper_bound(upper);
        let it = self.db.iterator_cf_opt(
            self.cf(cf::PARTIAL),
            ro,
            IteratorMode::From(object, Direction::Forward),
        );
        for item in it {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(object) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Trust a node for `uses` ([`TRUST_BROADCAST`], [`TRUST_RELEASE`], or both), on top
    /// of what it was trusted for already.
    pub fn add_trust(&self, node: &str, uses: u8) -> Result<(), StoreError> {
        let had = self.trust_of(node)?;
        self.db
            .put_cf_opt(
                self.cf(cf::TRUST),
                node.as_bytes(),
                [had | uses],
                &Self::synced(),
            )
            .map_err(|e| self.db_err(e))
    }

    pub fn remove_trust(&self, node: &str) -> Result<bool, StoreError> {
        let had = self
            .db
            .get_cf(self.cf(cf::TRUST), node.as_bytes())
            .map_err(|e| self.db_err(e))?
            .is_some();
        self.db
            .delete_cf_opt(self.cf(cf::TRUST), node.as_bytes(), &Self::synced())
            .map_err(|e| self.db_err(e))?;
        Ok(had)
    }

    /// What a node is trusted for: a set of `TRUST_*` bits (0: nothing).
    pub fn trust_of(&self, node: &str) -> Result<u8, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(cf::TRUST), node.as_bytes())
            .map_err(|e| self.db_err(e))?
            .and_then(|v| v.first().copied())
            .unwrap_or(0))
    }

    pub fn trusted_for_broadcast(&self, node: &str) -> Result<bool, StoreError> {
        Ok(self.trust_of(node)? & TRUST_BROADCAST != 0)
    }

    /// Whether this node installs releases signed by `node`.
    pub fn trusted_for_release(&self, node: &str) -> Result<bool, StoreError> {
        Ok(self.trust_of(node)? & TRUST_RELEASE != 0)
    }

    /// Every trusted node and what for (`TRUST_*` bits).
    pub fn trust_list(&self) -> Result<Vec<(String, u8)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TRUST), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                v.first().copied().unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Whether a feed file (by its key) was already consumed.
    pub fn feed_file_consumed(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf::FEED_FILES), key)
            .map_err(|e| self.db_err(e))?
            .is_some())
    }

    /// Keep verified shard records of incomplete objects, then evict what is over the
    /// bound (see `bounds`). With `sync` the writes are durable before this returns;
    /// without, they reach disk with the next synced write. Returns how many incomplete
    /// objects (of any origin) the bound evicted.
    pub fn save_partial(
        &self,
        shards: &[PartialShard],
        now: DtnTime,
        sync: bool,
    ) -> Result<u64, StoreError> {
        if shards.is_empty() {
            return Ok(0);
        }
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut metas: HashMap<ObjectId, PartialMeta> = HashMap::new();
        // Length of each record written by this call, so a repeat counts once.
        let mut written: HashMap<[u8; 40], usize> = HashMap::new();
        let mut added = Tally::default();
        for s in shards {
            let m = match metas.entry(s.object) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(slot) => {
                    let held = self
                        .db
                        .get_cf(self.cf(cf::PARTIAL_SEEN), s.object)
                        .map_err(|e| self.db_err(e))?;
                    let m = match held {
                        Some(v) => self.partial_meta(&s.object, &v)?,
                        None => {
                            added.count += 1;
                            PartialMeta {
                                seen: now.0,
                                bytes: 0,
                                shards: 0,
                                need: 0,
                            }
                        }
                    };
                    slot.insert(m)
                }
            };
            m.need = m.need.max(s.need);
            let key = shard_key(&s.object, s.leaf);
            let before = match written.get(&key) {
                Some(len) => Some(*len),
                None => self
                    .db
                    .get_pinned_cf(self.cf(cf::PARTIAL), key)
                    .map_err(|e| self.db_err(e))?
                    .map(|v| v.len()),
            };
            let len = s.record.len();
            match before {
                None => {
                    m.shards += 1;
                    m.bytes += len as u64;
                    added.bytes += len as u64;
                }
                Some(b) => {
                    m.bytes = (m.bytes + len as u64).saturating_sub(b as u64);
                    added.bytes += (len as u64).saturating_sub(b as u64);
                }
            }
            written.insert(key, len);
            batch.put_cf(self.cf(cf::PARTIAL), key, &s.record);
        }
        for (obj, m) in &metas {
            batch.put_cf(self.cf(cf::PARTIAL_SEEN), obj, m.encode());
        }
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        self.db.write_opt(batch, &w).map_err(|e| self.db_err(e))?;
        self.bound_partial(added, sync)
    }

    /// Whether shards of an incomplete object are held.
    pub fn partial_held(&self, object: &ObjectId) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf::PARTIAL_SEEN), object)
            .map_err(|e| self.db_err(e))?
            .is_some())
    }

    /// Stage dropping every shard of an incomplete object. The caller holds the write lock.
    pub(super) fn stage_drop_partial(&self, batch: &mut WriteBatch, obj: &ObjectId) {
        batch.delete_range_cf(
            self.cf(cf::PARTIAL),
            shard_key(obj, 0),
            shard_key(obj, u64::MAX),
        );
        batch.delete_cf(self.cf(cf::PARTIAL), shard_key(obj, u64::MAX));
        batch.delete_cf(self.cf(cf::PARTIAL_SEEN), obj);
    }

    /// Commit rebuilt objects in one synced batch, together with `extra` metadata writes
    /// (`(column family, key, value)`): store the bundles (deduplicated), record the status
    /// of each object stored, and drop their partial shards. A refused object leaves
    /// nothing behind: a later copy is looked at afresh. What is newly stored is marked
    /// unsettled until a [`crate::route::delivery::Batch`] settles it ([`Store::unsettled`]).
    /// Sealed bundles newly stored are
    /// held for relaying under the contact `from` (when given) and count against the
    /// sealed bound, which is enforced before this returns.
    pub fn commit_rebuilt(
        &self,
        items: &[Rebuilt],
        extra: &[(&str, Vec<u8>, Vec<u8>)],
        now: DtnTime,
        from: Option<&ContactTag>,
    ) -> Result<Committed, StoreError> {
        let _g = self.lock_writes();
        let mut batch = Store::batch_for(
            items
                .iter()
                .filter_map(|it| it.result.as_ref().ok())
                .flatten(),
        );
        let mut staged = HashSet::new();
        let mut out = Committed::default();
        let mut relayed = Tally::default();
        for (cf_name, k, v) in extra {
            batch.put_cf(self.cf(cf_name), k, v);
        }
        for it in items {
            let mut outs = Vec::new();
            if let Ok(vbs) = &it.result {
                for vb in vbs {
                    let o = self.stage_put(&mut batch, vb, now, &mut staged)?;
                    if o == PutOutcome::New {
                        // Settled by the caller's next commit; until then, by the next
                        // import if this one is stopped first.
                        batch.put_cf(self.cf(cf::META), super::unsettled_key(&vb.id().key()), []);
                    }
                    if let (PutOutcome::New, Some(tag), true) = (o, from, vb.is_sealed()) {
                        let size = vb.raw().len() as u64;
                        self.stage_relayed(&mut batch, &vb.id().key(), tag, now, size);
                        relayed.count += 1;
                        relayed.bytes += size;
                    }
                    outs.push(o);
                }
                let status = ObjectStatus::Stored(vbs.iter().map(|v| v.id().key()).collect());
                let mut v = Vec::new();
                let _ = ciborium::into_writer(&status, &mut v);
                batch.put_cf(self.cf(cf::OBJECTS), it.object, v);
            }
            if it.had_partial {
                self.stage_drop_partial(&mut batch, &it.object);
            }
            out.outcomes.push(outs);
        }
        self.write_synced(batch)?;
        if relayed.count > 0 {
            out.sealed_evicted = self.bound_sealed(relayed)?;
        }
        Ok(out)
    }

    /// How many incomplete objects and shards are held, and their bytes.
    pub fn partial_summary(&self) -> Result<PartialSummary, StoreError> {
        let mut s = PartialSummary::default();
        for (_, m) in self.partial_metas()? {
            s.objects += 1;
            s.shards += m.shards as usize;
            s.bytes += m.bytes;
        }
        Ok(s)
    }

    /// Drop incomplete objects first seen at or before `cutoff`; returns how many.
    pub fn purge_partial(&self, cutoff: DtnTime) -> Result<usize, StoreError> {
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::PARTIAL_SEEN), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let Ok(obj) = <[u8; 32]>::try_from(&k[..]) else {
                batch.delete_cf(self.cf(cf::PARTIAL_SEEN), &k);
                continue;
            };
            if legacy_seen(&v) <= cutoff.0 {
                self.stage_drop_partial(&mut batch, &obj);
                n += 1;
            }
        }
        if n > 0 {
            self.write_synced(batch)?;
        }
        Ok(n)
    }

    /// Remember a peer's have-summary (already verified by the caller).
    pub fn put_peer_summary(&self, node: &str, summary: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(
                self.cf(cf::PEERS),
                node.as_bytes(),
                summary,
                &Self::synced(),
            )
            .map_err(|e| self.db_err(e))
    }

    pub fn peer_summary(&self, node: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf::PEERS), node.as_bytes())
            .map_err(|e| self.db_err(e))
    }
}
