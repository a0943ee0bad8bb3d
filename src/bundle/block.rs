//! Canonical blocks (RFC 9171 §4.3.2) and the typed contents of the extension blocks we
//! understand: previous node (6), bundle age (7), hop count (10). Other block types are
//! carried through untouched.

use super::cbor::{Reader, Writer};
use super::crc::CrcType;
use super::eid::Eid;
use super::BundleError;
use bytes::Bytes;

/// Block type codes.
pub mod types {
    pub const PAYLOAD: u64 = 1;
    pub const PREVIOUS_NODE: u64 = 6;
    pub const BUNDLE_AGE: u64 = 7;
    pub const HOP_COUNT: u64 = 10;
    pub const BIB: u64 = 11;
    pub const BCB: u64 = 12;
}

/// Block processing control flags (RFC 9171 §4.2.4).
pub mod block_flags {
    pub const REPLICATE_IN_FRAGMENTS: u64 = 0x01;
    pub const REPORT_IF_UNPROCESSED: u64 = 0x02;
    pub const DELETE_BUNDLE_IF_UNPROCESSED: u64 = 0x04;
    pub const DISCARD_IF_UNPROCESSED: u64 = 0x10;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalBlock {
    pub block_type: u64,
    pub number: u64,
    pub flags: u64,
    pub crc: CrcType,
    /// Block-type-specific data (shared with the bytes it was decoded from, when those
    /// were shared: a megabyte payload is not copied out of its bundle).
    pub data: Bytes,
}

impl CanonicalBlock {
    pub fn new(block_type: u64, number: u64, crc: CrcType, data: impl Into<Bytes>) -> Self {
        CanonicalBlock {
            block_type,
            number,
            flags: 0,
            crc,
            data: data.into(),
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        let start = w.buf.len();
        w.array(if self.crc.is_none() { 5 } else { 6 });
        w.uint(self.block_type);
        w.uint(self.number);
        w.uint(self.flags);
        w.uint(self.crc.code());
        w.bytes(&self.data);
        if !self.crc.is_none() {
            w.bytes(&[0u8; 4][..self.crc.value_len()]);
            self.crc.seal(&mut w.buf[start..]);
        }
    }

    /// Decode one block from `r`; its data is a slice of `src` when `src` holds the bytes
    /// `r` reads, else a copy.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        src: Option<&Bytes>,
    ) -> Result<CanonicalBlock, BundleError> {
        let start = r.pos();
        let n = r.array()?;
        if n != 5 && n != 6 {
            return Err(BundleError::BadBlock {
                number: None,
                reason: format!("block at byte {start} has {n} fields, expected 5 or 6"),
            });
        }
        let block_type = r.uint()?;
        let number = r.uint()?;
        let bad = |reason: String| BundleError::BadBlock {
            number: Some(number),
            reason,
        };
        let flags = r.uint()?;
        let crc_code = r.uint()?;
        let crc = CrcType::from_code(crc_code)
            .ok_or_else(|| bad(format!("unknown CRC type {crc_code}")))?;
        if (n == 6) == crc.is_none() {
            return Err(bad(format!("has {n} fields but CRC type {crc_code}")));
        }
        let d = r.bytes()?;
        let data = match src {
            Some(s) => s.slice_ref(d),
            None => Bytes::copy_from_slice(d),
        };
        if !crc.is_none() {
            let v = r.bytes()?;
            if v.len() != crc.value_len() {
                return Err(bad(format!(
                    "CRC value is {} bytes, CRC type {crc_code} needs {}",
                    v.len(),
                    crc.value_len()
                )));
            }
            if !crc.check(r.slice(start, r.pos())) {
                return Err(BundleError::CrcMismatch { block: number });
            }
        }
        Ok(CanonicalBlock {
            block_type,
            number,
            flags,
            crc,
            data,
        })
    }
}

/// Hop limit and hop count (block type 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopCount {
    pub limit: u64,
    pub count: u64,
}

impl HopCount {
    pub fn to_data(self) -> Vec<u8> {
        let mut w = Writer::new();
        w.array(2);
        w.uint(self.limit);
        w.uint(self.count);
        w.into_vec()
    }

    pub fn from_data(number: u64, data: &[u8]) -> Result<HopCount, BundleError> {
        let bad = |reason: &str| BundleError::BadBlock {
            number: Some(number),
            reason: format!("hop count block: {reason}"),
        };
        let mut r = Reader::new(data);
        if r.array().map_err(|_| bad("expected [limit, count]"))? != 2 {
            return Err(bad("expected [limit, count]"));
        }
        let limit = r.uint().map_err(|_| bad("limit is not an integer"))?;
        let count = r.uint().map_err(|_| bad("count is not an integer"))?;
        r.finish().map_err(|_| bad("trailing bytes"))?;
        if !(1..=255).contains(&limit) {
            return Err(bad("hop limit must be 1 to 255"));
        }
        Ok(HopCount { limit, count })
    }
}

/// Bundle age in milliseconds (block type 7).
pub fn age_to_data(age_ms: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.uint(age_ms);
    w.into_vec()
}

pub fn age_from_data(number: u64, data: &[u8]) -> Result<u64, BundleError> {
    let mut r = Reader::new(data);
    let v = r.uint();
    match (v, r.finish()) {
        (Ok(v), Ok(())) => Ok(v),
        _ => Err(BundleError::BadBlock {
            number: Some(number),
            reason: "bundle age block must hold one unsigned integer".into(),
        }),
    }
}

/// Previous node EID (block type 6).
pub fn previous_node_from_data(number: u64, data: &[u8]) -> Result<Eid, BundleError> {
    let mut r = Reader::new(data);
    let e = Eid::decode(&mut r).and_then(|e| r.finish().map(|_| e).map_err(Into::into));
    e.map_err(|e| BundleError::BadBlock {
        number: Some(number),
        reason: format!("previous node block: {e}"),
    })
}
