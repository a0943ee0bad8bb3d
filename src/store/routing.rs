//! The store's side of routing and sync: tombstones (delivered bundles not to carry),
//! the [`RouteStore`] implementation behind delivery and receipts, the inventory a sync
//! session reconciles, per-peer sync records, and the gateway's daily byte budget.

use super::{cf, decode_record, key32, Store, StoreError, Tally};
use crate::bundle::{CreationTimestamp, Eid};
use crate::route::delivery::{Change, RouteStore, Tombstone};
use crate::route::priority;
use crate::sync::session::Item;
use crate::time::DtnTime;
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// What this node remembers about syncing with one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Last known address (`host:port`), from `peer add` or discovery.
    pub addr: Option<String>,
    /// On the allow-list (`peer add`).
    pub allowed: bool,
    pub last_attempt: DtnTime,
    pub last_success: DtnTime,
    pub sessions: u64,
    pub bundles_in: u64,
    pub bundles_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the last session failed, if it did.
    pub last_error: Option<String>,
}

const META_GW_DAY: &[u8] = b"gateway_day";
const META_GW_USED: &[u8] = b"gateway_used";
const DAY_MS: u64 = 86_400_000;

impl Store {
    fn tombstone_key(key: &[u8; 32], signer: &str) -> Vec<u8> {
        let mut k = key.to_vec();
        k.extend_from_slice(signer.as_bytes());
        k
    }

