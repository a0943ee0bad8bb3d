//! Models this node holds, by hash. A model is a file (a GGUF) or a folder of files (a
//! BERT: `config.json`, `model.safetensors`, `tokenizer.json`, ...). Its hash is blake3
//! over its files in name order, each as name ‖ 0 ‖ blake3(contents): the same files give
//! the same hash anywhere. `model add` copies a model into `<home>/models/<hash>/` (a
//! temporary folder renamed into place, so a half-copied model is never used); a worker
//! runs a task only if it holds the model the task names, and checks the files' hashes
//! again when it loads them.
//!
//! Owns: the local model registry.

use crate::adu::model::{self as am, model_hash, Blob, ModelFile, ModelManifest};
use crate::bundle::Eid;
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

fn format_of(files: &[(String, u64)]) -> Result<Format, ModelError> {
    let has = |n: &str| files.iter().any(|(f, _)| f == n);
    if files.iter().any(|(f, _)| f.ends_with(".gguf")) {
        Ok(Format::Gguf)
    } else if has("config.json") && has("model.safetensors") && has("tokenizer.json") {
        Ok(Format::Bert)
    } else {
        Err(ModelError::Bad(
            "not a model: expected a .gguf file, or a folder with config.json, model.safetensors and tokenizer.json".into(),
        ))
    }
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
    let format = format_of(&files)?;
    let root = models_dir(home);
    let dir = root.join(hex::encode(hash));
    let name = name
        .map(str::to_string)
        .or_else(|| src.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    if !dir.exists() {
        let tmp = root.join(format!(".tmp-{}", hex::encode(&hash[..8])));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for p in files_of(src)? {
            let to = tmp.join(p.file_name().unwrap_or_default());
            std::fs::copy(&p, &to).map_err(io(&p))?;
        }
        std::fs::write(tmp.join(".name"), &name).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    }
    Ok(Held {
        hash,
        dir,
        format,
        name,
        files,
    })
}

/// The models this home holds (folders whose name is a hash).
pub fn list(home: &Path) -> Result<Vec<Held>, ModelError> {
    let root = models_dir(home);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in rd {
        let dir = e.map_err(io(&root))?.path();
        let Some(hash) = dir
            .file_name()
            .and_then(|n| hex::decode(n.to_string_lossy().as_bytes()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        else {
            continue;
        };
        let mut files = Vec::new();
        for p in files_of(&dir)? {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if n.starts_with('.') {
                continue;
            }
            files.push((n, std::fs::metadata(&p).map_err(io(&p))?.len()));
        }
        let Ok(format) = format_of(&files) else {
            continue;
        };
        let name = std::fs::read_to_string(dir.join(".name")).unwrap_or_default();
        out.push(Held {
            hash,
            dir,
            format,
            name,
            files,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
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
    let mut n = 0;
    let mut store = |payloads: Vec<Vec<u8>>| -> Result<(), ModelError> {
        let out: Vec<(Option<Eid>, Vec<u8>, u64)> = payloads
            .into_iter()
            .map(|p| (None, p, MODEL_LIFETIME_MS))
            .collect();
        let c = node.compose(&out, now, false)?;
        node.store.commit_ledger(&[], &c.bundles, &c.private, now)?;
        n += out.len();
        Ok(())
    };
    store(vec![am::encode_manifest(&manifest)])?;
    for (fi, f) in manifest.files.iter().enumerate() {
        let path = held.dir.join(&f.name);
        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
        let mut batch = Vec::new();
        for index in 0..f.chunks() {
            let mut data = vec![
                0u8;
                am::CHUNK.min(
                    f.size.saturating_sub(u64::from(index) * am::CHUNK as u64) as usize
                )
            ];
            file.read_exact(&mut data).map_err(io(&path))?;
            batch.push(am::encode_blob(&Blob {
                model: held.hash,
                file: fi as u32,
                index,
                data,
            }));
            // Commit a few chunks at a time: memory stays bounded for large models.
            if batch.len() == 4 {
                store(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            store(batch)?;
        }
    }
    Ok(n)
}

/// A model whose manifest this node has but whose chunks are not all here yet.
#[derive(Debug, Clone)]
pub struct Incomplete {
    pub hash: [u8; 32],
    pub name: String,
    pub have: usize,
    pub need: usize,
}

/// Put together every model whose manifest and chunks have all arrived (by sync, stick
/// or feed) and that this node does not hold yet: each file is written to a temporary
/// folder, checked against its hash, and the folder renamed into the registry. Returns
/// the models added and those still incomplete.
pub fn assemble(node: &Node) -> Result<(Vec<Held>, Vec<Incomplete>), ModelError> {
    let held: std::collections::HashSet<[u8; 32]> =
        list(&node.home)?.into_iter().map(|h| h.hash).collect();
    // Each manifest with its signer: chunks count only when signed by the same node, so
    // nobody can spoil a model by sending chunks of their own under its hash.
    let mut manifests: Vec<ModelManifest> = Vec::new();
    let mut signers: Vec<String> = Vec::new();
    for key in node.store.of_kind(am::KIND_MODEL)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        let Ok(m) = am::decode_manifest(vb.bundle().payload()) else {
            continue;
        };
        if m.check().is_ok()
            && !held.contains(&m.hash())
            && !manifests
                .iter()
                .any(|x: &ModelManifest| x.hash() == m.hash())
        {
            manifests.push(m);
            signers.push(signer);
        }
    }
    if manifests.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // Chunk bundles by (model, file, index).
    type At = (String, [u8; 32], u32, u32);
    let mut chunks: std::collections::HashMap<At, [u8; 32]> = Default::default();
    for key in node.store.of_kind(am::KIND_BLOB)? {
        let Some(vb) = node.store.get(&key)? else {
            continue;
        };
        let signer = vb.bundle().primary.source.node_id().to_string();
        if let Ok(b) = am::decode_blob(vb.bundle().payload()) {
            chunks.insert((signer, b.model, b.file, b.index), key);
        }
    }
    let mut added = Vec::new();
    let mut waiting = Vec::new();
    for (m, signer) in manifests.into_iter().zip(signers) {
        let hash = m.hash();
        let need: usize = m.files.iter().map(|f| f.chunks() as usize).sum();
        let have = m
            .files
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                (0..f.chunks())
                    .filter(|i| chunks.contains_key(&(signer.clone(), hash, fi as u32, *i)))
                    .count()
            })
            .sum::<usize>();
        if have < need {
            waiting.push(Incomplete {
                hash,
                name: m.name.clone(),
                have,
                need,
            });
            continue;
        }
        let root = models_dir(&node.home);
        let tmp = root.join(format!(".tmp-{}", hex::encode(&hash[..8])));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for (fi, f) in m.files.iter().enumerate() {
            let path = tmp.join(&f.name);
            let mut out = std::fs::File::create(&path).map_err(io(&path))?;
            let mut h = blake3::Hasher::new();
            let mut size = 0u64;
            for i in 0..f.chunks() {
                let key = chunks[&(signer.clone(), hash, fi as u32, i)];
                let vb = node
                    .store
                    .get(&key)?
                    .ok_or_else(|| ModelError::Bad("a chunk vanished while reading".into()))?;
                let b = am::decode_blob(vb.bundle().payload())
                    .map_err(|e| ModelError::Bad(e.to_string()))?;
                h.update(&b.data);
                size += b.data.len() as u64;
                std::io::Write::write_all(&mut out, &b.data).map_err(io(&path))?;
            }
            out.sync_all().map_err(io(&path))?;
            if size != f.size || h.finalize().as_bytes() != &f.hash {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(ModelError::Bad(format!(
                    "model {}: file {} does not match its manifest (size or hash)",
                    hex::encode(hash),
                    f.name
                )));
            }
        }
        std::fs::write(tmp.join(".name"), &m.name).map_err(io(&tmp))?;
        let dir = root.join(hex::encode(hash));
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        if let Some(h) = list(&node.home)?.into_iter().find(|h| h.hash == hash) {
            added.push(h);
        }
    }
    Ok((added, waiting))
}
