//! Application data units: the versioned CBOR envelope carried in a bundle's payload block,
//! and the kinds this node understands: `message`, `receipt`, `node`, and the marketplace's
//! kinds in [`market`].
//!
//! Envelope (CDDL in `bundles/README.md`): `{ "v": 1, "kind": tstr, "body": any }`.
//! Unknown kinds and newer versions decode to [`Adu::Unknown`]: the bundle is still stored
//! and forwarded byte for byte. Unknown *fields* in a known kind are an error, never dropped.
//!
//! Owns: payload semantics. Pure: no I/O.

use serde::{Deserialize, Serialize};

pub mod market;
pub mod model;
pub mod release;

/// The envelope version this code writes and fully understands.
pub const ENVELOPE_VERSION: u64 = 1;
pub const KIND_MESSAGE: &str = "message";
pub const KIND_RECEIPT: &str = "receipt";
pub const KIND_RECEIPTS: &str = "receipts";
/// Bundles one `receipts` body may acknowledge.
pub const MAX_RECEIPT_ENTRIES: usize = 4096;
pub const KIND_NODE: &str = "node";

#[derive(Debug, thiserror::Error)]
pub enum AduError {
    #[error("payload is not a Mycelium envelope: {0}")]
    NotAnEnvelope(String),
    #[error("malformed {kind} body: {reason}")]
    BadBody { kind: String, reason: String },
}

/// A message: text, or a file with a name and media type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Message {
    #[serde(rename = "text")]
    Text(String),
    #[serde(rename = "file")]
    File(FileMessage),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMessage {
    pub name: String,
    pub media_type: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A delivery receipt: the destination of bundle `bundle` (its store key) says it
/// arrived at `at`. Signed, as every bundle, by its source: the original's destination.
/// Nodes that see it stop carrying the original until `expires` (the original's expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    #[serde(with = "serde_bytes")]
    pub bundle: [u8; 32],
    /// The original's creation time (DTN ms), so every node orders the key alike.
    pub created: u64,
    /// When the original expires (DTN ms): the receipt is useless after that.
    pub expires: u64,
    /// When it was delivered (DTN ms, 0 if the destination had no clock).
    pub at: u64,
}

/// Receipts in bulk: the destination of every bundle listed says they arrived by `at`.
/// Signed, as every bundle, by that destination. Nodes that see it stop carrying the
/// listed bundles until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipts {
    /// Store keys of the delivered bundles, 32 bytes each, concatenated (1 to
    /// [`MAX_RECEIPT_ENTRIES`] of them).
    #[serde(with = "serde_bytes")]
    pub bundles: Vec<u8>,
    /// The latest expiry among them (DTN ms): the receipt is useless after that.
    pub expires: u64,
    /// When they were delivered (DTN ms, 0 if the destination had no clock).
    pub at: u64,
}

impl Receipts {
    /// The acknowledged keys.
    pub fn keys(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.bundles
            .chunks_exact(32)
            .filter_map(|c| <[u8; 32]>::try_from(c).ok())
    }

    pub fn len(&self) -> usize {
        self.bundles.len() / 32
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

/// A node record: what a node publishes about itself, signed (as every bundle) by the
/// node. Today: its X25519 key, so others can seal bundles for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    #[serde(with = "serde_bytes")]
    pub x25519: [u8; 32],
}

/// What a payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adu {
    Message(Message),
    Receipt(Receipt),
    Receipts(Receipts),
    Node(NodeRecord),
    /// One of the marketplace's kinds.
    Market(Box<MarketAdu>),
    /// A kind or version this node does not understand: kept as is.
    Unknown {
        version: u64,
        kind: String,
    },
}

impl Adu {
    pub fn kind(&self) -> &str {
        match self {
            Adu::Message(_) => KIND_MESSAGE,
            Adu::Receipt(_) => KIND_RECEIPT,
            Adu::Receipts(_) => KIND_RECEIPTS,
            Adu::Node(_) => KIND_NODE,
            Adu::Market(m) => m.kind(),
            Adu::Unknown { kind, .. } => kind,
        }
    }
}

/// The marketplace's payloads (see [`market`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketAdu {
    Task(market::Task),
    Result(market::TaskResult),
    Payment(market::Payment),
    Settlement(market::Settlement),
    Offer(market::Offer),
    Assignment(market::Assignment),
    Verdict(market::Verdict),
    Reputation(market::Reputation),
    Guild(market::Guild),
    Membership(market::Membership),
}