    fn tombstone_of(&self, key: &[u8; 32], signer: &str) -> Result<Option<Tombstone>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::TOMBSTONES), Self::tombstone_key(key, signer))
            .map_err(|e| self.db_err(e))?;
        v.map(|b| {
            ciborium::from_reader(b.as_slice()).map_err(|e| StoreError::Corrupt {
                key: hex::encode(key),
                reason: format!("tombstone: {e}"),
            })
        })
        .transpose()
    }

    /// All tombstones (one per key and signer), in key order.
    pub fn tombstones(&self) -> Result<Vec<([u8; 32], Tombstone)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::TOMBSTONES), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = key32(k.get(..32).unwrap_or(&k))?;
            let t = ciborium::from_reader(&v[..]).map_err(|e| StoreError::Corrupt {
                key: hex::encode(key),
                reason: format!("tombstone: {e}"),
            })?;
            out.push((key, t));
        }
        Ok(out)
    }

    /// Keys whose delivery is confirmed by their destination (verified tombstones).
    fn delivered_keys(&self) -> Result<HashSet<[u8; 32]>, StoreError> {
        Ok(self
            .tombstones()?
            .into_iter()
            .filter(|(_, t)| t.verified)
            .map(|(k, _)| k)
            .collect())
    }

    /// Drop tombstones whose bundles would have expired by `now` (and the private marks
    /// they kept alive); returns how many.
    pub fn purge_tombstones(&self, now: DtnTime) -> Result<usize, StoreError> {
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (key, t) in self.tombstones()? {
            if t.expires <= now {
                batch.delete_cf(
                    self.cf(cf::TOMBSTONES),
                    Self::tombstone_key(&key, &t.signer),
                );
                if self.record(&key)?.is_none() {
                    batch.delete_cf(self.cf(cf::PRIVATE), key);
                }
                n += 1;
            }
        }
        if n > 0 {
            self.write_synced(batch)?;
        }
        Ok(n)
    }

    /// What a sync session with `peer` reconciles: every stored bundle and every
    /// tombstone. Sendable are live bundles that are neither delivered nor addressed to
    /// this node (they have arrived).
    pub fn sync_items(
        &self,
        me: &Eid,
        peer: Option<&Eid>,
        now: DtnTime,
    ) -> Result<Vec<Item>, StoreError> {
        let me = me.node_id().to_string();
        let peer = peer.map(|p| p.node_id().to_string());
        // Only tombstones checked against the bundle's destination count (a forged receipt
        // must not stop a bundle).
        let stones: Vec<([u8; 32], Tombstone)> = self
            .tombstones()?
            .into_iter()
            .filter(|(_, t)| t.verified)
            .collect();
        let dead: HashSet<[u8; 32]> = stones.iter().map(|(k, _)| *k).collect();
        let private = self.private_keys()?;
        let mut out = Vec::with_capacity(stones.len());
        for item in self
            .db
            .iterator_cf(self.cf(cf::RECORDS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let key = key32(&k)?;
            if private.contains(&key) {
                // Not even its key is shown: it would tell a peer who sent what.
                continue;
            }
            let rec = decode_record(&key, &v)?;
            let dest = super::dest_node(&rec.destination);
            // Spray and wait: with one copy left, wait for the destination itself.
            let for_peer = peer.as_deref() == Some(dest.as_str());
            let waiting = !for_peer && self.copies(&key)?.is_some_and(|c| c <= 1);
            out.push(Item {
                key,
                created_ms: rec.created_ms,
                class: priority(&rec.kind),
                for_peer,
                expires_ms: rec.expires_at.0,
                size: rec.size,
                sendable: !dead.contains(&key) && rec.expires_at > now && dest != me && !waiting,
            });
        }
        let stored: HashSet<[u8; 32]> = out.iter().map(|i| i.key).collect();
        let mut seen = HashSet::new();
        for (key, t) in stones {
            if !stored.contains(&key) && !private.contains(&key) && seen.insert(key) {
                out.push(Item {
                    key,
                    created_ms: t.created,
                    class: 0,
                    for_peer: false,
                    expires_ms: t.expires.0,
                    size: 0,
                    sendable: false,
                });
            }
        }
        Ok(out)
    }

    /// A node's X25519 sealing key, if its node record (or `contact add`) told us.
    pub fn contact(&self, node: &str) -> Result<Option<[u8; 32]>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::CONTACTS), node.as_bytes())
            .map_err(|e| self.db_err(e))?;
        v.map(|b| {
            <[u8; 32]>::try_from(b.as_slice()).map_err(|_| StoreError::Corrupt {
                key: node.to_string(),
                reason: "contact key is not 32 bytes".into(),
            })
        })
        .transpose()
    }

    /// Every known sealing key, by node ID.
    pub fn contacts(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::CONTACTS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let node = String::from_utf8_lossy(&k).into_owned();
            let key = <[u8; 32]>::try_from(&v[..]).map_err(|_| StoreError::Corrupt {
                key: node.clone(),
                reason: "contact key is not 32 bytes".into(),
            })?;
            out.push((node, key));
        }
        Ok(out)
    }

    /// Remember a node's sealing key (synced).
    pub fn set_contact(&self, node: &str, xpk: &[u8; 32]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(cf::CONTACTS), node.as_bytes(), xpk, &Self::synced())
            .map_err(|e| self.db_err(e))
    }

    /// Mark stored bundles private (never offered, reconciled or exported).
    pub fn set_private(&self, keys: &[[u8; 32]]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for k in keys {
            batch.put_cf(self.cf(cf::PRIVATE), k, []);
        }
        self.write_synced(batch)
    }

    /// Keys of private bundles.
    pub fn private_keys(&self) -> Result<HashSet<[u8; 32]>, StoreError> {
        let mut out = HashSet::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::PRIVATE), IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            out.insert(key32(&k)?);
        }
        Ok(out)
    }

    /// Spray-and-wait copies left for a bundle (`None`: no copy limit).
    pub fn copies(&self, key: &[u8; 32]) -> Result<Option<u32>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::COPIES), key)
            .map_err(|e| self.db_err(e))?;
        v.map(|b| {
            <[u8; 4]>::try_from(b.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: hex::encode(key),
                    reason: "copies value is not 4 bytes".into(),
                })
        })
        .transpose()
    }

    /// Set the copies this node may still hand out for a bundle (synced).
    pub fn set_copies(&self, key: &[u8; 32], copies: u32) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(
                self.cf(cf::COPIES),
                key,
                copies.to_be_bytes(),
                &Self::synced(),
            )
            .map_err(|e| self.db_err(e))
    }

    /// Stored bundles that must not travel on: delivered elsewhere (tombstoned),
    /// addressed to this node (they have arrived), or private.
    pub fn held_back(&self, me: &Eid) -> Result<HashSet<[u8; 32]>, StoreError> {
        let mut out = self.delivered_keys()?;
        out.extend(self.for_destination_node(me)?);
        out.extend(self.private_keys()?);
        Ok(out)
    }

    pub fn peer_record(&self, node: &str) -> Result<Option<PeerRecord>, StoreError> {
        let v = self
            .db
            .get_cf(self.cf(cf::SYNC_PEERS), node.as_bytes())
            .map_err(|e| self.db_err(e))?;
        v.map(|b| {
            ciborium::from_reader(b.as_slice()).map_err(|e| StoreError::Corrupt {
                key: node.to_string(),
                reason: format!("peer record: {e}"),
            })
        })
        .transpose()
    }

    /// Read, change and write back one peer's record (created if missing).
    pub fn update_peer(
        &self,
        node: &str,
        f: impl FnOnce(&mut PeerRecord),
    ) -> Result<PeerRecord, StoreError> {
        let _g = self.lock_writes();
        let mut rec = self.peer_record(node)?.unwrap_or_default();
        f(&mut rec);
        let mut bytes = Vec::new();
        let _ = ciborium::into_writer(&rec, &mut bytes);
        self.db
            .put_cf_opt(
                self.cf(cf::SYNC_PEERS),
                node.as_bytes(),
                bytes,
                &Self::synced(),
            )
            .map_err(|e| self.db_err(e))?;
        Ok(rec)
    }

    /// Every peer record, by node ID.
    pub fn peers(&self) -> Result<Vec<(String, PeerRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::SYNC_PEERS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let node = String::from_utf8_lossy(&k).into_owned();
            let rec = ciborium::from_reader(&v[..]).map_err(|e| StoreError::Corrupt {
                key: node.clone(),
                reason: format!("peer record: {e}"),
            })?;
            out.push((node, rec));
        }
        Ok(out)
    }

    /// Bytes the gateway has used on the day (UTC, DTN days) containing `now`.
    pub fn gateway_used_today(&self, now: DtnTime) -> Result<u64, StoreError> {
        let day = now.0 / DAY_MS;
        if self.meta_u64(META_GW_DAY)? != Some(day) {
            return Ok(0);
        }
        Ok(self.meta_u64(META_GW_USED)?.unwrap_or(0))
    }

    /// Add to the gateway's byte count for today.
    pub fn add_gateway_used(&self, now: DtnTime, bytes: u64) -> Result<u64, StoreError> {
        let used = self.gateway_used_today(now)?.saturating_add(bytes);
        let _g = self.lock_writes();
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::META),
            META_GW_DAY,
            (now.0 / DAY_MS).to_be_bytes(),
        );
        batch.put_cf(self.cf(cf::META), META_GW_USED, used.to_be_bytes());
        self.write_synced(batch)?;
        Ok(used)
    }
}

