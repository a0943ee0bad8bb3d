//! Models this node holds, by hash. A model is a file (a GGUF) or a folder of files (a
//! BERT: `config.json`, `model.safetensors`, `tokenizer.json`, ...). Its hash is blake3
//! over its files in name order, each as name ‖ 0 ‖ blake3(contents): the same files give
//! the same hash anywhere. `model add` copies a model into `<home>/models/<hash>/` (a
//! temporary folder renamed into place, so a half-copied model is never used); a worker
//! runs a task only if it holds the model the task names, and checks the files' hashes
//! again when it loads them.
//!
//! Models that arrive as bundles ([`assemble`]) are put together one manifest at a time:
//! each manifest with the chunks its own signer signed, so a copy of a manifest re-signed
//! by someone else never hides the real one; a manifest that fails (its files do not fit
//! its format, a chunk does not match) is reported with the reason and fails alone, and
//! one whose complete chunks did not match is remembered (`mfail/<manifest key>` in the
//! ledger, with a fingerprint of the chunks used) so it is not rebuilt on every run.
//! A folder already at a model's place that is not that model is replaced; leftover
//! temporary folders are removed.
//!
//! Owns: the local model registry and the `mfail/` ledger entries.

use crate::adu::model::{self as am, model_hash, Blob, ModelFile, ModelManifest};
use crate::node::Node;
use crate::time::DtnTime;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A model's files: (name, size in bytes), in name order.
pub type Files = Vec<(String, u64)>;

/// What kind of model a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A BERT sentence-embedding model (safetensors): runs `embed`.
    Bert,
    /// A llama-family GGUF: runs `generate`.
    Gguf,
}

/// A model this node holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub hash: [u8; 32],
    pub dir: PathBuf,
    pub format: Format,
    pub name: String,
    pub files: Files,
}

impl Held {
    /// The GGUF file of a `Gguf` model.
    pub fn gguf(&self) -> Option<PathBuf> {
        self.files
            .iter()
            .find(|(n, _)| n.ends_with(".gguf"))
            .map(|(n, _)| self.dir.join(n))
    }
}

/// blake3 of one file, streamed.
pub fn file_hash(path: &Path) -> Result<[u8; 32], ModelError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

/// The model files of `src` (a file, or the regular files directly in a folder), sorted.
fn files_of(src: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let meta = std::fs::metadata(src).map_err(io(src))?;
    if meta.is_file() {
        return Ok(vec![src.to_path_buf()]);
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let p = e.map_err(io(src))?.path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if p.is_file() && !hidden {
            v.push(p);
        }
    }
    v.sort();
    if v.is_empty() {
        return Err(ModelError::Bad(format!("{} holds no files", src.display())));
    }
    Ok(v)
}

/// The model hash of a file or folder, and its files (name, size).
pub fn hash_model(src: &Path) -> Result<([u8; 32], Files), ModelError> {
    let mut hashes = Vec::new();
    let mut files = Vec::new();
    for p in files_of(src)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hashes.push((name.clone(), file_hash(&p)?));
        files.push((name, std::fs::metadata(&p).map_err(io(&p))?.len()));
    }
    Ok((model_hash(&hashes), files))
}