impl MarketAdu {
    pub fn kind(&self) -> &'static str {
        use market::*;
        match self {
            MarketAdu::Task(_) => KIND_TASK,
            MarketAdu::Result(_) => KIND_RESULT,
            MarketAdu::Payment(_) => KIND_PAYMENT,
            MarketAdu::Settlement(_) => KIND_SETTLEMENT,
            MarketAdu::Offer(_) => KIND_OFFER,
            MarketAdu::Assignment(_) => KIND_ASSIGNMENT,
            MarketAdu::Verdict(_) => KIND_VERDICT,
            MarketAdu::Reputation(_) => KIND_REPUTATION,
            MarketAdu::Guild(_) => KIND_GUILD,
            MarketAdu::Membership(_) => KIND_MEMBERSHIP,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<B> {
    v: u64,
    kind: String,
    body: B,
}

/// Encode a message as a payload.
pub fn encode_message(m: &Message) -> Vec<u8> {
    encode(KIND_MESSAGE, m)
}

/// Encode a delivery receipt as a payload.
pub fn encode_receipt(r: &Receipt) -> Vec<u8> {
    encode(KIND_RECEIPT, r)
}

/// Encode receipts in bulk as a payload.
pub fn encode_receipts(r: &Receipts) -> Vec<u8> {
    encode(KIND_RECEIPTS, r)
}

/// Encode any body under `kind` (for kinds defined outside this module).
pub fn encode_kind<B: Serialize>(kind: &str, body: &B) -> Vec<u8> {
    encode(kind, body)
}

/// Decode a payload that must be a version-1 envelope of `kind` with body type `B`.
pub fn decode_kind<B: serde::de::DeserializeOwned>(
    payload: &[u8],
    kind: &str,
) -> Result<B, AduError> {
    let mut rest = payload;
    let env: Envelope<ciborium::Value> =
        ciborium::from_reader(&mut rest).map_err(|e| AduError::NotAnEnvelope(e.to_string()))?;
    if !rest.is_empty() {
        return Err(AduError::NotAnEnvelope(format!(
            "{} bytes after the envelope",
            rest.len()
        )));
    }
    if env.v != ENVELOPE_VERSION || env.kind != kind {
        return Err(AduError::NotAnEnvelope(format!(
            "expected a v{ENVELOPE_VERSION} {kind:?} envelope, found v{} {:?}",
            env.v, env.kind
        )));
    }
    body(&env)
}

/// The body of a version-1 envelope as `B`, or `BadBody` naming the kind.
fn body<B: serde::de::DeserializeOwned>(env: &Envelope<ciborium::Value>) -> Result<B, AduError> {
    env.body.deserialized().map_err(|e| AduError::BadBody {
        kind: env.kind.clone(),
        reason: e.to_string(),
    })
}

fn encode<B: Serialize>(kind: &str, body: &B) -> Vec<u8> {
    let mut out = Vec::new();
    // Serialising plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(
        &Envelope {
            v: ENVELOPE_VERSION,
            kind: kind.to_string(),
            body,
        },
        &mut out,
    );
    out
}

/// Decode a payload's envelope and, for kinds we know, its body.
pub fn decode(payload: &[u8]) -> Result<Adu, AduError> {
    let mut rest = payload;
    let value: ciborium::Value =
        ciborium::from_reader(&mut rest).map_err(|e| AduError::NotAnEnvelope(e.to_string()))?;
    if !rest.is_empty() {
        return Err(AduError::NotAnEnvelope(format!(
            "{} bytes after the envelope",
            rest.len()
        )));
    }
    let field = |name: &str| {
        value.as_map().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
        })
    };
    let version = field("v")
        .and_then(|v| v.as_integer())
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| AduError::NotAnEnvelope("no version field \"v\"".into()))?;
    let kind = field("kind")
        .and_then(|k| k.as_text())
        .ok_or_else(|| AduError::NotAnEnvelope("no \"kind\" field".into()))?
        .to_string();
    if version != ENVELOPE_VERSION {
        // A newer envelope may have fields we do not know: keep it whole.
        return Ok(Adu::Unknown { version, kind });
    }
    let env: Envelope<ciborium::Value> = value
        .deserialized()
        .map_err(|e| AduError::NotAnEnvelope(e.to_string()))?;
    match env.kind.as_str() {
        KIND_MESSAGE => Ok(Adu::Message(body(&env)?)),
        KIND_NODE => Ok(Adu::Node(body(&env)?)),
        KIND_RECEIPT => Ok(Adu::Receipt(body(&env)?)),
        KIND_RECEIPTS => {
            let r: Receipts = body(&env)?;
            let n = r.bundles.len();
            if n == 0 || !n.is_multiple_of(32) || n > MAX_RECEIPT_ENTRIES * 32 {
                return Err(AduError::BadBody {
                    kind: env.kind.clone(),
                    reason: format!(
                        "lists {n} bytes of keys, not 1 to {MAX_RECEIPT_ENTRIES} keys of 32 bytes"
                    ),
                });
            }
            Ok(Adu::Receipts(r))
        }
        k => {
            use market::*;
            let m = match k {
                KIND_TASK => MarketAdu::Task(body(&env)?),
                KIND_RESULT => MarketAdu::Result(body(&env)?),
                KIND_PAYMENT => MarketAdu::Payment(body(&env)?),
                KIND_SETTLEMENT => MarketAdu::Settlement(body(&env)?),
                KIND_OFFER => MarketAdu::Offer(body(&env)?),
                KIND_ASSIGNMENT => MarketAdu::Assignment(body(&env)?),
                KIND_VERDICT => MarketAdu::Verdict(body(&env)?),
                KIND_REPUTATION => MarketAdu::Reputation(body(&env)?),
                KIND_GUILD => MarketAdu::Guild(body(&env)?),
                KIND_MEMBERSHIP => MarketAdu::Membership(body(&env)?),
                _ => {
                    return Ok(Adu::Unknown {
                        version: env.v,
                        kind: env.kind,
                    })
                }
            };
            Ok(Adu::Market(Box::new(m)))
        }
    }
}