impl RouteStore for Store {
    type Error = StoreError;

    fn has(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.record(key)?.is_some())
    }

    fn destination_node(&self, key: &[u8; 32]) -> Result<Option<String>, StoreError> {
        Ok(self.record(key)?.map(|r| super::dest_node(&r.destination)))
    }

    fn tombstone(&self, key: &[u8; 32], signer: &str) -> Result<Option<Tombstone>, StoreError> {
        self.tombstone_of(key, signer)
    }

    fn created_ms(&self, key: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        Ok(self.record(key)?.map(|r| r.created_ms))
    }

    fn next_creation_timestamp(&self, now: DtnTime) -> Result<CreationTimestamp, StoreError> {
        Store::next_creation_timestamp(self, now)
    }

    fn commit(&self, change: Change, now: DtnTime) -> Result<(), StoreError> {
        let _g = self.lock_writes();
        let mut batch = Store::batch_for(&change.put);
        let mut staged = HashSet::new();
        let mut new_sizes = HashMap::new();
        // A bundle the same change drops (a receipt for it came in the same batch) is
        // not stored at all: its index entries would outlive it.
        let dropped: HashSet<[u8; 32]> = change.delete.iter().copied().collect();
        for vb in &change.put {
            if dropped.contains(&vb.id().key()) {
                continue;
            }
            if self.stage_put(&mut batch, vb, now, &mut staged)? == super::PutOutcome::New {
                new_sizes.insert(vb.id().key(), vb.raw().len() as u64);
            }
        }
        let mut relayed = Tally::default();
        for (key, tag) in &change.relayed {
            if let Some(size) = new_sizes.get(key) {
                self.stage_relayed(&mut batch, key, tag, now, *size);
                relayed.count += 1;
                relayed.bytes += size;
            }
        }
        for (key, t) in &change.tombstones {
            let mut bytes = Vec::new();
            let _ = ciborium::into_writer(t, &mut bytes);
            batch.put_cf(
                self.cf(cf::TOMBSTONES),
                Self::tombstone_key(key, &t.signer),
                bytes,
            );
        }
        for key in &change.delete {
            self.stage_delete(&mut batch, key)?;
        }
        for (node, xpk) in &change.contacts {
            batch.put_cf(self.cf(cf::CONTACTS), node.as_bytes(), xpk);
        }
        for key in &change.private {
            batch.put_cf(self.cf(cf::PRIVATE), key, []);
        }
        for key in &change.settled {
            batch.delete_cf(self.cf(cf::META), super::unsettled_key(key));
        }
        for key in &change.owed_paid {
            batch.delete_cf(self.cf(cf::META), super::owed_key(key));
        }
        for (key, mark) in &change.owed {
            batch.put_cf(self.cf(cf::META), super::owed_key(key), mark);
        }
        self.write_synced(batch)?;
        if relayed.count > 0 {
            self.bound_sealed(relayed)?;
        }
        Ok(())
    }

    fn contact(&self, node: &str) -> Result<Option<[u8; 32]>, StoreError> {
        Store::contact(self, node)
    }

    fn sealed_by_tag(&self, tag: &[u8; 16]) -> Result<Vec<[u8; 32]>, StoreError> {
        Store::sealed_by_tag(self, tag)
    }
}
