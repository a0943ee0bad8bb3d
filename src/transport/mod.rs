//! Drivers that move bundles over a medium. Each is thin: the decisions live in `route`,
//! `sync` and `fec`; a driver reads and writes the medium and reports.
//!
//! - [`folder`]: USB sticks and any folder (sneakernet): shard packs, catalogs,
//!   have-summaries.
//! - [`broadcast`]: the one-way feed (publish, ingest, watch).
//! - [`discovery`]: signed LAN beacons and rate-limited syncs with neighbours.
//! - [`qr`]: QR frames as PNG files and pages to play or print; photos of them read back.
//! - [`quic`]: sync sessions over QUIC with Ed25519 raw-public-key TLS.

pub mod broadcast;
pub mod discovery;
pub mod folder;
pub mod qr;
pub mod quic;

use std::fs;
use std::io::{self, Write};
use std::ops::Deref;
use std::path::Path;

/// A report's list of problems (refused objects, damaged files): the first
/// [`Capped::KEEP`] kept, every one counted, so a forged input of a million bad parts costs
/// a counter, not a million lines. Reads as the slice of those kept.
#[derive(Debug, Clone)]
pub struct Capped<T> {
    kept: Vec<T>,
    total: usize,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            kept: Vec::new(),
            total: 0,
        }
    }
}

impl<T> Capped<T> {
    pub const KEEP: usize = 1000;

    /// Count one, and keep it if there is room.
    pub fn push(&mut self, x: T) {
        self.total += 1;
        if self.kept.len() < Self::KEEP {
            self.kept.push(x);
        }
    }

    /// Count one without keeping it.
    pub fn count_only(&mut self) {
        self.total += 1;
    }

    /// How many there were, kept or not.
    pub fn total(&self) -> usize {
        self.total
    }
}

impl<T> Deref for Capped<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.kept
    }
}

impl<'a, T> IntoIterator for &'a Capped<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.kept.iter()
    }
}

/// Prefix of the temporary names files are written under before their final rename.
pub const TMP_PREFIX: &str = ".tmp-";

/// Write `dir/name` atomically: `.tmp-name`, fsync, rename. On error the temporary file is
/// removed; a reader never sees a partial `name`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Make a folder's entries (new names, renames) durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
