//! Releases of Mycelium that travel as bundles, and `update`. A release is a signed
//! `release` manifest and its binaries in `release-chunk` bundles ([`crate::adu::release`]);
//! [`publish`] stores one for travel. A node takes a release only from a signer it trusts
//! for releases (`trust add NODE_ID --release`; its own releases too), only if it is newer
//! than what is installed, only with a binary for this machine, and only once every chunk
//! is here and the binary matches its manifest's size and hash ([`survey`] says, for each
//! release held, which of these stops it). [`update`] writes that binary beside the one it
//! replaces, checks it again, keeps the old one as `<name>.previous` and renames the new one
//! over the old (one atomic step: the path always holds a whole binary); [`rollback`] puts
//! the previous one back. What is installed where is noted in the ledger
//! (`release/installed/<path>`), so a version is known without running the binary.
//!
//! Owns: publishing releases, judging held releases, installing and rolling back a binary,
//! `spread` (what a person with nothing needs, written to a folder), and the `release/`
//! ledger entries.

use crate::adu::release::{
    self as ar, ReleaseChunk, ReleaseFile, ReleaseManifest, Version, KIND_RELEASE,
    KIND_RELEASE_CHUNK,
};
use crate::node::Node;
use crate::time::DtnTime;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How long release bundles live: a year.
pub const LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;
/// The version of the running program.
pub const RUNNING: &str = env!("CARGO_PKG_VERSION");
const INSTALLED_PREFIX: &[u8] = b"release/installed/";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
    /// Nothing to install, or what there is may not be installed: the reason.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Folder(#[from] crate::transport::folder::FolderError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A machine a binary must run on: its architecture, operating system and C library, as
/// Rust names them (`x86_64`, `linux`, `gnu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub arch: String,
    pub os: String,
    pub libc: String,
}

impl Machine {
    /// The machine this program runs on.
    pub fn this() -> Machine {
        let libc = if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        };
        Machine {
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            libc: libc.into(),
        }
    }

    /// The machine a target triple names (`aarch64-unknown-linux-musl`).
    pub fn of_target(t: &str) -> Result<Machine, ReleaseError> {
        let parts: Vec<&str> = t.split('-').collect();
        let os = ["linux", "android", "macos", "darwin", "windows", "freebsd"]
            .into_iter()
            .find(|o| parts.contains(o));
        match (parts.first(), os, parts.last()) {
            (Some(a), Some(o), Some(l)) if parts.len() >= 3 => Ok(Machine {
                arch: a.to_string(),
                os: o.to_string(),
                libc: l.to_string(),
            }),
            _ => Err(ReleaseError::Bad(format!(
                "bad target {t:?}: expected a triple such as x86_64-unknown-linux-musl"
            ))),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.arch, self.os, self.libc)
    }
}

/// blake3 and length of a file, streamed.
fn hash_file(path: &Path) -> Result<([u8; 32], u64), ReleaseError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok((*h.finalize().as_bytes(), n))
}

/// What [`publish`] stored.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: [u8; 32],
    pub version: String,
    pub targets: Vec<String>,
    /// Bundles stored (the manifest and the chunks).
    pub bundles: usize,
    /// Bytes of binaries.
    pub bytes: u64,
}

/// Store a release signed by this node for travel: its manifest and every binary in
/// chunks. `files` are (target, path).
pub fn publish(
    node: &Node,
    files: &[(String, PathBuf)],
    version: &str,
    notes: &str,
    now: DtnTime,
) -> Result<Published, ReleaseError> {
    let mut listed = Vec::new();
    for (target, path) in files {
        let (hash, size) = hash_file(path)?;
        listed.push(ReleaseFile {
            target: target.clone(),
            size,
            hash,
        });
    }
    let manifest = ReleaseManifest {
        version: version.to_string(),
        notes: notes.to_string(),
        files: listed,
    };
    manifest.check().map_err(ReleaseError::Bad)?;
    let id = manifest.id();
    let mut bundles = 0;
    // Chunks first, manifest last: a node that holds the manifest here holds it all.
    for (fi, (f, (_, path))) in manifest.files.iter().zip(files).enumerate() {
        bundles +=
            node.store_file_chunks(path, f.size, ar::CHUNK, LIFETIME_MS, now, |index, data| {
                ar::encode_chunk(&ReleaseChunk {
                    release: id,
                    file: fi as u32,
                    index,
                    data,
                })
            })?;
    }
    bundles += node.store_for_everyone(vec![ar::encode_manifest(&manifest)], LIFETIME_MS, now)?;
    Ok(Published {
        id,
        version: manifest.version.clone(),
        targets: manifest.files.iter().map(|f| f.target.clone()).collect(),
        bundles,
        bytes: manifest.files.iter().map(|f| f.size).sum(),
    })
}

