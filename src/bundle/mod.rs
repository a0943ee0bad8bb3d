//! BPv7 bundles (RFC 9171) signed with a BPSec BIB (RFC 9172): the in-memory form, the
//! strict decoder, the canonical encoder, the builder that signs on creation, and
//! [`VerifiedBundle`], the only form the store and the transports accept.
//!
//! Owns: wire format and signature checks. Pure: no I/O, no clock (times are passed in).

pub mod bib;
pub mod block;
pub mod cbor;
pub mod crc;
pub mod eid;
pub mod primary;

pub use block::{types as block_types, CanonicalBlock, HopCount};
pub use crc::CrcType;
pub use eid::Eid;
pub use primary::{CreationTimestamp, Fragment, PrimaryBlock};

use crate::identity::{self, Identity};
use crate::time::DtnTime;
use bytes::Bytes;
use cbor::{CborError, Reader, Writer};
use std::collections::HashSet;
use std::fmt;

/// Why bytes are not an acceptable bundle. Every variant names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty input: not a bundle")]
    Empty,
    #[error("malformed CBOR: {0}")]
    Cbor(#[from] CborError),
    #[error("not a BPv7 bundle: a bundle is an indefinite-length CBOR array (first byte 0x9f), found 0x{0:02x}")]
    NotABundle(u8),
    #[error("unsupported bundle protocol version {0} (only 7 is supported)")]
    BadVersion(u64),
    #[error("bad primary block: {0}")]
    BadPrimary(String),
    #[error("bad block{}: {reason}", number.map(|n| format!(" {n}")).unwrap_or_default())]
    BadBlock { number: Option<u64>, reason: String },
    #[error("CRC mismatch in {}: the bundle was corrupted", if *block == 0 { "the primary block".to_string() } else { format!("block {block}") })]
    CrcMismatch { block: u64 },
    #[error("bad endpoint ID: {0}")]
    BadEid(String),
    #[error("block number {0} is used twice")]
    DuplicateBlockNumber(u64),
    #[error("more than {0} blocks")]
    TooManyBlocks(usize),
    #[error("no payload block (type 1)")]
    NoPayload,
    #[error("the payload block must be the last block and have block number 1")]
    PayloadMisplaced,
    #[error("more than one {0} block")]
    DuplicateExtension(&'static str),
    #[error("creation time is 0 (clock unknown) but there is no bundle age block")]
    MissingAge,
    #[error("hop count {count} exceeds hop limit {limit}")]
    HopLimitExceeded { limit: u64, count: u64 },
    #[error(
        "unsigned: no Mycelium signature (BIB, context {}) covers the payload",
        bib::CONTEXT_ED25519
    )]
    Unsigned,
    #[error("signature does not verify: the bundle was altered or signed by another key than its source {0}")]
    BadSignature(String),
    #[error("signed by {signer}, but the bundle claims source {claimed}")]
    SignerMismatch { signer: String, claimed: String },
    #[error("source {0} is not a Mycelium node ID, so its signature cannot be checked")]
    UnknownSigner(String),
    #[error("more than one Mycelium signature covers the payload")]
    DuplicateSignature,
    #[error("{0}")]
    Sealed(String),
}

/// Bounds applied before any allocation when decoding untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_bundle_len: usize,
    pub max_blocks: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bundle_len: 64 * 1024 * 1024,
            max_blocks: 64,
        }
    }
}

/// The BPv7 identity of a bundle (RFC 9171 §4.2.5 + fragment fields): what dedup and
/// acknowledgements use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleId {
    pub source: Eid,
    pub created: CreationTimestamp,
    pub fragment: Option<Fragment>,
}

impl BundleId {
    /// Canonical CBOR `[source, [time, seq]]` or `[source, [time, seq], offset, total]`.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.array(if self.fragment.is_some() { 4 } else { 2 });
        self.source.encode(&mut w);
        w.array(2);
        w.uint(self.created.time.0);
        w.uint(self.created.seq);
        if let Some(f) = self.fragment {
            w.uint(f.offset);
            w.uint(f.total_adu_len);
        }
        w.into_vec()
    }

    /// 32-byte store key: blake3 of [`BundleId::to_cbor`].
    pub fn key(&self) -> [u8; 32] {
        *blake3::hash(&self.to_cbor()).as_bytes()
    }

    /// Hex of the key; users may type any unique prefix of it.
    pub fn hex(&self) -> String {
        hex::encode(self.key())
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}.{}",
            self.source, self.created.time.0, self.created.seq
        )?;
        if let Some(fr) = self.fragment {
            write!(f, " frag {}+{}", fr.offset, fr.total_adu_len)?;
        }
        Ok(())
    }
}

