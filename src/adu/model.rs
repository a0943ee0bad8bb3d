//! Models as bundles: a `model` manifest (name, format, files with sizes and blake3
//! hashes) and `blob` chunks of the files, at most [`CHUNK`] bytes each, so a model can
//! ride a feed or a stick like any bundle (and be sharded on the way). The model's hash,
//! what a task names, is blake3 over its files in name order, each as name ‖ 0 ‖
//! blake3(contents) ([`model_hash`]); a manifest is checked against it and every file
//! against its own hash when the chunks are put together. A manifest's file names are
//! plain names listed once ([`check_names`]) and its files fit its format
//! ([`check_format`]): this is checked before anything is written.
//!
//! Owns: model manifest and chunk shapes, and the file rules of each model format. Pure:
//! no I/O.

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

    /// Structural rules: names are plain file names, listed once, sizes bounded, and the
    /// files are what the format needs ([`check_format`]).
    pub fn check(&self) -> Result<(), String> {
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        check_names(&names)?;
        for f in &self.files {
            if f.size > MAX_FILE_BYTES {
                return Err(format!("file {:?} is too large", f.name));
            }
        }
        check_format(&self.format, &names)
    }
}

/// The files a BERT model needs.
pub const BERT_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// A model's file names: 1 to [`MAX_FILES`], each a plain file name (1 to 128 bytes, no
/// path separator, no NUL, not starting with `.`, so neither `.` nor `..`), no two alike
/// even ignoring ASCII case (one would overwrite the other on a case-blind disk).
pub fn check_names(names: &[&str]) -> Result<(), String> {
    if names.is_empty() || names.len() > MAX_FILES {
        return Err(format!("a model has 1 to {MAX_FILES} files"));
    }
    let mut seen = std::collections::HashSet::new();
    for n in names {
        let plain = !n.is_empty()
            && n.len() <= 128
            && !n.starts_with('.')
            && !n.contains(['/', '\\', '\0']);
        if !plain {
            return Err(format!("bad file name {n:?}"));
        }
        if !seen.insert(n.to_ascii_lowercase()) {
            return Err(format!("file {n:?} listed twice"));
        }
    }
    Ok(())
}

/// That `names` are the files of a `format` model: a `"gguf"` model has exactly one
/// `.gguf` file; a `"bert"` one has all of [`BERT_FILES`] and no `.gguf` file.
pub fn check_format(format: &str, names: &[&str]) -> Result<(), String> {
    let ggufs = names.iter().filter(|n| n.ends_with(".gguf")).count();
    match format {
        "gguf" if ggufs != 1 => Err(format!(
            "a gguf model has exactly one .gguf file, this one {ggufs}"
        )),
        "bert" if ggufs != 0 => Err("a bert model has no .gguf file".into()),
        "bert" => {
            let missing: Vec<&str> = BERT_FILES
                .iter()
                .filter(|b| !names.contains(b))
                .copied()
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "a bert model needs {}; missing {}",
                    BERT_FILES.join(", "),
                    missing.join(", ")
                ))
            }
        }
        "gguf" => Ok(()),
        other => Err(format!("unknown model format {other:?}")),
    }
}

/// The format a model's files make ([`check_format`]).
pub fn format_of(names: &[&str]) -> Result<&'static str, String> {
    ["gguf", "bert"]
        .into_iter()
        .find(|f| check_format(f, names).is_ok())
        .ok_or_else(|| {
            format!(
                "not a model: expected one .gguf file, or {} and no .gguf file",
                BERT_FILES.join(", ")
            )
        })
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
            format: "gguf".into(),
            files: vec![f("b.gguf", 2), f("a", 1)],
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
        bad.files[0].name = "A".into();
        assert!(bad.check().is_err(), "listed twice, ignoring case");
        for n in ["", ".", "..", ".hidden", "a\\b", "a\0b"] {
            bad.files[0].name = n.into();
            assert!(bad.check().is_err(), "{n:?}");
        }
        assert_eq!(decode_manifest(&encode_manifest(&a)).unwrap(), a);
        assert_eq!(f("x", 0).chunks(), 1);
        let big = ModelFile {
            name: "w".into(),
            size: CHUNK as u64 * 2 + 1,
            hash: [0; 32],
        };
        assert_eq!(big.chunks(), 3);
    }

    #[test]
    fn a_manifest_file_list_must_fit_its_format() {
        let m = |format: &str, names: &[&str]| ModelManifest {
            name: "m".into(),
            format: format.into(),
            files: names
                .iter()
                .map(|n| ModelFile {
                    name: (*n).into(),
                    size: 1,
                    hash: [1; 32],
                })
                .collect(),
        };
        let bert = [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
        ];
        m("bert", &bert).check().unwrap();
        let e = m("bert", &bert[1..]).check().unwrap_err();
        assert!(e.contains("missing config.json"), "{e}");
        assert!(m(
            "bert",
            &[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "x.gguf"
            ]
        )
        .check()
        .is_err());
        m("gguf", &["x.gguf"]).check().unwrap();
        m("gguf", &["x.gguf", "README"]).check().unwrap();
        assert!(m("gguf", &["x.gguf", "y.gguf"]).check().is_err());
        assert!(m("gguf", &bert).check().is_err());
        assert!(m("onnx", &["x.gguf"]).check().is_err());
        assert_eq!(format_of(&bert), Ok("bert"));
        assert_eq!(format_of(&["x.gguf"]), Ok("gguf"));
        assert!(format_of(&["x.gguf", "y.gguf"]).is_err());
    }
}