/// Where a held release stands for this node and machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Trusted, newer, complete, and its binary matches the manifest: `update` installs it.
    Ready { target: String, size: u64 },
    /// Trusted, newer and complete, but a newer one is ready (not checked).
    Superseded,
    /// The version installed.
    Installed,
    /// Not newer than what is installed: a downgrade is never installed.
    NotNewer,
    /// Signed by a node not trusted for releases.
    Untrusted,
    /// No binary for this machine.
    NoBinary,
    /// Chunks of this machine's binary still missing.
    Partial {
        target: String,
        have: u32,
        need: u32,
    },
    /// Refused for good: a manifest that breaks the rules, or a binary that does not match it.
    Bad(String),
}

/// A release this node holds, and where it stands.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The manifest bundle's key.
    pub key: [u8; 32],
    /// The release's id (`None` when the manifest does not decode).
    pub id: Option<[u8; 32]>,
    pub version: String,
    pub notes: String,
    pub signer: String,
    pub targets: Vec<String>,
    pub status: Status,
    /// For a ready release: the binary for the machine and its chunk bundles, in order.
    binary: Option<(ReleaseFile, Vec<[u8; 32]>)>,
}

impl Seen {
    /// Why this release is not installed, or that it can be, in words.
    pub fn reason(&self, installed: &Version, machine: &Machine) -> String {
        let v = &self.version;
        match &self.status {
            Status::Ready { target, size } => {
                format!("{v} is ready to install ({target}, {size} bytes)")
            }
            Status::Superseded => format!("{v} is complete, but a newer release is ready"),
            Status::Installed => format!("{v} is the version installed"),
            Status::NotNewer => {
                format!("{v} refused: not newer than the installed {installed} (no downgrades)")
            }
            Status::Untrusted => format!(
                "{v} refused: signed by {}, which this node does not trust for releases \
                 (trust add NODE_ID --release)",
                self.signer
            ),
            Status::NoBinary => format!(
                "{v} has no binary for this machine, {machine} (it has {})",
                self.targets.join(", ")
            ),
            Status::Partial { target, have, need } => {
                format!("{v} is partial: {have} of {need} chunks of the {target} binary are here")
            }
            Status::Bad(why) => format!("{v} refused: {why}"),
        }
    }
}

/// Release chunk bundle keys by (signer, release id, file, index).
type Chunks = HashMap<(String, [u8; 32], u32, u32), [u8; 32]>;

fn chunk_index(node: &Node) -> Result<Chunks, ReleaseError> {
    let mut chunks = Chunks::new();
    for key in node.store.of_kind(KIND_RELEASE_CHUNK)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        if let Ok(c) = ar::decode_chunk(vb.bundle().payload()) {
            chunks.insert((signer, c.release, c.file, c.index), key);
        }
    }
    Ok(chunks)
}

/// The chunk keys of binary `fi` of release `id` signed by `signer`, in order (`None`:
/// not here).
fn chunk_keys(
    chunks: &Chunks,
    signer: &str,
    id: [u8; 32],
    fi: usize,
    f: &ReleaseFile,
) -> Vec<Option<[u8; 32]>> {
    (0..f.chunks())
        .map(|i| chunks.get(&(signer.to_string(), id, fi as u32, i)).copied())
        .collect()
}

