//! BPSec Block Integrity Blocks (RFC 9172 §3.6, block type 11): the Abstract Security Block
//! layout, and Mycelium's private-use security context that carries an Ed25519 signature.
//!
//! The signed bytes for a target block are (see `bundles/README.md`):
//!
//! ```text
//! "mycelium/bib-ed25519/v1"                     23 ASCII bytes, domain separation
//! || canonical CBOR of the primary block         including its CRC
//! || CBOR [target type, target number, target block flags]
//! || blake3(target block-type-specific data)     32 bytes
//! ```
//!
//! Owns: ASB encoding and the signed-bytes construction. Keys come from `identity`.

use super::cbor::{Reader, Writer};
use super::eid::Eid;
use super::primary::PrimaryBlock;
use super::BundleError;

/// Mycelium's security context id: negative, so private use (RFC 9172 §11.3).
pub const CONTEXT_ED25519: i64 = -19801;
/// Result id of the Ed25519 signature inside a security result.
pub const RESULT_SIGNATURE: u64 = 1;
/// Domain-separation prefix of the signed bytes.
pub const DOMAIN: &[u8] = b"mycelium/bib-ed25519/v1";
/// Security context flag: parameters present.
const FLAG_PARAMETERS: u64 = 0x01;

/// One Abstract Security Block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asb {
    pub targets: Vec<u64>,
    pub context_id: i64,
    pub source: Eid,
    /// `(id, raw CBOR value)` pairs; we write none and keep foreign ones as raw bytes.
    pub parameters: Option<Vec<(u64, Vec<u8>)>>,
    /// One list of `(result id, raw CBOR value)` per target.
    pub results: Vec<Vec<(u64, Vec<u8>)>>,
}

/// Most targets, parameters or results we accept in one ASB.
const MAX_ITEMS: usize = 64;

impl Asb {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.array(self.targets.len());
        for t in &self.targets {
            w.uint(*t);
        }
        w.int(self.context_id);
        w.uint(if self.parameters.is_some() {
            FLAG_PARAMETERS
        } else {
            0
        });
        self.source.encode(&mut w);
        if let Some(ps) = &self.parameters {
            w.array(ps.len());
            for (id, v) in ps {
                w.array(2);
                w.uint(*id);
                w.buf.extend_from_slice(v);
            }
        }
        w.array(self.results.len());
        for rs in &self.results {
            w.array(rs.len());
            for (id, v) in rs {
                w.array(2);
                w.uint(*id);
                w.buf.extend_from_slice(v);
            }
        }
        w.into_vec()
    }

    pub fn decode(number: u64, data: &[u8]) -> Result<Asb, BundleError> {
        let bad = |reason: String| BundleError::BadBlock {
            number: Some(number),
            reason: format!("security block: {reason}"),
        };
        let mut r = Reader::new(data);
        let n = r.array().map_err(|e| bad(e.to_string()))?;
        if n == 0 || n > MAX_ITEMS {
            return Err(bad(format!("{n} security targets")));
        }
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.uint().map_err(|e| bad(e.to_string()))?;
            if targets.contains(&t) {
                return Err(bad(format!("target {t} listed twice")));
            }
            targets.push(t);
        }
        let context_id = r.int().map_err(|e| bad(e.to_string()))?;
        let flags = r.uint().map_err(|e| bad(e.to_string()))?;
        let source = Eid::decode(&mut r)?;
        let parameters = if flags & FLAG_PARAMETERS != 0 {
            Some(pairs(&mut r).map_err(|e| bad(format!("parameters: {e}")))?)
        } else {
            None
        };
        let m = r.array().map_err(|e| bad(e.to_string()))?;
        if m != targets.len() {
            return Err(bad(format!(
                "{m} result sets for {} targets",
                targets.len()
            )));
        }
        let mut results = Vec::with_capacity(m);
        for _ in 0..m {
            results.push(pairs(&mut r).map_err(|e| bad(format!("results: {e}")))?);
        }
        r.finish().map_err(|e| bad(e.to_string()))?;
        Ok(Asb {
            targets,
            context_id,
            source,
            parameters,
            results,
        })
    }
}

/// `[* [id, value]]`, values kept as their raw CBOR bytes.
fn pairs(r: &mut Reader<'_>) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let n = r.array().map_err(|e| e.to_string())?;
    if n > MAX_ITEMS {
        return Err(format!("{n} entries"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if r.array().map_err(|e| e.to_string())? != 2 {
            return Err("entry is not [id, value]".into());
        }
        let id = r.uint().map_err(|e| e.to_string())?;
        let start = r.pos();
        skip_item(r, 0)?;
        out.push((id, r.slice(start, r.pos()).to_vec()));
    }
    Ok(out)
}

/// Skip one CBOR data item of any type, bounded in depth.
fn skip_item(r: &mut Reader<'_>, depth: usize) -> Result<(), String> {
    use ciborium_ll::Header;
    if depth > 16 {
        return Err("nested too deeply".into());
    }
    match r.header().map_err(|e| e.to_string())? {
        Header::Bytes(Some(n)) | Header::Text(Some(n)) => {
            // header() already checked n against what is left
            r.advance(n);
            Ok(())
        }
        Header::Array(Some(n)) => (0..n).try_for_each(|_| skip_item(r, depth + 1)),
        Header::Map(Some(n)) => (0..n * 2).try_for_each(|_| skip_item(r, depth + 1)),
        Header::Tag(_) => skip_item(r, depth + 1),
        Header::Positive(_) | Header::Negative(_) | Header::Float(_) | Header::Simple(_) => Ok(()),
        _ => Err("indefinite-length items are not accepted here".into()),
    }
}

/// The bytes the Ed25519 signature covers for one target block.
pub fn signed_bytes(
    primary: &PrimaryBlock,
    target_type: u64,
    target_number: u64,
    target_flags: u64,
    target_data: &[u8],
) -> Vec<u8> {
    let mut w = Writer::with_capacity(256);
    w.buf.extend_from_slice(DOMAIN);
    primary.encode(&mut w);
    w.array(3);
    w.uint(target_type);
    w.uint(target_number);
    w.uint(target_flags);
    w.buf
        .extend_from_slice(blake3::hash(target_data).as_bytes());
    w.into_vec()
}

/// Raw CBOR of a signature result value (a 64-byte byte string).
pub fn signature_value(sig: &[u8; 64]) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(sig);
    w.into_vec()
}

/// Extract a 64-byte signature from a raw result value.
pub fn parse_signature(raw: &[u8]) -> Option<[u8; 64]> {
    let mut r = Reader::new(raw);
    let b = r.bytes().ok()?;
    r.finish().ok()?;
    b.try_into().ok()
}
