//! Models as bundles: a `model` manifest (name, format, files with sizes and blake3
//! hashes) and `blob` chunks of the files, at most [`CHUNK`] bytes each, so a model can
//! ride a feed or a stick like any bundle (and be sharded on the way). The model's hash,
//! what a task names, is blake3 over its files in name order, each as name ‖ 0 ‖
//! blake3(contents) ([`model_hash`]); a manifest is checked against it and every file
//! against its own hash when the chunks are put together.
//!
//! Owns: model manifest and chunk shapes. Pure: no I/O.

use serde::{Deserialize, Serialize};

pub const KIND_MODEL: &str = "model";
pub const KIND_BLOB: &str = "blob";
/// Largest chunk of a model file carried in one bundle.
pub const CHUNK: usize = 4 << 20;
/// Most files in a model, and largest model file.
pub const MAX_FILES: usize = 64;
pub const MAX_FILE_BYTES: u64 = 64 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
}

impl ModelFile {
    /// How many chunks carry this file (an empty file still has one, empty).
    pub fn chunks(&self) -> u32 {
        (self.size.div_ceil(CHUNK as u64)).max(1) as u32
    }
}

/// A model: its files, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    /// "bert" or "gguf".
    pub format: String,
    pub files: Vec<ModelFile>,
}

/// One chunk of one file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// The model's hash.
    #[serde(with = "serde_bytes")]
    pub model: [u8; 32],
    /// Index of the file in the manifest.
    pub file: u32,
    /// Index of the chunk in the file.
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The model hash of files given as (name, blake3 of contents), in any order.
pub fn model_hash(files: &[(String, [u8; 32])]) -> [u8; 32] {
    let mut v: Vec<&(String, [u8; 32])> = files.iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = blake3::Hasher::new();
    for (name, hash) in v {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(hash);
    }
    *h.finalize().as_bytes()
}

impl ModelManifest {
    pub fn hash(&self) -> [u8; 32] {
        let files: Vec<(String, [u8; 32])> = self
            .files
            .iter()
            .map(|f| (f.name.clone(), f.hash))
            .collect();
        model_hash(&files)
    }

    /// Structural rules: names are plain file names, listed once, sizes bounded.
    pub fn check(&self) -> Result<(), String> {
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return Err(format!("a model has 1 to {MAX_FILES} files"));
        }
        if !matches!(self.format.as_str(), "bert" | "gguf") {
            return Err(format!("unknown model format {:?}", self.format));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            let plain = !f.name.is_empty()
                && f.name.len() <= 128
                && !f.name.starts_with('.')
                && !f.name.contains(['/', '\\', '\0']);
            if !plain {
                return Err(format!("bad file name {:?}", f.name));
            }
            if !seen.insert(&f.name) {
                return Err(format!("file {:?} listed twice", f.name));
            }
            if f.size > MAX_FILE_BYTES {
                return Err(format!("file {:?} is too large", f.name));
            }
        }
        Ok(())
    }
}

pub fn encode_manifest(m: &ModelManifest) -> Vec<u8> {
    super::encode_kind(KIND_MODEL, m)
}
pub fn decode_manifest(p: &[u8]) -> Result<ModelManifest, super::AduError> {
    super::decode_kind(p, KIND_MODEL)
}
pub fn encode_blob(b: &Blob) -> Vec<u8> {
    super::encode_kind(KIND_BLOB, b)
}
pub fn decode_blob(p: &[u8]) -> Result<Blob, super::AduError> {
    super::decode_kind(p, KIND_BLOB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_hash_is_order_free_and_names_are_checked() {
        let f = |n: &str, b: u8| ModelFile {
            name: n.into(),
            size: 5,
            hash: [b; 32],
        };
        let a = ModelManifest {
            name: "m".into(),
            format: "bert".into(),
            files: vec![f("b", 2), f("a", 1)],
        };
        let mut b = a.clone();
        b.files.reverse();
        assert_eq!(a.hash(), b.hash());
        a.check().unwrap();
        let mut bad = a.clone();
        bad.files[0].name = "../etc/passwd".into();
        assert!(bad.check().is_err());
        bad.files[0].name = "a".into();
        assert!(bad.check().is_err(), "listed twice");
        assert_eq!(decode_manifest(&encode_manifest(&a)).unwrap(), a);
        assert_eq!(f("x", 0).chunks(), 1);
        let big = ModelFile {
            name: "w".into(),
            size: CHUNK as u64 * 2 + 1,
            hash: [0; 32],
        };
        assert_eq!(big.chunks(), 3);
    }
}