/// Stream binary `f` from its chunks into `out`, checking its size and hash. `Ok(false)`:
/// it does not match its manifest.
fn stream_binary(
    node: &Node,
    f: &ReleaseFile,
    keys: &[[u8; 32]],
    out: &mut dyn Write,
) -> Result<bool, ReleaseError> {
    let mut h = blake3::Hasher::new();
    let mut size = 0u64;
    for key in keys {
        let vb = node
            .store
            .get(key)?
            .ok_or_else(|| ReleaseError::Bad("a chunk vanished while reading".into()))?;
        let c = ar::decode_chunk(vb.bundle().payload())
            .map_err(|e| ReleaseError::Bad(e.to_string()))?;
        size += c.data.len() as u64;
        if size > f.size {
            return Ok(false);
        }
        h.update(&c.data);
        out.write_all(&c.data)
            .map_err(|e| ReleaseError::Bad(format!("cannot write the binary: {e}")))?;
    }
    Ok(size == f.size && h.finalize().as_bytes() == &f.hash)
}

/// Whether this node takes releases signed by `signer`: its own, and those of nodes
/// trusted for releases.
fn trusted(node: &Node, signer: &str) -> Result<bool, ReleaseError> {
    Ok(signer == node.node_id().node_id().to_string() || node.store.trusted_for_release(signer)?)
}

/// A held, decoded release manifest with its signer.
struct Held {
    key: [u8; 32],
    signer: String,
    manifest: Result<ReleaseManifest, String>,
}

/// Every release manifest held, newest version first (undecodable ones last).
fn held_manifests(node: &Node) -> Result<Vec<Held>, ReleaseError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for key in node.store.of_kind(KIND_RELEASE)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        let manifest = ar::decode_manifest(vb.bundle().payload())
            .map_err(|e| format!("the manifest does not decode: {e}"))
            .and_then(|m| m.check().map(|()| m));
        // The same manifest from the same signer once (it may be stored twice, created
        // at two times).
        let fp = (
            signer.clone(),
            *blake3::hash(vb.bundle().payload()).as_bytes(),
        );
        if seen.insert(fp) {
            out.push(Held {
                key,
                signer,
                manifest,
            });
        }
    }
    out.sort_by_key(|h| {
        std::cmp::Reverse(
            h.manifest
                .as_ref()
                .ok()
                .and_then(|m| m.parsed_version().ok()),
        )
    });
    Ok(out)
}

/// Every release this node holds and where it stands for `machine` with `installed`,
/// newest first. The newest release that could be installed is checked chunk by chunk
/// against its manifest (a mismatch is [`Status::Bad`], and the next is tried).
pub fn survey(
    node: &Node,
    machine: &Machine,
    installed: &Version,
) -> Result<Vec<Seen>, ReleaseError> {
    let chunks = chunk_index(node)?;
    let mut out = Vec::new();
    let mut ready = false;
    let held = held_manifests(node)?;
    for h in held {
        let m = match h.manifest {
            Ok(m) => m,
            Err(why) => {
                out.push(Seen {
                    key: h.key,
                    id: None,
                    version: "?".into(),
                    notes: String::new(),
                    signer: h.signer,
                    targets: vec![],
                    status: Status::Bad(why),
                    binary: None,
                });
                continue;
            }
        };
        let id = m.id();
        let version = m.parsed_version().map_err(ReleaseError::Bad)?;
        let mut binary = None;
        let status = if !trusted(node, &h.signer)? {
            Status::Untrusted
        } else if version == *installed {
            Status::Installed
        } else if version < *installed {
            Status::NotNewer
        } else if let Some((fi, f)) = m.binary_for(&machine.arch, &machine.os, &machine.libc) {
            let keys = chunk_keys(&chunks, &h.signer, id, fi, f);
            let have = keys.iter().flatten().count() as u32;
            if have < f.chunks() {
                Status::Partial {
                    target: f.target.clone(),
                    have,
                    need: f.chunks(),
                }
            } else if ready {
                Status::Superseded
            } else {
                let keys: Vec<[u8; 32]> = keys.into_iter().flatten().collect();
                if stream_binary(node, f, &keys, &mut std::io::sink())? {
                    ready = true;
                    binary = Some((f.clone(), keys));
                    Status::Ready {
                        target: f.target.clone(),
                        size: f.size,
                    }
                } else {
                    Status::Bad(format!(
                        "the {} binary does not match its manifest (size or hash): tampered \
                         or damaged",
                        f.target
                    ))
                }
            }
        } else {
            Status::NoBinary
        };
        out.push(Seen {
            key: h.key,
            id: Some(id),
            version: m.version.clone(),
            notes: m.notes.clone(),
            signer: h.signer,
            targets: m.files.iter().map(|f| f.target.clone()).collect(),
            status,
            binary,
        });
    }
    Ok(out)
}

