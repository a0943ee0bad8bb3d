//! Releases as bundles: a `release` manifest (version, notes, and for each target its
//! binary's size and blake3 hash) and `release-chunk` bundles carrying the binaries in
//! pieces of at most [`CHUNK`] bytes, so a new Mycelium travels by stick, sync and feed like
//! any bundle. A release's id is blake3 of its manifest's envelope ([`ReleaseManifest::id`]);
//! each chunk names it. Who may publish releases is a node's trust decision, not this
//! module's: here are the shapes, their structural rules, versions and which target runs on
//! which machine.
//!
//! Owns: release manifest and chunk shapes, version order, target matching. Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

pub const KIND_RELEASE: &str = "release";
pub const KIND_RELEASE_CHUNK: &str = "release-chunk";
/// Largest piece of a binary carried in one bundle (as a model's chunks).
pub const CHUNK: usize = super::model::CHUNK;
/// Most targets in one release, and the largest binary.
pub const MAX_FILES: usize = 16;
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Longest release notes, in bytes.
pub const MAX_NOTES: usize = 8192;

/// A version: `MAJOR.MINOR.PATCH`, numbers only, ordered as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parse `MAJOR.MINOR.PATCH` (each a decimal number without a sign).
    pub fn parse(s: &str) -> Result<Version, String> {
        let bad = || format!("bad version {s:?}: expected MAJOR.MINOR.PATCH, numbers only");
        let mut it = s.split('.');
        let mut num = || -> Result<u32, String> {
            let p = it.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version(num()?, num()?, num()?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One binary of a release: the target it is built for (a Rust target triple such as
/// `x86_64-unknown-linux-musl`), its size and blake3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    pub target: String,
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
}

impl ReleaseFile {
    /// How many chunks carry this binary.
    pub fn chunks(&self) -> u32 {
        (self.size.div_ceil(CHUNK as u64)).max(1) as u32
    }
}

/// A release: its version, notes for people, and one binary per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub version: String,
    pub notes: String,
    pub files: Vec<ReleaseFile>,
}

/// One chunk of one binary of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseChunk {
    /// The release's id ([`ReleaseManifest::id`]).
    #[serde(with = "serde_bytes")]
    pub release: [u8; 32],
    /// Index of the binary in the manifest.
    pub file: u32,
    /// Index of the chunk in the binary.
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A target triple we accept: 1 to 64 bytes of `a-z 0-9 _ . -`, at least three parts.
fn plain_target(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && t.split('-').filter(|p| !p.is_empty()).count() >= 3
}

impl ReleaseManifest {
    /// The release's id: blake3 of its envelope, as [`encode_manifest`] writes it.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&encode_manifest(self)).as_bytes()
    }

    /// Its version, if it parses.
    pub fn parsed_version(&self) -> Result<Version, String> {
        Version::parse(&self.version)
    }

    /// Structural rules: a version that parses, notes of at most [`MAX_NOTES`] bytes, 1 to
    /// [`MAX_FILES`] binaries, each for a plain target listed once, 1 byte to
    /// [`MAX_FILE_BYTES`] long.
    pub fn check(&self) -> Result<(), String> {
        self.parsed_version()?;
        if self.notes.len() > MAX_NOTES {
            return Err(format!("release notes longer than {MAX_NOTES} bytes"));
        }
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return Err(format!("a release has 1 to {MAX_FILES} binaries"));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !plain_target(&f.target) {
                return Err(format!("bad target {:?}", f.target));
            }
            if !seen.insert(f.target.as_str()) {
                return Err(format!("target {} listed twice", f.target));
            }
            if f.size == 0 || f.size > MAX_FILE_BYTES {
                return Err(format!(
                    "the binary for {} is {} bytes (1 to {MAX_FILE_BYTES})",
                    f.target, f.size
                ));
            }
        }
        Ok(())
    }

    /// The binary that runs on a machine of `arch` and `os` (as Rust's
    /// `std::env::consts` names them), with its index: a statically linked (`musl`) one
    /// first, as it runs on any such machine, else one for the machine's C library.
    pub fn binary_for(&self, arch: &str, os: &str, libc: &str) -> Option<(usize, &ReleaseFile)> {
        let fits = |f: &ReleaseFile| {
            let mut parts = f.target.split('-');
            parts.next() == Some(arch) && f.target.split('-').any(|p| p == os)
        };
        let env_of = |f: &ReleaseFile| f.target.rsplit('-').next().unwrap_or("").to_string();
        let rank = |f: &ReleaseFile| match env_of(f).as_str() {
            "musl" => 0,
            e if e == libc => 1,
            _ => 2,
        };
        self.files
            .iter()
            .enumerate()
            .filter(|(_, f)| fits(f) && rank(f) < 2)
            .min_by(|a, b| rank(a.1).cmp(&rank(b.1)).then(Ordering::Equal))
    }
}

