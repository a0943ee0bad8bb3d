//! Golden vectors: fixed keys and timestamps, so every byte is reproducible (Ed25519
//! signatures are deterministic). Shared by `examples/gen_vectors.rs` and the tests.
#![allow(dead_code)]

use mycelium::adu::market::{self as m, Eligibility, JobKind, Limits, Member, Subject, Used};
use mycelium::adu::{self, Adu, FileMessage, MarketAdu, Message};
use mycelium::bundle::{Bundle, BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::identity::Identity;
use mycelium::time::DtnTime;
use serde_json::{json, Value};

/// 2026-01-01T00:00:00Z in DTN milliseconds.
pub const T_2026: DtnTime = DtnTime((1_767_225_600 - 946_684_800) * 1000);
pub const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
pub const DAY_MS: u64 = 24 * 3600 * 1000;

pub fn alice() -> Identity {
    Identity::from_seed([1; 32])
}

/// The marketplace in the marketplace vectors.
pub fn bob() -> Identity {
    Identity::from_seed([2; 32])
}

/// The worker and guild founder in the marketplace vectors.
pub fn carol() -> Identity {
    Identity::from_seed([3; 32])
}

fn node(i: &Identity) -> String {
    i.node_id().to_string()
}

/// The `task` vector's body: a digest job for anyone, three workers, 10 credits each.
pub fn task_body() -> m::Task {
    m::Task {
        job: JobKind::Digest,
        model: [0; 32],
        input: b"hello, mycelium".to_vec(),
        limits: Limits {
            max_tokens: 0,
            max_ms: 10_000,
        },
        reward: 10,
        deadline: T_2026.0 + DAY_MS,
        redundancy: 3,
        who: Eligibility::Anyone,
    }
}

/// The `result` vector's body: carol's answer to the task with ID `task`.
pub fn result_body(task: [u8; 32]) -> m::TaskResult {
    let output = blake3::hash(&task_body().input).as_bytes().to_vec();
    m::TaskResult {
        task,
        worker: node(&carol()),
        output_hash: *blake3::hash(&output).as_bytes(),
        output,
        failed: None,
        used: Used { ms: 3, tokens: 0 },
    }
}

/// The `payment` vector's body: alice pays carol 25 credits for the result `result`.
pub fn payment_body(result: [u8; 32]) -> m::Payment {
    m::Payment {
        payer: node(&alice()),
        payee: node(&carol()),
        amount: 25,
        nonce: std::array::from_fn(|i| i as u8),
        refers: Some(serde_bytes::ByteBuf::from(result.to_vec())),
        memo: "thanks for the digest".into(),
    }
}

/// The `settlement` vector's body: the marketplace refuses the payment with ID `payment`.
pub fn settlement_body(payment: [u8; 32]) -> m::Settlement {
    m::Settlement {
        subject: payment,
        what: Subject::Payment,
        payer: node(&alice()),
        payee: node(&carol()),
        amount: 25,
        accepted: false,
        reason: Some(format!(
            "insufficient funds (a double spend loses here): {} holds 20 credits, the payment is 25",
            node(&alice())
        )),
        seq: 0,
        signer: node(&alice()),
        nonce: Some(serde_bytes::ByteBuf::from(payment_body([0; 32]).nonce.to_vec())),
    }
}

/// The `membership` vector's body: alice consents to the `guild` vector's charter, whose
/// payload hashes to `charter`.
pub fn membership_body(charter: [u8; 32]) -> m::Membership {
    m::Membership {
        guild: m::Guild::id(&node(&carol()), &guild_body().name),
        charter,
    }
}

/// The `guild` vector's body: a charter founded (signed) by carol.
pub fn guild_body() -> m::Guild {
    m::Guild {
        name: "north-coast".into(),
        members: vec![
            Member {
                node: node(&carol()),
                share: 2,
            },
            Member {
                node: node(&alice()),
                share: 1,
            },
        ],
    }
}

/// The kind of the `unknown-kind` vector: never to become a known kind.
pub const UNKNOWN_KIND: &str = "x-future-kind";

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
    // The marketplace vectors: bob is the marketplace, alice submits and pays, carol works.
    let market = to.clone();
    let task = BundleBuilder::new(market.clone(), ts(10), WEEK_MS)
        .payload(m::encode_task(&task_body()))
        .sign(&a)
        .unwrap();
    let result = BundleBuilder::new(market.clone(), ts(11), WEEK_MS)
        .payload(m::encode_result(&result_body(task.id().key())))
        .sign(&carol())
        .unwrap();
    let payment = BundleBuilder::new(market.clone(), ts(12), WEEK_MS)
        .payload(m::encode_payment(&payment_body(result.id().key())))
        .sign(&a)
        .unwrap();
    let payment_id = m::payment_id(payment.bundle().payload());
    let settlement = BundleBuilder::new(a.node_id(), ts(13), WEEK_MS)
        .payload(m::encode_settlement(&settlement_body(payment_id)))
        .sign(&bob())
        .unwrap();
    let guild = BundleBuilder::new(market.clone(), ts(14), WEEK_MS)
        .payload(m::encode_guild(&guild_body()))
        .sign(&carol())
        .unwrap();
    let membership = BundleBuilder::new(market, ts(15), WEEK_MS)
        .payload(m::encode_membership(&membership_body(m::charter_hash(
            guild.bundle().payload(),
        ))))
        .sign(&a)
        .unwrap();
    let v = vec![
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
                    UNKNOWN_KIND,
                    ciborium::Value::Map(vec![("amount".into(), 5.into())]),
                ))
                .sign(&a)
                .unwrap(),
        ),
        (
            "task",
            "a digest task for anyone, redundancy 3, reward 10, submitted to the marketplace (seed [2;32])",
            task,
        ),
        (
            "result",
            "the worker of seed [3;32] answers the task vector",
            result,
        ),
        (
            "payment",
            "25 credits from seed [1;32] to seed [3;32] for the result vector, sent to the marketplace's ledger",
            payment,
        ),
        (
            "settlement",
            "the marketplace refuses the payment vector for insufficient funds",
            settlement,
        ),
        (
            "guild",
            "a guild charter founded by seed [3;32]: itself with share 2, seed [1;32] with share 1",
            guild,
        ),
        (
            "membership",
            "seed [1;32] consents to the guild vector's charter (its payload's blake3)",
            membership,
        ),
    ];
    for (name, _, vb) in &v {
        assert_eq!(
            adu::decode(vb.bundle().payload()).unwrap(),
            expected_adu(name, &v),
            "{name}: the payload does not decode as intended"
        );
    }
    v
}