/// What the ledger notes of the binary installed at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Installed {
    version: String,
    hash: String,
    previous: Option<(String, String)>,
}

fn installed_key(path: &Path) -> Vec<u8> {
    [INSTALLED_PREFIX, path.as_os_str().as_encoded_bytes()].concat()
}

fn installed_note(node: &Node, path: &Path) -> Result<Option<Installed>, ReleaseError> {
    Ok(node
        .store
        .ledger_get(&installed_key(path))?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

fn write_note(node: &Node, path: &Path, note: &Installed) -> Result<(), ReleaseError> {
    let v = serde_json::to_vec(note).map_err(|e| ReleaseError::Bad(e.to_string()))?;
    node.store
        .commit_ledger(&[(installed_key(path), Some(v))], &[], &[], DtnTime(0))?;
    Ok(())
}

/// The version of the binary at `path`: what the ledger noted when `update` put it there,
/// if the file is still that one; else the running program's.
pub fn installed_version(node: &Node, path: &Path) -> Result<Version, ReleaseError> {
    if let Some(n) = installed_note(node, path)? {
        if path.exists() && hex::encode(hash_file(path)?.0) == n.hash {
            if let Ok(v) = Version::parse(&n.version) {
                return Ok(v);
            }
        }
    }
    Version::parse(RUNNING).map_err(ReleaseError::Bad)
}

/// The binary `update` replaces by default: the running program, links resolved.
pub fn running_binary() -> Result<PathBuf, ReleaseError> {
    let p = std::env::current_exe().map_err(io(Path::new("the running program")))?;
    std::fs::canonicalize(&p).map_err(io(&p))
}

fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    path.with_file_name(name)
}

/// A file in `dir` removed on drop unless kept.
struct TmpFile(PathBuf, bool);
impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn tmp_beside(path: &Path, what: &str) -> TmpFile {
    let mut r = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut r);
    let name = format!(
        ".{}.{what}-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        hex::encode(r)
    );
    TmpFile(path.with_file_name(name), false)
}

/// Make `dst` a copy of `src` in one step (a hard link if the disk allows, else a copy,
/// then a rename over `dst`).
fn keep_copy(src: &Path, dst: &Path) -> Result<(), ReleaseError> {
    let mut tmp = tmp_beside(dst, "keep");
    if std::fs::hard_link(src, &tmp.0).is_err() {
        std::fs::copy(src, &tmp.0).map_err(io(src))?;
        std::fs::File::open(&tmp.0)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp.0))?;
    }
    std::fs::rename(&tmp.0, dst).map_err(io(dst))?;
    tmp.1 = true;
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(d) = path.parent() {
        crate::transport::sync_dir(d);
    }
}

/// What [`update`] installed.
#[derive(Debug, Clone)]
pub struct Updated {
    pub from: Version,
    pub to: String,
    pub target: String,
    pub path: PathBuf,
    pub previous: PathBuf,
    pub signer: String,
}