fn names(files: &[(String, u64)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// The format of a model's files, by the rules a manifest follows ([`am::format_of`]).
fn format_of(files: &[(String, u64)]) -> Result<Format, ModelError> {
    match am::format_of(&names(files)).map_err(ModelError::Bad)? {
        "bert" => Ok(Format::Bert),
        _ => Ok(Format::Gguf),
    }
}

/// Folders a half-done write leaves in the registry: removed before each assembly.
const TMP: &str = ".tmp-";
const OLD: &str = ".old-";

/// Remove a file or folder, if there.
fn remove_any(p: &Path) {
    if std::fs::remove_dir_all(p).is_err() {
        let _ = std::fs::remove_file(p);
    }
}

/// A temporary folder in the registry for one model, removed on drop (a failed write
/// leaves nothing behind; after a successful rename there is nothing left to remove).
struct Tmp(PathBuf);

impl Tmp {
    fn new(root: &Path, hash: &[u8; 32]) -> Result<Tmp, ModelError> {
        let p = root.join(format!("{TMP}{}", hex::encode(&hash[..8])));
        remove_any(&p);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(Tmp(p))
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        remove_any(&self.0);
    }
}

/// Whether `dir` holds exactly the model `hash` (its visible files hash to it).
fn holds(dir: &Path, hash: &[u8; 32]) -> bool {
    dir.is_dir() && hash_model(dir).is_ok_and(|(h, _)| h == *hash)
}

/// Put a finished temporary folder at `dir`. Whatever is there already (the caller found
/// it is not this model) is moved aside first and removed after.
fn install(tmp: Tmp, dir: &Path) -> Result<(), ModelError> {
    let old = dir.with_file_name(format!(
        "{OLD}{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let there = std::fs::symlink_metadata(dir).is_ok();
    if there {
        remove_any(&old);
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp.0, dir).map_err(io(dir))?;
    if there {
        remove_any(&old);
    }
    Ok(())
}

/// Where `scripts/fetch-models.sh` puts the reference models: `$MYCELIUM_MODELS`, else
/// `~/.cache/mycelium/models`.
pub fn fetched_dir() -> PathBuf {
    match std::env::var_os("MYCELIUM_MODELS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/mycelium/models"),
    }
}

/// Where a home keeps its models.
pub fn models_dir(home: &Path) -> PathBuf {
    home.join("models")
}

/// Copy a model into the home's registry; returns what is held (already held: unchanged).
pub fn add(home: &Path, src: &Path, name: Option<&str>) -> Result<Held, ModelError> {
    let (hash, files) = hash_model(src)?;
    am::check_names(&names(&files)).map_err(ModelError::Bad)?;
    let format = format_of(&files)?;
    let root = models_dir(home);
    let dir = root.join(hex::encode(hash));
    let name = name
        .map(str::to_string)
        .or_else(|| src.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    if !holds(&dir, &hash) {
        let tmp = Tmp::new(&root, &hash)?;
        for p in files_of(src)? {
            let to = tmp.0.join(p.file_name().unwrap_or_default());
            std::fs::copy(&p, &to).map_err(io(&p))?;
        }
        std::fs::write(tmp.0.join(".name"), &name).map_err(io(&tmp.0))?;
        install(tmp, &dir)?;
    }
    Ok(Held {
        hash,
        dir,
        format,
        name,
        files,
    })
}

/// The models this home holds (folders whose name is a hash and whose files make a
/// model). A folder that cannot be read or is not a model is left out: it never hides
/// the others.
pub fn list(home: &Path) -> Result<Vec<Held>, ModelError> {
    let root = models_dir(home);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let dir = e.path();
        let Some(hash) = dir
            .file_name()
            .and_then(|n| hex::decode(n.to_string_lossy().as_bytes()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        else {
            continue;
        };
        if let Ok(h) = held_in(dir, hash) {
            out.push(h);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The model in `dir` (its files listed, not hashed).
fn held_in(dir: PathBuf, hash: [u8; 32]) -> Result<Held, ModelError> {
    let mut files = Vec::new();
    for p in files_of(&dir)? {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((n, std::fs::metadata(&p).map_err(io(&p))?.len()));
    }
    let format = format_of(&files)?;
    let name = std::fs::read_to_string(dir.join(".name")).unwrap_or_default();
    Ok(Held {
        hash,
        dir,
        format,
        name,
        files,
    })
}

/// The held model with this hash, its files checked against the hash.
pub fn find(home: &Path, hash: &[u8; 32]) -> Result<Option<Held>, ModelError> {
    let Some(h) = list(home)?.into_iter().find(|h| h.hash == *hash) else {
        return Ok(None);
    };
    // Hash the files as they are now (hidden files such as .name excluded).
    let mut hashes = Vec::new();
    for (n, _) in &h.files {
        hashes.push((n.clone(), file_hash(&h.dir.join(n))?));
    }
    if model_hash(&hashes) != *hash {
        return Err(ModelError::Bad(format!(
            "model {} in {} no longer matches its hash (files changed or damaged)",
            hex::encode(hash),
            h.dir.display()
        )));
    }
    Ok(Some(h))
}

/// How long model bundles live: a year.
pub const MODEL_LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;

/// Store a held model as bundles for everyone (a manifest and its chunks), so it travels
/// by sync, stick or feed. Returns how many bundles were stored.
pub fn publish(node: &Node, held: &Held, now: DtnTime) -> Result<usize, ModelError> {
    let mut files = Vec::new();
    for (name, size) in &held.files {
        files.push(ModelFile {
            name: name.clone(),
            size: *size,
            hash: file_hash(&held.dir.join(name))?,
        });
    }
    let manifest = ModelManifest {
        name: held.name.clone(),
        format: match held.format {
            Format::Bert => "bert".into(),
            Format::Gguf => "gguf".into(),
        },
        files,
    };
    manifest.check().map_err(ModelError::Bad)?;
    let mut n =
        node.store_for_everyone(vec![am::encode_manifest(&manifest)], MODEL_LIFETIME_MS, now)?;
    for (fi, f) in manifest.files.iter().enumerate() {
        let path = held.dir.join(&f.name);
        n += node.store_file_chunks(
            &path,
            f.size,
            am::CHUNK,
            MODEL_LIFETIME_MS,
            now,
            |index, data| {
                am::encode_blob(&Blob {
                    model: held.hash,
                    file: fi as u32,
                    index,
                    data,
                })
            },
        )?;
    }
    Ok(n)
}

/// A model whose manifest this node has but whose chunks (signed by the manifest's
/// signer) are not all here yet.
#[derive(Debug, Clone)]
pub struct Incomplete {
    pub hash: [u8; 32],
    pub name: String,
    /// Who signed the manifest.
    pub signer: String,
    pub have: usize,
    pub need: usize,
}

/// A manifest whose model could not be put together, and why.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The manifest bundle's key.
    pub manifest: [u8; 32],
    /// The model's hash (`None` when the manifest does not decode).
    pub hash: Option<[u8; 32]>,
    pub name: String,
    /// Who signed the manifest.
    pub signer: String,
    pub reason: String,
}

/// What [`assemble`] did: models added, still arriving, and manifests that failed.
#[derive(Debug, Default)]
pub struct Assembly {
    pub added: Vec<Held>,
    pub waiting: Vec<Incomplete>,
    pub failed: Vec<Failed>,
}

/// Ledger prefix of the manifests whose complete chunks did not match: `mfail/<manifest
/// key>` → fingerprint of the chunk bundles used (32 bytes) ‖ the reason.
pub const FAILED_PREFIX: &[u8] = b"mfail/";

fn failed_key(manifest: &[u8; 32]) -> Vec<u8> {
    [FAILED_PREFIX, manifest.as_slice()].concat()
}

/// Why one model could not be put together: for good (these chunks will never make it),
/// or for now (a disk or store error).
enum Spoilt {
    ForGood(String),
    ForNow(String),
}

impl From<ModelError> for Spoilt {
    fn from(e: ModelError) -> Spoilt {
        Spoilt::ForNow(e.to_string())
    }
}

impl From<crate::store::StoreError> for Spoilt {
    fn from(e: crate::store::StoreError) -> Spoilt {
        Spoilt::ForNow(e.to_string())
    }
}

/// Chunk bundle keys by (signer, model, file, index).
type Chunks = std::collections::HashMap<(String, [u8; 32], u32, u32), [u8; 32]>;

/// Write the files of `m` from its signer's chunks into a temporary folder, check each
/// against its size and hash, and rename the folder to the model's place.
fn put_together(
    node: &Node,
    m: &ModelManifest,
    hash: [u8; 32],
    signer: &str,
    chunks: &Chunks,
) -> Result<Held, Spoilt> {
    let root = models_dir(&node.home);
    let dir = root.join(hex::encode(hash));
    let tmp = Tmp::new(&root, &hash)?;
    let spoilt = |f: &ModelFile| {
        Spoilt::ForGood(format!(
            "file {} does not match its manifest (size or hash)",
            f.name
        ))
    };
    for (fi, f) in m.files.iter().enumerate() {
        let path = tmp.0.join(&f.name);
        let mut out = std::fs::File::create(&path).map_err(io(&path))?;
        let mut h = blake3::Hasher::new();
        let mut size = 0u64;
        for i in 0..f.chunks() {
            let key = chunks
                .get(&(signer.to_string(), hash, fi as u32, i))
                .ok_or_else(|| Spoilt::ForNow("a chunk vanished while reading".into()))?;
            let vb = node
                .store
                .get(key)?
                .ok_or_else(|| Spoilt::ForNow("a chunk vanished while reading".into()))?;
            let b = am::decode_blob(vb.bundle().payload())
                .map_err(|e| Spoilt::ForNow(e.to_string()))?;
            size += b.data.len() as u64;
            if size > f.size {
                return Err(spoilt(f));
            }
            h.update(&b.data);
            std::io::Write::write_all(&mut out, &b.data).map_err(io(&path))?;
        }
        out.sync_all().map_err(io(&path))?;
        if size != f.size || h.finalize().as_bytes() != &f.hash {
            return Err(spoilt(f));
        }
    }
    std::fs::write(tmp.0.join(".name"), &m.name).map_err(io(&tmp.0))?;
    install(tmp, &dir)?;
    Ok(held_in(dir, hash)?)
}

/// Put together every model whose manifest and chunks have all arrived (by sync, stick
/// or feed) and that this node does not hold yet. Each manifest counts on its own, with
/// the chunks its own signer signed: copies of a manifest signed by others never hide it,
/// and a manifest that fails (does not decode, files that do not fit its format, a chunk
/// that does not match) is reported in [`Assembly::failed`] while the others go on. Errors
/// only when the store cannot be read.
pub fn assemble(node: &Node) -> Result<Assembly, ModelError> {
    let root = models_dir(&node.home);
    // Leftovers of a write cut short (a crash, an older version): never a model.
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(TMP) || n.starts_with(OLD) {
                remove_any(&e.path());
            }
        }
    }
    let mut held: std::collections::HashSet<[u8; 32]> =
        list(&node.home)?.into_iter().map(|h| h.hash).collect();
    let mut out = Assembly::default();
    // Each manifest with its signer and key; the same manifest from the same signer once.
    let mut manifests: Vec<([u8; 32], String, ModelManifest)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for key in node.store.of_kind(am::KIND_MODEL)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        let mut fail = |hash, name: &str, reason: String| {
            out.failed.push(Failed {
                manifest: key,
                hash,
                name: name.to_string(),
                signer: signer.clone(),
                reason,
            })
        };
        let m = match am::decode_manifest(vb.bundle().payload()) {
            Ok(m) => m,
            Err(e) => {
                fail(None, "", format!("the manifest does not decode: {e}"));
                continue;
            }
        };
        let hash = m.hash();
        if held.contains(&hash) {
            continue;
        }
        if let Err(e) = m.check() {
            fail(Some(hash), &m.name, e);
            continue;
        }
        if seen.insert((
            signer.clone(),
            *blake3::hash(vb.bundle().payload()).as_bytes(),
        )) {
            manifests.push((key, signer, m));
        }
    }
    let mut kv: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut remembered = std::collections::HashSet::new();
    if !manifests.is_empty() {
        // Chunk bundles by (signer, model, file, index).
        let mut chunks = Chunks::default();
        for key in node.store.of_kind(am::KIND_BLOB)? {
            let Some(vb) = node.store.get(&key)? else {
                continue;
            };
            let signer = vb.bundle().primary.source.node_id().to_string();
            if let Ok(b) = am::decode_blob(vb.bundle().payload()) {
                chunks.insert((signer, b.model, b.file, b.index), key);
            }
        }
        for (key, signer, m) in manifests {
            let hash = m.hash();
            if held.contains(&hash) {
                continue; // put together from another signer's manifest this run
            }
            // The chunk bundles this manifest would use, in order (`None`: not here).
            let used: Vec<Option<&[u8; 32]>> = m
                .files
                .iter()
                .enumerate()
                .flat_map(|(fi, f)| {
                    let (signer, chunks) = (&signer, &chunks);
                    (0..f.chunks()).map(move |i| chunks.get(&(signer.clone(), hash, fi as u32, i)))
                })
                .collect();
            let have = used.iter().flatten().count();
            if have < used.len() {
                out.waiting.push(Incomplete {
                    hash,
                    name: m.name.clone(),
                    signer,
                    have,
                    need: used.len(),
                });
                continue;
            }
            let mut fp = blake3::Hasher::new();
            fp.update(&key);
            for k in used.iter().flatten() {
                fp.update(k.as_slice());
            }
            let fp = *fp.finalize().as_bytes();
            let fail = |reason: String| Failed {
                manifest: key,
                hash: Some(hash),
                name: m.name.clone(),
                signer: signer.clone(),
                reason,
            };
            // The same chunks failed before: they would fail again.
            if let Some(note) = node.store.ledger_get(&failed_key(&key))? {
                if note.get(..32) == Some(fp.as_slice()) {
                    remembered.insert(key);
                    out.failed
                        .push(fail(String::from_utf8_lossy(&note[32..]).into_owned()));
                    continue;
                }
            }
            let dir = root.join(hex::encode(hash));
            let done = if holds(&dir, &hash) {
                held_in(dir, hash).map_err(Spoilt::from)
            } else {
                put_together(node, &m, hash, &signer, &chunks)
            };
            match done {
                Ok(h) => {
                    held.insert(hash);
                    out.added.push(h);
                }
                Err(Spoilt::ForGood(reason)) => {
                    remembered.insert(key);
                    kv.push((
                        failed_key(&key),
                        Some([fp.as_slice(), reason.as_bytes()].concat()),
                    ));
                    out.failed.push(fail(reason));
                }
                Err(Spoilt::ForNow(reason)) => out.failed.push(fail(reason)),
            }
        }
    }
    // A model held now, from any manifest, is neither arriving nor failed.
    out.waiting.retain(|w| !held.contains(&w.hash));
    out.failed
        .retain(|f| f.hash.is_none_or(|h| !held.contains(&h)));
    // Notes of manifests gone or no longer failing are dropped: at most one per manifest
    // bundle still stored.
    for (k, _) in node.store.ledger_scan(FAILED_PREFIX)? {
        let keep =
            <[u8; 32]>::try_from(&k[FAILED_PREFIX.len()..]).is_ok_and(|m| remembered.contains(&m));
        if !keep {
            kv.push((k, None));
        }
    }
    if !kv.is_empty() {
        node.store.commit_ledger(&kv, &[], &[], DtnTime(0))?;
    }
    Ok(out)
}
