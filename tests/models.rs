//! Models that arrive as bundles from others, as `model list` (and a worker) puts them
//! together: every manifest counts on its own, with its own signer's chunks; one bad model
//! never keeps another from being put together; a manifest's files must fit its format;
//! whatever already lies in the registry never blocks a model for good. Real homes (real
//! RocksDB), real folders, the real binary; small stand-in model files (assembly checks
//! hashes and file lists, not that the weights run).

use mycelium::adu::model::{self as am, Blob, ModelFile, ModelManifest};
use mycelium::bundle::VerifiedBundle;
use mycelium::node::Node;
use mycelium::time::DtnTime;
use mycelium::worker::models::{self, MODEL_LIFETIME_MS};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::market::carry;

/// `mycelium --home HOME --json model list`: its JSON output; fails the test (with the
/// command's stderr) if the command fails.
fn model_list(home: &Path) -> Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mycelium"))
        .arg("--home")
        .arg(home)
        .args(["--json", "model", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `field` of each entry of `v[list]`, as text.
fn each(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x[field].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A manifest for `files` (name, contents), as `publish` writes one.
fn manifest(name: &str, format: &str, files: &[(&str, &[u8])]) -> ModelManifest {
    ModelManifest {
        name: name.into(),
        format: format.into(),
        files: files
            .iter()
            .map(|(n, d)| ModelFile {
                name: (*n).into(),
                size: d.len() as u64,
                hash: *blake3::hash(d).as_bytes(),
            })
            .collect(),
    }
}

/// `signer` stores `m` for everyone, with one chunk per file carrying `data` (small files).
fn ship(signer: &Node, m: &ModelManifest, data: &[&[u8]], now: DtnTime) {
    let mut out = vec![(None, am::encode_manifest(m), MODEL_LIFETIME_MS)];
    for (i, d) in data.iter().enumerate() {
        let blob = Blob {
            model: m.hash(),
            file: i as u32,
            index: 0,
            data: d.to_vec(),
        };
        out.push((None, am::encode_blob(&blob), MODEL_LIFETIME_MS));
    }
    let c = signer.compose(&out, now, false).unwrap();
    signer
        .store
        .commit_ledger(&[], &c.bundles, &c.private, now)
        .unwrap();
}

/// A stand-in GGUF model held and published by `n`: (its hash as hex, its file).
fn publish_gguf(n: &Node, dir: &Path, file: &str, body: &[u8], now: DtnTime) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join(file);
    std::fs::write(&src, body).unwrap();
    let held = models::add(&n.home, &src, Some(file)).unwrap();
    models::publish(n, &held, now).unwrap();
    hex::encode(held.hash)
}

/// Names in `home`'s registry starting with `.` (temporary or set-aside folders).
fn leftovers(home: &Path) -> Vec<String> {
    std::fs::read_dir(models::models_dir(home))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn homes(t: &Path, names: &[&str]) -> Vec<(PathBuf, Node)> {
    names
        .iter()
        .map(|n| {
            let h = t.join(n);
            let node = Node::init(&h).unwrap();
            (h, node)
        })
        .collect()
}

#[test]
fn a_manifest_re_signed_by_another_key_never_hides_the_real_one() {
    let t = tempfile::tempdir().unwrap();
    let mut hs = homes(t.path(), &["a", "b", "c"]);
    let (_, c) = hs.pop().unwrap();
    let (bh, b) = hs.pop().unwrap();
    let (_, a) = hs.pop().unwrap();
    let now = DtnTime::now();
    let hash = publish_gguf(&a, &t.path().join("src"), "tiny.gguf", b"GGUF tiny", now);
    let real = a.store.of_kind(am::KIND_MODEL).unwrap()[0];
    let payload = a
        .store
        .get(&real)
        .unwrap()
        .unwrap()
        .bundle()
        .payload()
        .to_vec();
    // C signs the very same manifest (same model hash), its bundle chosen to sort first.
    // Keys are hashes: n tries miss with probability 1/(n + 1) (512 missed once in CI),
    // and the search stops at the first hit (two tries on average).
    let forged: VerifiedBundle = (0..1u64 << 20)
        .find_map(|i| {
            let mut f = c
                .compose(
                    &[(None, payload.clone(), MODEL_LIFETIME_MS)],
                    DtnTime(now.0 + i),
                    false,
                )
                .unwrap();
            (f.travelling[0] < real).then(|| f.bundles.remove(0))
        })
        .expect("a bundle key below the real manifest's");
    b.receive(forged.raw(), now).unwrap();
    b.receive(&a.store.get_raw(&real).unwrap().unwrap(), now)
        .unwrap();
    assert_eq!(
        b.store.of_kind(am::KIND_MODEL).unwrap(),
        vec![forged.id().key(), real],
        "the forged manifest comes first"
    );
    drop(b);
    // Both manifests wait, each for its own signer's chunks.
    let v = model_list(&bh);
    assert_eq!(
        each(&v, "arriving", "hash"),
        vec![hash.clone(), hash.clone()]
    );
    let mut signers = each(&v, "arriving", "signer");
    signers.sort();
    let mut want = vec![a.node_id().to_string(), c.node_id().to_string()];
    want.sort();
    assert_eq!(signers, want);
    // The real chunks arrive: the real model is put together.
    let b = Node::open(&bh).unwrap();
    carry(&a, &b, now);
    drop(b);
    let v = model_list(&bh);
    assert_eq!(each(&v, "held", "hash"), vec![hash.clone()]);
    assert!(each(&v, "arriving", "hash").is_empty(), "{v}");
    assert!(each(&v, "failed", "hash").is_empty(), "{v}");
}

#[test]
fn one_manifest_with_a_wrong_chunk_fails_alone_and_is_not_rebuilt_every_run() {
    let t = tempfile::tempdir().unwrap();
    let mut hs = homes(t.path(), &["a", "b"]);
    let (bh, b) = hs.pop().unwrap();
    let (_, a) = hs.pop().unwrap();
    let now = DtnTime::now();
    let good = publish_gguf(&a, &t.path().join("src"), "good.gguf", b"GGUF good", now);
    // A manifest whose only chunk is not the file it names (same size, other bytes).
    let bad = manifest("bad", "gguf", &[("bad.gguf", b"GGUF real weights")]);
    ship(&a, &bad, &[b"GGUF fake weights"], now);
    carry(&a, &b, now);
    drop(b);
    for run in 0..2 {
        let v = model_list(&bh);
        assert_eq!(
            each(&v, "held", "hash"),
            vec![good.clone()],
            "run {run}: {v}"
        );
        assert_eq!(
            each(&v, "failed", "hash"),
            vec![hex::encode(bad.hash())],
            "run {run}: {v}"
        );
        let why = each(&v, "failed", "reason").join("");
        assert!(why.contains("bad.gguf does not match"), "{why}");
        assert!(leftovers(&bh).is_empty(), "{:?}", leftovers(&bh));
        assert!(!models::models_dir(&bh)
            .join(hex::encode(bad.hash()))
            .exists());
    }
    // The failure is remembered (one note for the one bad manifest), not redone each run.
    let b = Node::open(&bh).unwrap();
    assert_eq!(b.store.ledger_scan(b"mfail/").unwrap().len(), 1);
}

#[test]
fn a_manifest_whose_files_do_not_fit_its_format_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mut hs = homes(t.path(), &["a", "b"]);
    let (bh, b) = hs.pop().unwrap();
    let (_, a) = hs.pop().unwrap();
    let now = DtnTime::now();
    let good = publish_gguf(&a, &t.path().join("src"), "good.gguf", b"GGUF good", now);
    // A bert model without config.json, its chunks all present and matching.
    let files: [(&str, &[u8]); 2] = [("model.safetensors", b"weights"), ("tokenizer.json", b"{}")];
    let bert = manifest("no-config", "bert", &files);
    ship(&a, &bert, &[files[0].1, files[1].1], now);
    carry(&a, &b, now);
    drop(b);
    for run in 0..2 {
        let v = model_list(&bh);
        assert_eq!(
            each(&v, "held", "hash"),
            vec![good.clone()],
            "run {run}: {v}"
        );
        assert_eq!(each(&v, "failed", "hash"), vec![hex::encode(bert.hash())]);
        let why = each(&v, "failed", "reason").join("");
        assert!(why.contains("missing config.json"), "{why}");
        assert!(!models::models_dir(&bh)
            .join(hex::encode(bert.hash()))
            .exists());
        assert!(leftovers(&bh).is_empty(), "{:?}", leftovers(&bh));
    }
}

#[test]
fn what_already_lies_in_the_registry_never_blocks_a_model() {
    let t = tempfile::tempdir().unwrap();
    let mut hs = homes(t.path(), &["a", "b", "c"]);
    let (ch, c) = hs.pop().unwrap();
    let (bh, b) = hs.pop().unwrap();
    let (_, a) = hs.pop().unwrap();
    let now = DtnTime::now();
    let good = publish_gguf(&a, &t.path().join("src"), "good.gguf", b"GGUF good", now);
    // B's registry: junk where the model goes, a temporary folder left by a crash, and an
    // empty folder named like a model.
    let root = models::models_dir(&bh);
    std::fs::create_dir_all(root.join(&good)).unwrap();
    std::fs::write(root.join(&good).join("junk"), b"not the model").unwrap();
    std::fs::create_dir_all(root.join(".tmp-0011223344556677")).unwrap();
    std::fs::write(root.join(".tmp-0011223344556677/x"), b"half").unwrap();
    std::fs::create_dir_all(root.join(hex::encode([7u8; 32]))).unwrap();
    carry(&a, &b, now);
    drop(b);
    let v = model_list(&bh);
    assert_eq!(each(&v, "held", "hash"), vec![good.clone()], "{v}");
    assert!(leftovers(&bh).is_empty(), "{:?}", leftovers(&bh));
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&good, &mut hash).unwrap();
    let held = models::find(&bh, &hash).unwrap().unwrap();
    assert!(!held.dir.join("junk").exists());
    // `model add` over a folder that is not the model replaces it too.
    std::fs::create_dir_all(models::models_dir(&ch).join(&good)).unwrap();
    std::fs::write(models::models_dir(&ch).join(&good).join("junk"), b"x").unwrap();
    models::add(&c.home, &t.path().join("src/good.gguf"), None).unwrap();
    assert!(models::find(&ch, &hash).unwrap().is_some());
}