/// Install the newest ready release ([`survey`]) for `machine` over the binary at `path`:
/// written beside it, checked against the manifest again, made executable; the old binary
/// kept as `<path>.previous`, then the new one renamed over it. Refused, with every
/// release's reason, when none is ready; nothing changes then.
pub fn update(node: &Node, machine: &Machine, path: &Path) -> Result<Updated, ReleaseError> {
    let from = installed_version(node, path)?;
    let seen = survey(node, machine, &from)?;
    let Some(pick) = seen
        .iter()
        .find(|s| matches!(s.status, Status::Ready { .. }))
    else {
        let mut why: Vec<String> = seen.iter().map(|s| s.reason(&from, machine)).collect();
        if why.is_empty() {
            why.push("no release is held here".into());
        }
        return Err(ReleaseError::Refused(format!(
            "nothing to install over {} (installed {from}): {}",
            path.display(),
            why.join("; ")
        )));
    };
    let Some((f, keys)) = &pick.binary else {
        return Err(ReleaseError::Bad(
            "a ready release without its binary".into(),
        ));
    };
    let mut tmp = tmp_beside(path, "new");
    {
        let mut out = std::fs::File::create(&tmp.0).map_err(io(&tmp.0))?;
        if !stream_binary(node, f, keys, &mut out)? {
            return Err(ReleaseError::Refused(format!(
                "{} refused: the {} binary does not match its manifest",
                pick.version, f.target
            )));
        }
        out.sync_all().map_err(io(&tmp.0))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&tmp.0))?;
    }
    // The file must still be what was checked: hash it as it lies on disk.
    if hash_file(&tmp.0)? != (f.hash, f.size) {
        return Err(ReleaseError::Refused(format!(
            "{} refused: the written binary does not match its manifest",
            pick.version
        )));
    }
    let previous = previous_path(path);
    let mut prev_note = None;
    if path.exists() {
        keep_copy(path, &previous)?;
        prev_note = Some((from.to_string(), hex::encode(hash_file(&previous)?.0)));
    }
    std::fs::rename(&tmp.0, path).map_err(io(path))?;
    tmp.1 = true;
    sync_parent(path);
    write_note(
        node,
        path,
        &Installed {
            version: pick.version.clone(),
            hash: hex::encode(f.hash),
            previous: prev_note,
        },
    )?;
    tracing::info!(version = %pick.version, path = %path.display(), "release installed");
    Ok(Updated {
        from,
        to: pick.version.clone(),
        target: f.target.clone(),
        path: path.to_path_buf(),
        previous,
        signer: pick.signer.clone(),
    })
}

/// What [`rollback`] did: the version now at the path (`None`: not known).
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub to: Option<String>,
    pub from: String,
    pub path: PathBuf,
}

/// Put the binary `update` kept as `<path>.previous` back at `path`; the one it replaces
/// becomes the previous one (so a rollback can itself be undone).
pub fn rollback(node: &Node, path: &Path) -> Result<RolledBack, ReleaseError> {
    let previous = previous_path(path);
    if !previous.exists() {
        return Err(ReleaseError::Refused(format!(
            "no previous binary to roll back to: {} does not exist",
            previous.display()
        )));
    }
    let from = installed_version(node, path)?.to_string();
    let note = installed_note(node, path)?;
    let prev_hash = hex::encode(hash_file(&previous)?.0);
    let to = note
        .as_ref()
        .and_then(|n| n.previous.as_ref())
        .filter(|(_, h)| *h == prev_hash)
        .map(|(v, _)| v.clone());
    let cur_hash = hex::encode(hash_file(path)?.0);
    // Swap: current → a temporary copy, previous → path, copy → previous.
    let mut hold = tmp_beside(path, "old");
    keep_copy(path, &hold.0)?;
    std::fs::rename(&previous, path).map_err(io(path))?;
    std::fs::rename(&hold.0, &previous).map_err(io(&previous))?;
    hold.1 = true;
    sync_parent(path);
    write_note(
        node,
        path,
        &Installed {
            version: to.clone().unwrap_or_else(|| RUNNING.to_string()),
            hash: prev_hash,
            previous: Some((from.clone(), cur_hash)),
        },
    )?;
    Ok(RolledBack {
        to,
        from,
        path: path.to_path_buf(),
    })
}

/// The release `update` would install over the running binary, if any, with the version
/// installed: for a daemon to tell its person (it never installs one itself).
pub fn waiting(node: &Node) -> Result<Option<(Seen, Version)>, ReleaseError> {
    let path = running_binary()?;
    let installed = installed_version(node, &path)?;
    Ok(survey(node, &Machine::this(), &installed)?
        .into_iter()
        .find(|s| matches!(s.status, Status::Ready { .. }))
        .map(|s| (s, installed)))
}

/// What [`spread`] wrote.
#[derive(Debug, Clone)]
pub struct Spread {
    pub version: String,
    pub signer: String,
    /// The folder with the binaries, guides and checksums.
    pub dir: PathBuf,
    pub binaries: Vec<(String, u64)>,
    /// Release bundles written to the folder's `mycelium/` for nodes that import it.
    pub bundles: usize,
}