/// What each vector's payload must decode to (`all` checks it).
fn expected_adu(name: &str, v: &[(&'static str, &'static str, VerifiedBundle)]) -> Adu {
    let key = |n: &str| v.iter().find(|x| x.0 == n).map(|x| x.2.id().key()).unwrap();
    let market = |a: MarketAdu| Adu::Market(Box::new(a));
    match name {
        "text-message" => Adu::Message(Message::Text("salam, hello".into())),
        "file-message" => Adu::Message(Message::File(FileMessage {
            name: "notes.txt".into(),
            media_type: "text/plain".into(),
            data: b"hello\n".to_vec(),
        })),
        "unknown-clock" => Adu::Message(Message::Text("no clock here".into())),
        "unknown-kind" => Adu::Unknown {
            version: 1,
            kind: UNKNOWN_KIND.into(),
        },
        "task" => market(MarketAdu::Task(task_body())),
        "result" => market(MarketAdu::Result(result_body(key("task")))),
        "payment" => market(MarketAdu::Payment(payment_body(key("result")))),
        "settlement" => {
            let p = v.iter().find(|x| x.0 == "payment").unwrap();
            market(MarketAdu::Settlement(settlement_body(m::payment_id(
                p.2.bundle().payload(),
            ))))
        }
        "guild" => market(MarketAdu::Guild(guild_body())),
        "membership" => {
            let g = v.iter().find(|x| x.0 == "guild").unwrap();
            market(MarketAdu::Membership(membership_body(m::charter_hash(
                g.2.bundle().payload(),
            ))))
        }
        other => panic!("no expected ADU for vector {other}"),
    }
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