/// A decoded bundle: primary block, then canonical blocks with the payload last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub primary: PrimaryBlock,
    /// All canonical blocks in wire order; the last is the payload block.
    pub blocks: Vec<CanonicalBlock>,
}

impl Bundle {
    /// Decode and validate with the default limits. Does not check the signature: use
    /// [`VerifiedBundle::decode`] for anything that will be stored or forwarded.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        Bundle::decode_with(bytes, &DecodeLimits::default())
    }

    pub fn decode_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Bundle, BundleError> {
        Bundle::decode_from(bytes, None, limits)
    }

    /// [`Bundle::decode_with`] of shared bytes: block data are slices of `bytes`.
    pub fn decode_shared(bytes: &Bytes, limits: &DecodeLimits) -> Result<Bundle, BundleError> {
        Bundle::decode_from(bytes, Some(bytes), limits)
    }

    fn decode_from(
        bytes: &[u8],
        src: Option<&Bytes>,
        limits: &DecodeLimits,
    ) -> Result<Bundle, BundleError> {
        if bytes.len() > limits.max_bundle_len {
            return Err(BundleError::TooLarge {
                len: bytes.len(),
                max: limits.max_bundle_len,
            });
        }
        let first = *bytes.first().ok_or(BundleError::Empty)?;
        if first != 0x9f {
            return Err(BundleError::NotABundle(first));
        }
        let mut r = Reader::new(bytes);
        r.advance(1);
        let primary = PrimaryBlock::decode(&mut r)?;
        let mut blocks = Vec::new();
        loop {
            if r.peek()? == ciborium_ll::Header::Break {
                r.advance(1);
                break;
            }
            if blocks.len() >= limits.max_blocks {
                return Err(BundleError::TooManyBlocks(limits.max_blocks));
            }
            blocks.push(CanonicalBlock::decode(&mut r, src)?);
        }
        r.finish()?;
        let b = Bundle { primary, blocks };
        b.validate()?;
        Ok(b)
    }

    /// Only the primary block of encoded bundle bytes (its CRC checked): the bundle's ID
    /// and addressing, without decoding or checking the rest.
    pub fn decode_primary(bytes: &[u8]) -> Result<PrimaryBlock, BundleError> {
        let first = *bytes.first().ok_or(BundleError::Empty)?;
        if first != 0x9f {
            return Err(BundleError::NotABundle(first));
        }
        let mut r = Reader::new(bytes);
        r.advance(1);
        PrimaryBlock::decode(&mut r)
    }

    /// The first block of `block_type` in encoded bundle bytes and its byte span, found
    /// without decoding the payload (always the last block): `None` if no block before the
    /// payload has that type. Only the blocks read on the way are checked.
    pub fn find_block(
        bytes: &[u8],
        block_type: u64,
    ) -> Result<Option<(std::ops::Range<usize>, CanonicalBlock)>, BundleError> {
        let first = *bytes.first().ok_or(BundleError::Empty)?;
        if first != 0x9f {
            return Err(BundleError::NotABundle(first));
        }
        let mut r = Reader::new(bytes);
        r.advance(1);
        PrimaryBlock::decode(&mut r)?;
        loop {
            if r.peek()? == ciborium_ll::Header::Break {
                return Ok(None);
            }
            let start = r.pos();
            let mut probe = Reader::new(bytes);
            probe.advance(start);
            probe.array()?;
            let t = probe.uint()?;
            if t == block_types::PAYLOAD {
                return Ok(None);
            }
            let b = CanonicalBlock::decode(&mut r, None)?;
            if t == block_type {
                return Ok(Some((start..r.pos(), b)));
            }
        }
    }

    /// Canonical encoding: indefinite array, shortest-form integers, CRCs filled in.
    pub fn encode(&self) -> Vec<u8> {
        let cap = 256 + self.blocks.iter().map(|b| b.data.len() + 16).sum::<usize>();
        let mut w = Writer::with_capacity(cap);
        w.indefinite_array();
        self.primary.encode(&mut w);
        for b in &self.blocks {
            b.encode(&mut w);
        }
        w.brk();
        w.into_vec()
    }

    /// Cross-block rules of RFC 9171 §4.3 and RFC 9172 §3.
    pub fn validate(&self) -> Result<(), BundleError> {
        self.primary.validate()?;
        let last = self.blocks.last().ok_or(BundleError::NoPayload)?;
        if last.block_type != block_types::PAYLOAD || last.number != 1 {
            return if self
                .blocks
                .iter()
                .any(|b| b.block_type == block_types::PAYLOAD)
            {
                Err(BundleError::PayloadMisplaced)
            } else {
                Err(BundleError::NoPayload)
            };
        }
        let mut numbers = HashSet::new();
        let (mut prev, mut age, mut hop) = (false, false, false);
        for b in &self.blocks {
            if b.number == 0 {
                return Err(BundleError::BadBlock {
                    number: Some(0),
                    reason: "block number 0 is reserved for the primary block".into(),
                });
            }
            if !numbers.insert(b.number) {
                return Err(BundleError::DuplicateBlockNumber(b.number));
            }
            let once = |seen: &mut bool, name| {
                if std::mem::replace(seen, true) {
                    Err(BundleError::DuplicateExtension(name))
                } else {
                    Ok(())
                }
            };
            match b.block_type {
                block_types::PAYLOAD if b.number != 1 => return Err(BundleError::PayloadMisplaced),
                block_types::PREVIOUS_NODE => {
                    once(&mut prev, "previous node")?;
                    block::previous_node_from_data(b.number, &b.data)?;
                }
                block_types::BUNDLE_AGE => {
                    once(&mut age, "bundle age")?;
                    block::age_from_data(b.number, &b.data)?;
                }
                block_types::HOP_COUNT => {
                    once(&mut hop, "hop count")?;
                    let h = HopCount::from_data(b.number, &b.data)?;
                    if h.count > h.limit {
                        return Err(BundleError::HopLimitExceeded {
                            limit: h.limit,
                            count: h.count,
                        });
                    }
                }
                _ => {}
            }
        }
        if self.primary.created.time.0 == 0 && !age {
            return Err(BundleError::MissingAge);
        }
        for b in self
            .blocks
            .iter()
            .filter(|b| b.block_type == block_types::BIB)
        {
            let asb = bib::Asb::decode(b.number, &b.data)?;
            for t in &asb.targets {
                let target = self.blocks.iter().find(|x| x.number == *t);
                if target.is_some_and(|x| {
                    x.block_type == block_types::BIB || x.block_type == block_types::BCB
                }) {
                    return Err(BundleError::BadBlock {
                        number: Some(b.number),
                        reason: format!(
                            "a BIB must not target block {t}, a security block (RFC 9172 §3.7)"
                        ),
                    });
                }
                if *t != 0 && !numbers.contains(t) {
                    return Err(BundleError::BadBlock {
                        number: Some(b.number),
                        reason: format!("security target {t} is not in the bundle"),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn id(&self) -> BundleId {
        BundleId {
            source: self.primary.source.clone(),
            created: self.primary.created,
            fragment: self.primary.fragment,
        }
    }

    pub fn payload_block(&self) -> &CanonicalBlock {
        // validate() guarantees the payload is last; an empty list cannot be decoded.
        &self.blocks[self.blocks.len() - 1]
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload_block().data
    }

    fn block_of_type(&self, t: u64) -> Option<&CanonicalBlock> {
        self.blocks.iter().find(|b| b.block_type == t)
    }

    pub fn hop_count(&self) -> Option<HopCount> {
        let b = self.block_of_type(block_types::HOP_COUNT)?;
        HopCount::from_data(b.number, &b.data).ok()
    }

    pub fn age_ms(&self) -> Option<u64> {
        let b = self.block_of_type(block_types::BUNDLE_AGE)?;
        block::age_from_data(b.number, &b.data).ok()
    }

    pub fn previous_node(&self) -> Option<Eid> {
        let b = self.block_of_type(block_types::PREVIOUS_NODE)?;
        block::previous_node_from_data(b.number, &b.data).ok()
    }

    /// When this bundle expires, given when this node received it (needed when the
    /// creation time is unknown and only the bundle age is known).
    pub fn expires_at(&self, received_at: DtnTime) -> DtnTime {
        let p = &self.primary;
        if p.created.time.0 != 0 {
            p.created.time.saturating_add_ms(p.lifetime_ms)
        } else {
            let left = p.lifetime_ms.saturating_sub(self.age_ms().unwrap_or(0));
            received_at.saturating_add_ms(left)
        }
    }

    /// Check the Mycelium signature: exactly one BIB in our context targets the payload,
    /// its security source is the bundle source, and the Ed25519 signature by the key in
    /// that node ID verifies over [`bib::signed_bytes`].
    pub fn verify_signature(&self) -> Result<(), BundleError> {
        let payload = self.payload_block();
        let mut found = None;
        for b in self
            .blocks
            .iter()
            .filter(|b| b.block_type == block_types::BIB)
        {
            let asb = bib::Asb::decode(b.number, &b.data)?;
            if asb.context_id != bib::CONTEXT_ED25519 {
                continue;
            }
            if let Some(i) = asb.targets.iter().position(|t| *t == payload.number) {
                if found.is_some() {
                    return Err(BundleError::DuplicateSignature);
                }
                found = Some((asb.source.clone(), asb.results[i].clone()));
            }
        }
        let (signer, results) = found.ok_or(BundleError::Unsigned)?;
        let source = &self.primary.source;
        if &signer != source {
            return Err(BundleError::SignerMismatch {
                signer: signer.to_string(),
                claimed: source.to_string(),
            });
        }
        if identity::key_for_node_id(source).is_err() || source.node_id() != *source {
            return Err(BundleError::UnknownSigner(source.to_string()));
        }
        let sig = results
            .iter()
            .find(|(id, _)| *id == bib::RESULT_SIGNATURE)
            .and_then(|(_, v)| bib::parse_signature(v))
            .ok_or(BundleError::Unsigned)?;
        let msg = bib::signed_bytes(
            &self.primary,
            payload.block_type,
            payload.number,
            payload.flags,
            &payload.data,
        );
        if identity::verify_by_node(source, &msg, &sig) {
            Ok(())
        } else {
            Err(BundleError::BadSignature(source.to_string()))
        }
    }
}

/// A bundle whose structure and signature have been checked, with the exact bytes it
/// arrived as. The store and the transports accept only this type.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    bundle: Bundle,
    /// Shared with the bundle's block data (one copy of a payload in memory).
    raw: Bytes,
}

impl VerifiedBundle {
    /// Decode, validate and verify untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<VerifiedBundle, BundleError> {
        VerifiedBundle::decode_with(bytes, &DecodeLimits::default())
    }

    pub fn decode_with(bytes: &[u8], limits: &DecodeLimits) -> Result<VerifiedBundle, BundleError> {
        if bytes.len() > limits.max_bundle_len {
            // Refused before it is copied.
            return Err(BundleError::TooLarge {
                len: bytes.len(),
                max: limits.max_bundle_len,
            });
        }
        VerifiedBundle::decode_bytes_with(Bytes::copy_from_slice(bytes), limits)
    }

    /// [`VerifiedBundle::decode`] of bytes the caller owns (kept, not copied).
    pub fn decode_owned(raw: Vec<u8>) -> Result<VerifiedBundle, BundleError> {
        VerifiedBundle::decode_bytes(Bytes::from(raw))
    }

    /// [`VerifiedBundle::decode`] of shared bytes (kept, not copied; block data are
    /// slices of them).
    pub fn decode_bytes(raw: Bytes) -> Result<VerifiedBundle, BundleError> {
        VerifiedBundle::decode_bytes_with(raw, &DecodeLimits::default())
    }

    fn decode_bytes_with(raw: Bytes, limits: &DecodeLimits) -> Result<VerifiedBundle, BundleError> {
        let bundle = VerifiedBundle::check(&raw, limits)?;
        Ok(VerifiedBundle { bundle, raw })
    }

    fn check(bytes: &Bytes, limits: &DecodeLimits) -> Result<Bundle, BundleError> {
        let bundle = Bundle::decode_shared(bytes, limits)?;
        if crate::seal::is_sealed(&bundle) {
            // Anonymous by design: what a relay can check is the stamp.
            crate::seal::check_stamp(&bundle).map_err(|e| BundleError::Sealed(e.to_string()))?;
        } else {
            bundle.verify_signature()?;
        }
        Ok(bundle)
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The exact encoding this bundle was received or created as.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn id(&self) -> BundleId {
        self.bundle.id()
    }

    pub fn into_raw(self) -> Vec<u8> {
        // Drop the blocks' references first, so a raw not shared elsewhere is not copied.
        let VerifiedBundle { bundle, raw } = self;
        drop(bundle);
        Vec::from(raw)
    }

    /// An anonymous sealed bundle (checked by its stamp, not a signature).
    pub fn is_sealed(&self) -> bool {
        crate::seal::is_sealed(&self.bundle)
    }
}

/// Builds and signs a new bundle.
pub struct BundleBuilder {
    destination: Eid,
    report_to: Eid,
    created: CreationTimestamp,
    lifetime_ms: u64,
    hop_limit: Option<u64>,
    age_ms: Option<u64>,
    flags: u64,
    payload: Vec<u8>,
}

/// Default hop limit for new bundles.
pub const DEFAULT_HOP_LIMIT: u64 = 32;

impl BundleBuilder {
    /// A bundle for `destination` created at `created` (time 0 = clock unknown, which adds
    /// a bundle age block of 0 ms).
    pub fn new(destination: Eid, created: CreationTimestamp, lifetime_ms: u64) -> Self {
        BundleBuilder {
            destination,
            report_to: Eid::Null,
            created,
            lifetime_ms,
            hop_limit: Some(DEFAULT_HOP_LIMIT),
            age_ms: None,
            flags: primary::flags::MUST_NOT_FRAGMENT,
            payload: Vec::new(),
        }
    }

    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    pub fn hop_limit(mut self, limit: Option<u64>) -> Self {
        self.hop_limit = limit;
        self
    }

    pub fn report_to(mut self, eid: Eid) -> Self {
        self.report_to = eid;
        self
    }

    pub fn age_ms(mut self, age: u64) -> Self {
        self.age_ms = Some(age);
        self
    }

    /// Sign with `id` (which becomes the source) and encode.
    pub fn sign(self, id: &Identity) -> Result<VerifiedBundle, BundleError> {
        let primary = PrimaryBlock {
            flags: self.flags,
            crc: CrcType::Crc32c,
            destination: self.destination,
            source: id.node_id(),
            report_to: self.report_to,
            created: self.created,
            lifetime_ms: self.lifetime_ms,
            fragment: None,
        };
        let payload = CanonicalBlock::new(block_types::PAYLOAD, 1, CrcType::Crc32c, self.payload);
        let msg = bib::signed_bytes(
            &primary,
            payload.block_type,
            payload.number,
            payload.flags,
            &payload.data,
        );
        let sig = id.sign(&msg);
        let asb = bib::Asb {
            targets: vec![1],
            context_id: bib::CONTEXT_ED25519,
            source: primary.source.clone(),
            parameters: None,
            results: vec![vec![(bib::RESULT_SIGNATURE, bib::signature_value(&sig))]],
        };
        // The BIB gets a CRC too: its own header fields are not covered by the signature,
        // and with a CRC on every block any single flipped bit is caught.
        let mut blocks = vec![CanonicalBlock::new(
            block_types::BIB,
            2,
            CrcType::Crc16,
            asb.encode(),
        )];
        let mut next = 3;
        if let Some(limit) = self.hop_limit {
            blocks.push(CanonicalBlock::new(
                block_types::HOP_COUNT,
                next,
                CrcType::Crc16,
                HopCount { limit, count: 0 }.to_data(),
            ));
            next += 1;
        }
        let age = match (self.age_ms, self.created.time.0) {
            (Some(a), _) => Some(a),
            (None, 0) => Some(0),
            _ => None,
        };
        if let Some(a) = age {
            blocks.push(CanonicalBlock::new(
                block_types::BUNDLE_AGE,
                next,
                CrcType::Crc16,
                block::age_to_data(a),
            ));
        }
        blocks.push(payload);
        let bundle = Bundle { primary, blocks };
        bundle.validate()?;
        let raw = bundle.encode().into();
        Ok(VerifiedBundle { bundle, raw })
    }
}