/// The SHA-256 of a file, hex (what `sha256sum` prints, on any machine).
fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Write to `dir` what a person without Mycelium needs to start, from the newest trusted
/// release held here whose binaries are all complete and match their manifest:
/// `mycelium-<version>/` with every binary, `SHA256SUMS`, a guide in English
/// (`README.txt`) and Persian (`README.fa.txt`); and the release's bundles in `mycelium/`,
/// as `export` writes them, so a node that imports the folder learns the release too.
pub fn spread(node: &Node, dir: &Path, now: DtnTime) -> Result<Spread, ReleaseError> {
    let chunks = chunk_index(node)?;
    let held = held_manifests(node)?;
    let mut why = Vec::new();
    for h in held {
        let Ok(m) = &h.manifest else { continue };
        if !trusted(node, &h.signer)? {
            why.push(format!("{} is signed by an untrusted node", m.version));
            continue;
        }
        let id = m.id();
        let keys: Vec<Vec<Option<[u8; 32]>>> = m
            .files
            .iter()
            .enumerate()
            .map(|(fi, f)| chunk_keys(&chunks, &h.signer, id, fi, f))
            .collect();
        if keys.iter().flatten().any(Option::is_none) {
            why.push(format!("{} is partial", m.version));
            continue;
        }
        let out = dir.join(format!("mycelium-{}", m.version));
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        let mut sums = String::new();
        let mut binaries = Vec::new();
        let mut ok = true;
        for (f, keys) in m.files.iter().zip(&keys) {
            let keys: Vec<[u8; 32]> = keys.iter().flatten().copied().collect();
            let name = format!("mycelium-{}", f.target);
            let path = out.join(&name);
            let mut file = std::fs::File::create(&path).map_err(io(&path))?;
            if !stream_binary(node, f, &keys, &mut file)? {
                why.push(format!(
                    "{}: the {} binary does not match",
                    m.version, f.target
                ));
                ok = false;
                break;
            }
            file.sync_all().map_err(io(&path))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&path))?;
            }
            sums.push_str(&format!("{}  {name}\n", sha256_file(&path)?));
            binaries.push((f.target.clone(), f.size));
        }
        if !ok {
            let _ = std::fs::remove_dir_all(&out);
            continue;
        }
        let write = |name: &str, text: &str| -> Result<(), ReleaseError> {
            crate::transport::write_atomic(&out, name, text.as_bytes()).map_err(io(&out))
        };
        write("SHA256SUMS", &sums)?;
        write("README.txt", &guide_en(&m.version, &h.signer, &binaries))?;
        write("README.fa.txt", &guide_fa(&m.version, &h.signer, &binaries))?;
        crate::transport::sync_dir(&out);
        // The release's bundles, for nodes that import the folder.
        let mut only: std::collections::HashSet<[u8; 32]> =
            keys.iter().flatten().flatten().copied().collect();
        only.insert(h.key);
        let bundles = only.len();
        let rep = crate::transport::folder::export(
            node,
            dir,
            &crate::transport::folder::ExportOptions {
                for_node: None,
                max_bytes: None,
                policy: crate::fec::Policy::folder(0.1),
                now,
                have_summary: false,
                node_records: false,
                only: Some(only),
            },
            &indicatif::ProgressBar::hidden(),
        )?;
        if let Some(e) = rep.error {
            return Err(ReleaseError::Bad(format!(
                "the release's bundles could not be written to {}: {e}",
                dir.display()
            )));
        }
        return Ok(Spread {
            version: m.version.clone(),
            signer: h.signer.clone(),
            dir: out,
            binaries,
            bundles,
        });
    }
    if why.is_empty() {
        why.push("no release is held here (mycelium release publish DIST_DIR)".into());
    }
    Err(ReleaseError::Refused(format!(
        "nothing to spread: {}",
        why.join("; ")
    )))
}

fn binaries_list(binaries: &[(String, u64)]) -> String {
    binaries
        .iter()
        .map(|(t, size)| format!("  mycelium-{t}  ({:.1} MB)\n", *size as f64 / 1e6))
        .collect()
}

