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

/// Files at least this large are written past the page cache ([`write_direct`]) where the
/// folder's file system allows it.
const DIRECT_MIN: usize = 1 << 20;

/// Write `dir/name` atomically: `.tmp-name`, fsync, rename. On error the temporary file is
/// removed; a reader never sees a partial `name`. Large files (packs, feed segments) go
/// to the device directly where the file system takes it ([`write_direct`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let res = (|| {
        if bytes.len() < DIRECT_MIN || !write_direct(&tmp, bytes)? {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(name))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Alignment of direct writes: of the buffer's address, its length and the file offset
/// (the largest logical block size of the devices a stick or a disk has).
const DIRECT_ALIGN: usize = 4096;

/// Bytes a direct write hands the kernel at once: enough that the device has many requests
/// in flight (1 MiB writes, each waited for, made a stick export of small messages slower
/// than through the page cache).
const DIRECT_CHUNK: usize = 8 << 20;

/// Write `bytes` to a new file at `path` with `O_DIRECT`, synced: the bytes go from an
/// aligned buffer to the device without a copy into the page cache, which a synced write
/// of megabytes only fills to flush at once (a stick's packs, a feed's segments). The last
/// block is padded with zeros and the file then cut to its length. `Ok(false)`, with
/// nothing to keep at `path`, where the file system refuses direct I/O (tmpfs on older
/// kernels, some network file systems): the caller writes it the ordinary way.
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let f = match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut room = vec![0u8; bytes.len().min(DIRECT_CHUNK) + 2 * DIRECT_ALIGN];
    let at = room.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut room[at..];
    for part in bytes.chunks(DIRECT_CHUNK) {
        let padded = part.len().next_multiple_of(DIRECT_ALIGN);
        buf[..part.len()].copy_from_slice(part);
        buf[part.len()..padded].fill(0);
        match (&f).write_all(&buf[..padded]) {
            Err(e) if refused(&e) => return Ok(false),
            r => r?,
        }
    }
    f.set_len(bytes.len() as u64)?;
    f.sync_all()?;
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_: &Path, _: &[u8]) -> io::Result<bool> {
    Ok(false)
}

/// Ask the kernel to start reading the whole file at `path` into the page cache, without
/// waiting: a stick's next pack arrives while the one before is verified and stored (a
/// drive written elsewhere is never in this machine's cache). A hint: failures are ignored.
#[cfg(target_os = "linux")]
pub fn read_ahead(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = fs::File::open(path) {
        // SAFETY: a valid open descriptor; the call only advises the kernel.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn read_ahead(_: &Path) {}

/// Make a folder's entries (new names, renames) durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ at every offset, so a block written twice or out of place shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn atomic_writes_keep_every_byte_on_either_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        for len in [
            0,
            5,
            DIRECT_ALIGN,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            2 << 20,
            (3 << 20) + DIRECT_ALIGN - 1,
            DIRECT_CHUNK,
            2 * DIRECT_CHUNK + 5,
        ] {
            let bytes = pattern(len);
            let name = format!("f{len}");
            write_atomic(dir.path(), &name, &bytes).expect("write");
            assert_eq!(
                fs::read(dir.path().join(&name)).expect("read"),
                bytes,
                "{len}"
            );
            // The direct path itself, where this file system takes it.
            let direct = dir.path().join(format!("d{len}"));
            if write_direct(&direct, &bytes).expect("direct write") {
                assert_eq!(fs::read(&direct).expect("read"), bytes, "direct {len}");
            }
        }
        // Overwriting a longer file leaves nothing of it behind.
        write_atomic(dir.path(), "f", &pattern(3 << 20)).expect("write");
        write_atomic(dir.path(), "f", &pattern(DIRECT_MIN + 7)).expect("write");
        assert_eq!(
            fs::read(dir.path().join("f")).expect("read"),
            pattern(DIRECT_MIN + 7)
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
