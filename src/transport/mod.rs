//! Drivers that move bundles over a medium. Each is thin: the decisions live in `route`,
//! `sync` and `fec`; a driver reads and writes the medium and reports.
//!
//! - [`folder`]: USB sticks and any folder (sneakernet): shard packs, catalogs,
//!   have-summaries.
//! - [`broadcast`]: the one-way feed (publish, ingest, watch).
//! - [`discovery`]: signed LAN beacons and rate-limited syncs with neighbours.
//! - [`quic`]: sync sessions over QUIC with Ed25519 raw-public-key TLS.

pub mod broadcast;
pub mod discovery;
pub mod folder;
pub mod quic;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

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
