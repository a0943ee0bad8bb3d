//! Golden vectors in `bundles/vectors/`: byte-exact reproduction from fixed keys, exact
//! round trip through our codec, signature verification, and decoding by the independent
//! `bp7` crate.

mod common;
use common::vectors;
use mycelium::bundle::{Bundle, VerifiedBundle};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bundles/vectors")
}

#[test]
fn committed_vectors_match_regenerated_bytes_and_twins() {
    for (name, desc, vb) in vectors::all() {
        let cbor = std::fs::read(dir().join(format!("{name}.cbor")))
            .unwrap_or_else(|e| panic!("{name}.cbor: {e} (run `cargo run --example gen_vectors`)"));
        assert_eq!(
            cbor,
            vb.raw(),
            "{name}.cbor differs from what the code writes"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(
            json,
            vectors::twin(name, desc, vb.bundle()),
            "{name}.json twin"
        );
    }
}

#[test]
fn every_vector_round_trips_byte_exact_and_verifies() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("cbor") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let b = Bundle::decode(&bytes).unwrap();
        assert_eq!(b.encode(), bytes, "{}", path.display());
        VerifiedBundle::decode(&bytes).unwrap();
        n += 1;
    }
    assert!(n >= 9, "expected at least 9 vectors, found {n}");
}

#[test]
fn bp7_decodes_every_vector_and_agrees_on_fields() {
    for (name, _, vb) in vectors::all() {
        let theirs = bp7::Bundle::try_from(vb.raw())
            .unwrap_or_else(|e| panic!("bp7 cannot decode {name}: {e:?}"));
        theirs
            .validate()
            .unwrap_or_else(|e| panic!("bp7 rejects {name}: {e:?}"));
        let ours = vb.bundle();
        assert_eq!(
            theirs.primary.source.to_string(),
            ours.primary.source.to_string()
        );
        assert_eq!(
            theirs.primary.destination.to_string(),
            ours.primary.destination.to_string()
        );
        assert_eq!(
            theirs.primary.creation_timestamp.dtntime(),
            ours.primary.created.time.0
        );
        assert_eq!(
            theirs.primary.creation_timestamp.seqno(),
            ours.primary.created.seq
        );
        assert_eq!(
            theirs.primary.lifetime.as_millis() as u64,
            ours.primary.lifetime_ms
        );
        assert_eq!(theirs.payload().map(|p| p.as_slice()), Some(ours.payload()));
        assert_eq!(theirs.canonicals.len(), ours.blocks.len());
    }
}

/// Sealing keys from node IDs agree with vectors made by an independent implementation
/// (`bundles/vectors/node_id_keys.py`: OpenSSL's X25519 and the birational map by hand).
#[test]
fn sealing_keys_from_node_ids_match_independent_vectors() {
    use mycelium::bundle::Eid;
    use mycelium::identity::{seal_key_for_node_id, Identity};
    let text = std::fs::read_to_string(dir().join("node-id-keys.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = v.as_array().unwrap();
    assert!(list.len() >= 4);
    let hex32 = |k: &str, e: &serde_json::Value| -> [u8; 32] {
        hex::decode(e[k].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    for e in list {
        let id = Identity::from_seed(hex32("seed", e));
        assert_eq!(id.public_key(), hex32("ed25519_public", e));
        assert_eq!(id.node_id().to_string(), e["node_id"].as_str().unwrap());
        let xpk = hex32("x25519_public", e);
        assert_eq!(id.seal_key().public(), xpk, "{}", e["name"]);
        let node = Eid::parse(e["node_id"].as_str().unwrap()).unwrap();
        assert_eq!(seal_key_for_node_id(&node).unwrap(), xpk, "{}", e["name"]);
        // the secret, clamped, is the same scalar
        let sk = mycelium::seal::SealKey::from_bytes(hex32("x25519_secret", e));
        assert_eq!(sk.public(), xpk);
        // the key published before (2026-11) is a different one, still held
        assert_ne!(id.legacy_seal_key().public(), xpk);
    }
    assert!(seal_key_for_node_id(&Eid::parse("dtn://relay/").unwrap()).is_err());
}