fn guide_en(version: &str, signer: &str, binaries: &[(String, u64)]) -> String {
    format!(
        "Mycelium {version}
================

Mycelium carries messages, files and payments between people without the internet:
on USB sticks, a satellite feed, or any network that works for a moment. Messages are
sealed: only the person they are for can read them, and couriers cannot see who that is.

Which file is yours
-------------------
{list}  x86_64:  most laptops and desktops (Intel or AMD), even old ones.
  aarch64: Raspberry Pi 3/4/5 with a 64-bit system, and Android phones in Termux.
Each file is the whole program: nothing else to install.

Check that the file is genuine
------------------------------
Compare the file's SHA-256 with the line for it in SHA256SUMS:
  sha256sum -c SHA256SUMS          (Linux, Termux)
Every line must say OK. If one does not, the file was damaged or changed: do not run it.
This release was signed by the node
  {signer}
Ask the person you trust for releases (in person, or by a channel you trust) whether this
is their node ID. Mycelium itself checks every later update against that node's signature.

Start
-----
  chmod +x mycelium-x86_64-unknown-linux-musl      (use your file's name)
  ./mycelium-x86_64-unknown-linux-musl init        (makes your identity; keep it secret)
  ./mycelium-x86_64-unknown-linux-musl id          (your node ID: give it to your contacts)
  ./mycelium-x86_64-unknown-linux-musl import .    (takes in this stick, this release too)
  ./mycelium-x86_64-unknown-linux-musl trust add {signer} --release
  ./mycelium-x86_64-unknown-linux-musl send --to NODE_ID \"hello\"
  ./mycelium-x86_64-unknown-linux-musl --help      (everything else)
Later releases arrive like messages; `mycelium update` installs one only if this node
signed it and it is newer, and `mycelium update --rollback` goes back.
",
        list = binaries_list(binaries)
    )
}

fn guide_fa(version: &str, signer: &str, binaries: &[(String, u64)]) -> String {
    format!(
        "مایسیلیوم (Mycelium) نسخهٔ {version}
================================

مایسیلیوم پیام، فایل و پرداخت را بدون اینترنت میان مردم جابه‌جا می‌کند: با فلش USB، با
پخش ماهواره‌ای، یا با هر شبکه‌ای که لحظه‌ای کار کند. پیام‌ها مُهر و موم‌اند: فقط گیرنده
می‌تواند آن‌ها را بخواند و حامل‌ها نمی‌بینند گیرنده کیست.

کدام فایل مال شماست
-------------------
{list}  x86_64: بیشتر لپ‌تاپ‌ها و رایانه‌های رومیزی (اینتل یا AMD)، حتی قدیمی‌ها.
  aarch64: رزبری‌پای ۳/۴/۵ با سیستم ۶۴ بیتی، و گوشی‌های اندروید در Termux.
هر فایل کل برنامه است: چیز دیگری لازم نیست نصب شود.

بررسی اصل بودن فایل
-------------------
چکیدهٔ SHA-256 فایل را با سطر آن در SHA256SUMS مقایسه کنید:
  sha256sum -c SHA256SUMS          (لینوکس، Termux)
همهٔ سطرها باید OK بگویند. اگر یکی نگفت، فایل خراب یا دستکاری شده است: اجرایش نکنید.
این نسخه را این گره امضا کرده است:
  {signer}
از کسی که برای نسخه‌ها به او اعتماد دارید (حضوری یا از راهی امن) بپرسید که آیا این
شناسهٔ گره اوست. خود مایسیلیوم هر به‌روزرسانی بعدی را با امضای همین گره می‌سنجد.

شروع
----
  chmod +x mycelium-x86_64-unknown-linux-musl      (نام فایل خودتان را بنویسید)
  ./mycelium-x86_64-unknown-linux-musl init        (هویت شما را می‌سازد؛ آن را پنهان نگه دارید)
  ./mycelium-x86_64-unknown-linux-musl id          (شناسهٔ گره شما: آن را به مخاطبانتان بدهید)
  ./mycelium-x86_64-unknown-linux-musl import .    (محتوای این فلش، و همین نسخه، را می‌گیرد)
  ./mycelium-x86_64-unknown-linux-musl trust add {signer} --release
  ./mycelium-x86_64-unknown-linux-musl send --to NODE_ID \"سلام\"
  ./mycelium-x86_64-unknown-linux-musl --help      (همهٔ فرمان‌های دیگر)
نسخه‌های بعدی مثل پیام می‌رسند؛ `mycelium update` فقط نسخه‌ای را نصب می‌کند که همین گره
امضا کرده و تازه‌تر باشد، و `mycelium update --rollback` به نسخهٔ قبلی برمی‌گردد.
",
        list = binaries_list(binaries)
    )
}
