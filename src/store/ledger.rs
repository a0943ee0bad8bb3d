//! The `ledger` column family: key/value state of the marketplace (accounts, payments,
//! tasks, workers, guilds), of a worker (assignments answered) and of a wallet (which
//! marketplace it settles with). The rules live in `market`; this file only reads and
//! writes, and commits ledger changes together with the bundles they produce in one
//! synced batch, so a payment is never recorded without its settlement bundle (or the
//! other way round).
//!
//! Owns: ledger persistence.

use super::{cf, Store, StoreError};
use crate::bundle::{CreationTimestamp, VerifiedBundle};
use crate::market::ledger::{Entries, KvWrite};
use crate::time::DtnTime;
use rocksdb::{Direction, IteratorMode};
use std::collections::HashSet;

impl Store {
    /// One ledger value.
    pub fn ledger_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf::LEDGER), key)
            .map_err(|e| self.db_err(e))
    }

    /// Every ledger entry whose key starts with `prefix`, in key order.
    pub fn ledger_scan(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(cf::LEDGER),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Write ledger changes (`None` deletes) and store `bundles` (marking `private` ones
    /// never to travel) in one synced batch.
    pub fn commit_ledger(
        &self,
        kv: &[KvWrite],
        bundles: &[VerifiedBundle],
        private: &[[u8; 32]],
        now: DtnTime,
    ) -> Result<(), StoreError> {
        let _g = self.lock_writes();
        let mut batch = Store::batch_for(bundles);
        let mut staged = HashSet::new();
        for vb in bundles {
            self.stage_put(&mut batch, vb, now, &mut staged)?;
        }
        for key in private {
            batch.put_cf(self.cf(cf::PRIVATE), key, []);
        }
        for (k, v) in kv {
            match v {
                Some(v) => batch.put_cf(self.cf(cf::LEDGER), k, v),
                None => batch.delete_cf(self.cf(cf::LEDGER), k),
            }
        }
        self.write_synced(batch)
    }

    /// `n` creation timestamps that will never repeat, reserved with one synced write.
    pub fn reserve_creation_timestamps(
        &self,
        now: DtnTime,
        n: u64,
    ) -> Result<Vec<CreationTimestamp>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let _g = self.lock_writes();
        let first = self.meta_u64(super::META_SEQ)?.map_or(0, |s| s + 1);
        self.put_meta_u64(super::META_SEQ, first + n - 1)?;
        Ok((first..first + n)
            .map(|seq| CreationTimestamp { time: now, seq })
            .collect())
    }

    /// The creation sequence number the next bundle made here will have.
    pub fn next_creation_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64(super::META_SEQ)?.map_or(0, |s| s + 1))
    }

    /// Make every creation sequence number from now on at least `floor` (a front node of
    /// a replicated marketplace moves to the block it claimed). Never lowers the counter.
    pub fn raise_creation_seq(&self, floor: u64) -> Result<(), StoreError> {
        let _g = self.lock_writes();
        let next = self.meta_u64(super::META_SEQ)?.map_or(0, |s| s + 1);
        if next < floor {
            self.put_meta_u64(super::META_SEQ, floor - 1)?;
        }
        Ok(())
    }
}
