//! The primary block (RFC 9171 §4.3.1): version, processing flags, CRC type, EIDs,
//! creation timestamp, lifetime, optional fragment fields and CRC.

use super::cbor::{Reader, Writer};
use super::crc::CrcType;
use super::eid::Eid;
use super::BundleError;
use crate::time::DtnTime;

/// Bundle processing control flags (RFC 9171 §4.2.3).
pub mod flags {
    pub const IS_FRAGMENT: u64 = 0x0001;
    pub const ADMIN_RECORD: u64 = 0x0002;
    pub const MUST_NOT_FRAGMENT: u64 = 0x0004;
    pub const APP_ACK_REQUESTED: u64 = 0x0020;
    pub const STATUS_TIME_REQUESTED: u64 = 0x0040;
    /// Reception, forwarding, delivery and deletion status report requests.
    pub const STATUS_REPORTS: u64 = 0x4000 | 0x1_0000 | 0x2_0000 | 0x4_0000;
}

/// Creation timestamp `[DTN time, sequence number]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreationTimestamp {
    pub time: DtnTime,
    pub seq: u64,
}

/// Fragment offset and total application data unit length, present when the bundle is a
/// fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fragment {
    pub offset: u64,
    pub total_adu_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryBlock {
    pub flags: u64,
    pub crc: CrcType,
    pub destination: Eid,
    pub source: Eid,
    pub report_to: Eid,
    pub created: CreationTimestamp,
    /// Lifetime in milliseconds.
    pub lifetime_ms: u64,
    pub fragment: Option<Fragment>,
}

pub const BP_VERSION: u64 = 7;

impl PrimaryBlock {
    pub fn encode(&self, w: &mut Writer) {
        let start = w.buf.len();
        let n = 8 + if self.fragment.is_some() { 2 } else { 0 } + usize::from(!self.crc.is_none());
        w.array(n);
        w.uint(BP_VERSION);
        w.uint(self.flags);
        w.uint(self.crc.code());
        self.destination.encode(w);
        self.source.encode(w);
        self.report_to.encode(w);
        w.array(2);
        w.uint(self.created.time.0);
        w.uint(self.created.seq);
        w.uint(self.lifetime_ms);
        if let Some(f) = self.fragment {
            w.uint(f.offset);
            w.uint(f.total_adu_len);
        }
        if !self.crc.is_none() {
            w.bytes(&[0u8; 4][..self.crc.value_len()]);
            self.crc.seal(&mut w.buf[start..]);
        }
    }

    /// The canonical encoding of this block (what the signature covers).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<PrimaryBlock, BundleError> {
        let bad = |s: String| BundleError::BadPrimary(s);
        let start = r.pos();
        let n = r.array()?;
        if !(8..=11).contains(&n) {
            return Err(bad(format!("has {n} fields, expected 8 to 11")));
        }
        let version = r.uint()?;
        if version != BP_VERSION {
            return Err(BundleError::BadVersion(version));
        }
        let flags = r.uint()?;
        let crc_code = r.uint()?;
        let crc = CrcType::from_code(crc_code)
            .ok_or_else(|| bad(format!("unknown CRC type {crc_code}")))?;
        let destination = Eid::decode(r)?;
        let source = Eid::decode(r)?;
        let report_to = Eid::decode(r)?;
        if r.array()? != 2 {
            return Err(bad("creation timestamp must be [time, seq]".into()));
        }
        let created = CreationTimestamp {
            time: DtnTime(r.uint()?),
            seq: r.uint()?,
        };
        let lifetime_ms = r.uint()?;
        let is_fragment = flags & flags::IS_FRAGMENT != 0;
        let expected = 8 + if is_fragment { 2 } else { 0 } + usize::from(!crc.is_none());
        if n != expected {
            return Err(bad(format!(
                "has {n} fields but its flags and CRC type call for {expected}"
            )));
        }
        let fragment = if is_fragment {
            Some(Fragment {
                offset: r.uint()?,
                total_adu_len: r.uint()?,
            })
        } else {
            None
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
                return Err(BundleError::CrcMismatch { block: 0 });
            }
        }
        let p = PrimaryBlock {
            flags,
            crc,
            destination,
            source,
            report_to,
            created,
            lifetime_ms,
            fragment,
        };
        p.validate()?;
        Ok(p)
    }

    /// Rules of RFC 9171 §4.3.1 that do not depend on other blocks.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |s: &str| Err(BundleError::BadPrimary(s.to_string()));
        if self.source.is_null() {
            if self.flags & flags::MUST_NOT_FRAGMENT == 0 {
                return bad("anonymous (dtn:none) source requires the must-not-fragment flag");
            }
            if self.flags & flags::STATUS_REPORTS != 0 {
                return bad("anonymous (dtn:none) source must not request status reports");
            }
        }
        if self.flags & flags::ADMIN_RECORD != 0 && self.flags & flags::STATUS_REPORTS != 0 {
            return bad("an administrative record must not request status reports");
        }
        if let Some(f) = self.fragment {
            if f.offset >= f.total_adu_len {
                return bad("fragment offset is not inside the application data unit");
            }
        }
        if self.crc.is_none() {
            // Allowed by RFC 9171 only when a BIB targets the primary block; we never
            // write that, and we do not accept it either.
            return bad("primary block has no CRC");
        }
        Ok(())
    }
}
