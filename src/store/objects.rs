//! Erasure-coded objects in the store: verified shards of incomplete objects (kept until
//! rebuilt or expired), the status of objects already rebuilt, and peers' have-summaries.

use super::{cf, PutOutcome, Store, StoreError};
use crate::bundle::VerifiedBundle;
use crate::fec::ObjectId;
use crate::time::DtnTime;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What became of an object whose shards were complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectStatus {
    /// Rebuilt, verified and stored as the bundles with these keys.
    Stored(Vec<[u8; 32]>),
    /// Rebuilt but refused (the reason); further shards of it are ignored.
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

/// Incomplete objects held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialSummary {
    pub objects: usize,
    pub shards: usize,
    pub bytes: u64,
}

fn shard_key(object: &ObjectId, leaf: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(object);
    k[32..].copy_from_slice(&leaf.to_be_bytes());
    k
}

impl Store {
    pub fn object_status(&self, object: &ObjectId) -> Result<Option<ObjectStatus>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::OBJECTS), object)
            .map_err(|e| self.db_err(e))?;
        v.map(|b| {
            ciborium::from_reader(b.as_slice()).map_err(|e| StoreError::Corrupt {
                key: hex::encode(object),
                reason: e.to_string(),
            })
        })
        .transpose()
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

    /// Mark a node as trusted (or not) for broadcast feeds.
    pub fn set_trust(&self, node: &str, broadcast: bool) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(
                self.cf(cf::TRUST),
                node.as_bytes(),
                [u8::from(broadcast)],
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

    pub fn trusted_for_broadcast(&self, node: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(cf::TRUST), node.as_bytes())
            .map_err(|e| self.db_err(e))?
            .is_some_and(|v| v.first() == Some(&1)))
    }

    /// Every trusted node and whether it is trusted for broadcast.
    pub fn trust_list(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TRUST), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                v.first() == Some(&1),
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

    /// Keep verified shard records of incomplete objects. With `sync` the write is durable
    /// before this returns; without, it reaches disk with the next synced write.
    pub fn save_partial(
        &self,
        shards: &[(ObjectId, u64, Vec<u8>)],
        now: DtnTime,
        sync: bool,
    ) -> Result<(), StoreError> {
        if shards.is_empty() {
            return Ok(());
        }
        let _g = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut seen = HashSet::new();
        for (obj, leaf, rec) in shards {
            if seen.insert(*obj)
                && self
                    .db
                    .get_pinned_cf(self.cf(cf::PARTIAL_SEEN), obj)
                    .map_err(|e| self.db_err(e))?
                    .is_none()
            {
                batch.put_cf(self.cf(cf::PARTIAL_SEEN), obj, now.0.to_be_bytes());
            }
            batch.put_cf(self.cf(cf::PARTIAL), shard_key(obj, *leaf), rec);
        }
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        self.db.write_opt(batch, &w).map_err(|e| self.db_err(e))
    }

    /// Commit rebuilt objects in one synced batch, together with `extra` metadata writes
    /// (`(column family, key, value)`): store the bundles (deduplicated), record each
    /// object's status, and drop their partial shards. Returns, per object, the outcome of
    /// each of its bundles (empty for refused objects).
    pub fn commit_rebuilt(
        &self,
        items: &[Rebuilt],
        extra: &[(&str, Vec<u8>, Vec<u8>)],
        now: DtnTime,
    ) -> Result<Vec<Vec<PutOutcome>>, StoreError> {
        let _g = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut staged = HashSet::new();
        let mut out = Vec::with_capacity(items.len());
        for (cf_name, k, v) in extra {
            batch.put_cf(self.cf(cf_name), k, v);
        }
        for it in items {
            let (status, outcome) = match &it.result {
                Ok(vbs) => {
                    let mut outs = Vec::with_capacity(vbs.len());
                    for vb in vbs {
                        outs.push(self.stage_put(&mut batch, vb, now, &mut staged)?);
                    }
                    (
                        ObjectStatus::Stored(vbs.iter().map(|v| v.id().key()).collect()),
                        outs,
                    )
                }
                Err(reason) => (ObjectStatus::Refused(reason.clone()), Vec::new()),
            };
            let mut v = Vec::new();
            let _ = ciborium::into_writer(&status, &mut v);
            batch.put_cf(self.cf(cf::OBJECTS), it.object, v);
            if it.had_partial {
                batch.delete_range_cf(
                    self.cf(cf::PARTIAL),
                    shard_key(&it.object, 0),
                    shard_key(&it.object, u64::MAX),
                );
                batch.delete_cf(self.cf(cf::PARTIAL), shard_key(&it.object, u64::MAX));
                batch.delete_cf(self.cf(cf::PARTIAL_SEEN), it.object);
            }
            out.push(outcome);
        }
        self.write_synced(batch)?;
        Ok(out)
    }

    /// How many incomplete objects and shards are held.
    pub fn partial_summary(&self) -> Result<PartialSummary, StoreError> {
        let mut s = PartialSummary::default();
        let mut last: Option<Vec<u8>> = None;
        for item in self
            .db
            .iterator_cf(self.cf(cf::PARTIAL), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            s.shards += 1;
            s.bytes += v.len() as u64;
            if last.as_deref() != Some(&k[..32.min(k.len())]) {
                s.objects += 1;
                last = Some(k[..32.min(k.len())].to_vec());
            }
        }
        Ok(s)
    }

    /// Drop incomplete objects first seen at or before `cutoff`; returns how many.
    pub fn purge_partial(&self, cutoff: DtnTime) -> Result<usize, StoreError> {
        let _g = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::PARTIAL_SEEN), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let seen = <[u8; 8]>::try_from(&v[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let Ok(obj) = <[u8; 32]>::try_from(&k[..]) else {
                batch.delete_cf(self.cf(cf::PARTIAL_SEEN), &k);
                continue;
            };
            if seen <= cutoff.0 {
                batch.delete_range_cf(
                    self.cf(cf::PARTIAL),
                    shard_key(&obj, 0),
                    shard_key(&obj, u64::MAX),
                );
                batch.delete_cf(self.cf(cf::PARTIAL), shard_key(&obj, u64::MAX));
                batch.delete_cf(self.cf(cf::PARTIAL_SEEN), obj);
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