/// The `kind` word at the head of an envelope encoded as [`encode`] writes it (a map of
/// `v`, `kind`, `body`, in that order), read without decoding the body; `None` for any
/// other encoding. Says nothing about the body: [`decode`] judges that.
pub fn peek_kind(payload: &[u8]) -> Option<&str> {
    let mut r = crate::bundle::cbor::Reader::new(payload);
    head(&mut r).map(|(_, k)| k)
}

/// A reader at the body of a version-1 `kind` envelope encoded as [`encode`] writes it;
/// `None` for any other kind, version or encoding (then [`decode_kind`] decides).
pub fn body_reader<'a>(payload: &'a [u8], kind: &str) -> Option<crate::bundle::cbor::Reader<'a>> {
    let mut r = crate::bundle::cbor::Reader::new(payload);
    let (v, k) = head(&mut r)?;
    (v == ENVELOPE_VERSION && k == kind).then_some(r)
}

fn head<'a>(r: &mut crate::bundle::cbor::Reader<'a>) -> Option<(u64, &'a str)> {
    (r.header().ok()? == ciborium_ll::Header::Map(Some(3))).then_some(())?;
    (r.text().ok()? == "v").then_some(())?;
    let v = r.uint().ok()?;
    (r.text().ok()? == "kind").then_some(())?;
    let kind = r.text().ok()?;
    (r.text().ok()? == "body").then_some(())?;
    Some((v, kind))
}

/// [`kind_label`]'s answer for a version-1 envelope as [`encode`] writes it whose body is
/// well-formed CBOR of plain items (what [`decode`] reads, whole, as a value, so that it
/// answers with this kind, good body or bad): found by walking the body, not decoding it,
/// so a megabyte payload is not copied. `None`: let [`decode`] decide.
fn label_in_place(payload: &[u8]) -> Option<&str> {
    let mut r = crate::bundle::cbor::Reader::new(payload);
    let (v, kind) = head(&mut r)?;
    (v == ENVELOPE_VERSION).then_some(())?;
    plain_item(&mut r, 0)?;
    r.finish().ok()?;
    Some(kind)
}

/// Skip one well-formed item of definite lengths, integers, strings, arrays, maps and
/// true/false/null; `None` at anything else (tags, floats, deep nesting), left to serde.
fn plain_item(r: &mut crate::bundle::cbor::Reader<'_>, depth: usize) -> Option<()> {
    use ciborium_ll::Header;
    if depth > 16 {
        return None;
    }
    match r.header().ok()? {
        Header::Positive(_) | Header::Negative(_) | Header::Simple(20..=22) => Some(()),
        Header::Bytes(Some(n)) => {
            r.advance(n);
            Some(())
        }
        Header::Text(Some(n)) => {
            let at = r.pos();
            r.advance(n);
            std::str::from_utf8(r.slice(at, r.pos())).ok().map(drop)
        }
        Header::Array(Some(n)) => (0..n).try_for_each(|_| plain_item(r, depth + 1)),
        Header::Map(Some(n)) => (0..2 * n).try_for_each(|_| plain_item(r, depth + 1)),
        _ => None,
    }
}

/// A short label for indexes: the kind, or `opaque` when the payload is no envelope.
/// Labels are short printable words (they become index keys); anything else is `opaque`.
pub fn kind_label(payload: &[u8]) -> String {
    match label_in_place(payload) {
        Some(kind) => printable(kind.to_string()),
        None => label_by_decoding(payload),
    }
}