/// The target triple a binary name of a release names: `mycelium-<target>` (what
/// `scripts/release.sh` writes into `dist/`).
pub fn target_of_name(name: &str) -> Option<&str> {
    name.strip_prefix("mycelium-").filter(|t| plain_target(t))
}

pub fn encode_manifest(m: &ReleaseManifest) -> Vec<u8> {
    super::encode_kind(KIND_RELEASE, m)
}
pub fn decode_manifest(p: &[u8]) -> Result<ReleaseManifest, super::AduError> {
    super::decode_kind(p, KIND_RELEASE)
}
pub fn encode_chunk(c: &ReleaseChunk) -> Vec<u8> {
    super::encode_kind(KIND_RELEASE_CHUNK, c)
}
pub fn decode_chunk(p: &[u8]) -> Result<ReleaseChunk, super::AduError> {
    super::decode_kind(p, KIND_RELEASE_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(target: &str, size: u64) -> ReleaseFile {
        ReleaseFile {
            target: target.into(),
            size,
            hash: [7; 32],
        }
    }

    #[test]
    fn versions_parse_and_order_as_numbers() {
        assert_eq!(Version::parse("0.10.2"), Ok(Version(0, 10, 2)));
        assert!(Version::parse("0.10.2").unwrap() > Version::parse("0.9.99").unwrap());
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "1.-2.3",
            "1.2.x",
            "+1.2.3",
            "1..3",
            "99999999999.0.0",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Version(1, 2, 3).to_string(), "1.2.3");
    }

    #[test]
    fn manifests_are_checked_and_ids_bind_every_field() {
        let m = ReleaseManifest {
            version: "0.2.0".into(),
            notes: "faster import".into(),
            files: vec![
                file("x86_64-unknown-linux-musl", 10),
                file("aarch64-unknown-linux-musl", 12),
            ],
        };
        assert_eq!(m.check(), Ok(()));
        let back = decode_manifest(&encode_manifest(&m)).unwrap();
        assert_eq!(back, m);
        let mut n = m.clone();
        n.notes.push('!');
        assert_ne!(n.id(), m.id());
        let mut n = m.clone();
        n.files[1].hash[0] ^= 1;
        assert_ne!(n.id(), m.id());

        let bad = |f: &dyn Fn(&mut ReleaseManifest)| {
            let mut n = m.clone();
            f(&mut n);
            n.check().unwrap_err()
        };
        assert!(bad(&|n| n.version = "2".into()).contains("bad version"));
        assert!(bad(&|n| n.files.clear()).contains("1 to"));
        assert!(bad(&|n| n.files[1].target = "x86_64-unknown-linux-musl".into()).contains("twice"));
        assert!(bad(&|n| n.files[0].target = "../../bin/sh".into()).contains("bad target"));
        assert!(bad(&|n| n.files[0].size = 0).contains("bytes"));
        assert!(bad(&|n| n.files[0].size = MAX_FILE_BYTES + 1).contains("bytes"));
        assert!(bad(&|n| n.notes = "x".repeat(MAX_NOTES + 1)).contains("notes"));
    }

    #[test]
    fn the_binary_for_a_machine_prefers_static() {
        let m = ReleaseManifest {
            version: "1.0.0".into(),
            notes: String::new(),
            files: vec![
                file("x86_64-unknown-linux-gnu", 1),
                file("aarch64-unknown-linux-musl", 1),
                file("x86_64-unknown-linux-musl", 1),
                file("x86_64-pc-windows-msvc", 1),
            ],
        };
        assert_eq!(m.binary_for("x86_64", "linux", "gnu").unwrap().0, 2);
        assert_eq!(m.binary_for("aarch64", "linux", "gnu").unwrap().0, 1);
        assert!(m.binary_for("riscv64", "linux", "gnu").is_none());
        let gnu_only = ReleaseManifest {
            files: vec![file("x86_64-unknown-linux-gnu", 1)],
            ..m.clone()
        };
        assert_eq!(gnu_only.binary_for("x86_64", "linux", "gnu").unwrap().0, 0);
        assert!(gnu_only.binary_for("x86_64", "linux", "musl").is_none());
        assert_eq!(
            target_of_name("mycelium-aarch64-unknown-linux-musl"),
            Some("aarch64-unknown-linux-musl")
        );
        assert_eq!(target_of_name("mycelium-../x"), None);
        assert_eq!(target_of_name("other-x86_64-unknown-linux-musl"), None);
    }
}
