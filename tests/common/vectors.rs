//! Golden vectors: fixed keys and timestamps, so every byte is reproducible (Ed25519
//! signatures are deterministic). Shared by `examples/gen_vectors.rs` and the tests.
#![allow(dead_code)]

use mycelium::adu::{self, FileMessage, Message};
use mycelium::bundle::{Bundle, BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::time::DtnTime;
use serde_json::{json, Value};

/// 2026-01-01T00:00:00Z in DTN milliseconds.
pub const T_2026: DtnTime = DtnTime((1_767_225_600 - 946_684_800) * 1000);
pub const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

pub fn alice() -> Identity {
    Identity::from_seed([1; 32])
}

pub fn bob() -> Identity {
    Identity::from_seed([2; 32])
}

fn envelope(kind: &str, body: ciborium::Value) -> Vec<u8> {
    let v = ciborium::Value::Map(vec![
        ("v".into(), 1.into()),
        ("kind".into(), kind.into()),
        ("body".into(), body),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).unwrap();
    out
}

/// `(name, description, bundle)` for every vector.
pub fn all() -> Vec<(&'static str, &'static str, VerifiedBundle)> {
    let a = alice();
    let to = bob().node_id();
    let ts = |seq| CreationTimestamp { time: T_2026, seq };
    vec![
        (
            "text-message",
            "a text message from seed [1;32] to the node of seed [2;32]",
            BundleBuilder::new(to.clone(), ts(0), WEEK_MS)
                .payload(adu::encode_message(&Message::Text("salam, hello".into())))
                .sign(&a)
                .unwrap(),
        ),
        (
            "file-message",
            "a small file message",
            BundleBuilder::new(to.clone(), ts(1), WEEK_MS)
                .payload(adu::encode_message(&Message::File(FileMessage {
                    name: "notes.txt".into(),
                    media_type: "text/plain".into(),
                    data: b"hello\n".to_vec(),
                })))
                .sign(&a)
                .unwrap(),
        ),
        (
            "unknown-clock",
            "creation time 0 (clock unknown) with a bundle age block of 1500 ms",
            BundleBuilder::new(
                to.clone(),
                CreationTimestamp {
                    time: DtnTime(0),
                    seq: 5,
                },
                WEEK_MS,
            )
            .age_ms(1500)
            .payload(adu::encode_message(&Message::Text("no clock here".into())))
            .sign(&a)
            .unwrap(),
        ),
        (
            "unknown-kind",
            "a kind this version does not understand; stored and forwarded untouched",
            BundleBuilder::new(to, ts(2), WEEK_MS)
                .payload(envelope(
                    "payment",
                    ciborium::Value::Map(vec![("amount".into(), 5.into())]),
                ))
                .sign(&a)
                .unwrap(),
        ),
    ]
}

/// The JSON twin of a vector: every field, block data in hex.
pub fn twin(name: &str, description: &str, b: &Bundle) -> Value {
    let p = &b.primary;
    json!({
        "name": name,
        "description": description,
        "bundle_id": b.id().hex(),
        "primary": {
            "version": 7,
            "flags": p.flags,
            "crc_type": p.crc.code(),
            "destination": p.destination.to_string(),
            "source": p.source.to_string(),
            "report_to": p.report_to.to_string(),
            "creation_timestamp": [p.created.time.0, p.created.seq],
            "lifetime_ms": p.lifetime_ms,
        },
        "blocks": b.blocks.iter().map(|bl| json!({
            "type": bl.block_type,
            "number": bl.number,
            "flags": bl.flags,
            "crc_type": bl.crc.code(),
            "data_hex": hex::encode(&bl.data),
        })).collect::<Vec<_>>(),
    })
}