/// [`kind_label`] by decoding the whole payload.
fn label_by_decoding(payload: &[u8]) -> String {
    match decode(payload) {
        Ok(a) => printable(a.kind().to_string()),
        Err(AduError::BadBody { kind, .. }) => printable(kind),
        Err(_) => "opaque".to_string(),
    }
}

/// `kind` if it is a short printable word, else `opaque`.
fn printable(kind: String) -> String {
    let ok = !kind.is_empty()
        && kind.len() <= 32
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        kind
    } else {
        "opaque".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips() {
        for m in [
            Message::Text("salam".into()),
            Message::File(FileMessage {
                name: "a.txt".into(),
                media_type: "text/plain".into(),
                data: vec![1, 2, 3],
            }),
        ] {
            let p = encode_message(&m);
            assert_eq!(decode(&p).unwrap(), Adu::Message(m));
        }
    }

    #[test]
    fn receipt_round_trips_and_rejects_short_keys() {
        let r = Receipt {
            bundle: [7; 32],
            created: 1,
            expires: 99,
            at: 5,
        };
        assert_eq!(decode(&encode_receipt(&r)).unwrap(), Adu::Receipt(r));
        #[derive(Serialize)]
        struct Short {
            #[serde(with = "serde_bytes")]
            bundle: Vec<u8>,
            created: u64,
            expires: u64,
            at: u64,
        }
        let p = encode(
            KIND_RECEIPT,
            &Short {
                bundle: vec![1; 31],
                created: 0,
                expires: 1,
                at: 1,
            },
        );
        assert!(matches!(decode(&p), Err(AduError::BadBody { .. })));
    }

    #[test]
    fn unknown_kind_and_future_version_are_kept_not_errors() {
        let p = encode("blob", &42u32);
        assert_eq!(
            decode(&p).unwrap(),
            Adu::Unknown {
                version: 1,
                kind: "blob".into()
            }
        );
        let mut out = Vec::new();
        ciborium::into_writer(
            &Envelope {
                v: 9,
                kind: "message".into(),
                body: "x",
            },
            &mut out,
        )
        .unwrap();
        assert!(matches!(
            decode(&out).unwrap(),
            Adu::Unknown { version: 9, .. }
        ));
    }

    #[test]
    fn unknown_fields_are_rejected_not_dropped() {
        #[derive(Serialize)]
        struct Extra {
            text: String,
            colour: String,
        }
        let p = encode(
            "message",
            &Extra {
                text: "x".into(),
                colour: "red".into(),
            },
        );
        assert!(matches!(decode(&p), Err(AduError::BadBody { .. })));
        assert!(matches!(
            decode(b"\x01\x02"),
            Err(AduError::NotAnEnvelope(_))
        ));
        assert_eq!(kind_label(b"junk"), "opaque");
    }

    #[test]
    fn labels_read_in_place_are_the_labels_decoding_gives() {
        use ciborium::Value;
        let file = encode_message(&Message::File(FileMessage {
            name: "a.bin".into(),
            media_type: "application/octet-stream".into(),
            data: vec![9; 1 << 20],
        }));
        let mut payloads = vec![
            file.clone(),
            encode_message(&Message::Text("salam".into())),
            encode_kind("payment", &Value::Map(vec![])),
            encode_kind("no such kind", &Value::Integer(1.into())),
            encode_kind("receipts", &Value::Map(vec![])),
            encode_kind("message", &Value::Tag(24, Box::new(Value::Bytes(vec![1])))),
            encode_kind("message", &Value::Float(1.5)),
            encode_kind(
                "message",
                &Value::Array(vec![Value::Null, Value::Bool(true)]),
            ),
            b"junk".to_vec(),
            Vec::new(),
        ];
        // A body text string that is not UTF-8: both say opaque.
        let mut bad_utf8 = encode_kind("message", &Value::Text("ab".into()));
        let n = bad_utf8.len();
        bad_utf8[n - 1] = 0xff;
        payloads.push(bad_utf8);
        // Cut short, and one byte too many.
        payloads.push(file[..file.len() - 1].to_vec());
        let mut longer = file.clone();
        longer.push(0);
        payloads.push(longer);
        // Deep nesting (beyond the in-place walk).
        let mut deep = Value::Integer(0.into());
        for _ in 0..40 {
            deep = Value::Array(vec![deep]);
        }
        payloads.push(encode_kind("message", &deep));
        for p in &payloads {
            assert_eq!(
                kind_label(p),
                label_by_decoding(p),
                "{:?}",
                &p[..p.len().min(40)]
            );
        }
        assert_eq!(kind_label(&file), "message");
        assert!(label_in_place(&file).is_some());
        assert_eq!(peek_kind(&file), Some("message"));
        assert_eq!(peek_kind(b"junk"), None);
    }
}
