//! Block CRCs (RFC 9171 §4.2.1): CRC-16/X-25 and CRC-32C, computed over the block's CBOR
//! encoding with the CRC value bytes set to zero, stored big-endian. CRC-32C runs on the
//! CPU's own instruction (SSE4.2 `crc32`, ARMv8 `crc32c`) where it has one: a payload block
//! of a megabyte is checked at several GB/s.

use crc::{Crc, Table, CRC_16_IBM_SDLC, CRC_32_ISCSI};

static CRC16: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_IBM_SDLC);
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// The CRC type field of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrcType {
    None,
    Crc16,
    Crc32c,
}

impl CrcType {
    pub fn code(self) -> u64 {
        match self {
            CrcType::None => 0,
            CrcType::Crc16 => 1,
            CrcType::Crc32c => 2,
        }
    }

    pub fn from_code(c: u64) -> Option<CrcType> {
        match c {
            0 => Some(CrcType::None),
            1 => Some(CrcType::Crc16),
            2 => Some(CrcType::Crc32c),
            _ => None,
        }
    }

    /// Length of the CRC value in bytes.
    pub fn value_len(self) -> usize {
        match self {
            CrcType::None => 0,
            CrcType::Crc16 => 2,
            CrcType::Crc32c => 4,
        }
    }

    pub fn is_none(self) -> bool {
        self == CrcType::None
    }

    /// CRC over `block`, whose last `self.value_len()` bytes are the CRC value and are treated as
    /// zero. Returns the big-endian value bytes.
    pub fn compute(self, block: &[u8]) -> Vec<u8> {
        let n = self.value_len();
        let (body, _) = block.split_at(block.len() - n);
        let zeros = [0u8; 4];
        match self {
            CrcType::None => Vec::new(),
            CrcType::Crc16 => {
                let mut d = CRC16.digest();
                d.update(body);
                d.update(&zeros[..2]);
                d.finalize().to_be_bytes().to_vec()
            }
            CrcType::Crc32c => crc32c(&[body, &zeros[..4]]).to_be_bytes().to_vec(),
        }
    }

    /// Fill the trailing CRC bytes of an encoded block in place.
    pub fn seal(self, block: &mut [u8]) {
        let v = self.compute(block);
        let n = block.len();
        block[n - v.len()..].copy_from_slice(&v);
    }

    /// Whether the trailing CRC bytes of an encoded block are right.
    pub fn check(self, block: &[u8]) -> bool {
        let v = self.compute(block);
        block[block.len() - v.len()..] == v[..]
    }
}

/// CRC-32C over the concatenation of `parts`.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        let mut c = !0u32;
        for p in parts {
            // SAFETY: the CPU has SSE4.2 (checked just above).
            c = unsafe { hw::x86(c, p) };
        }
        return !c;
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("crc") {
        let mut c = !0u32;
        for p in parts {
            // SAFETY: the CPU has the CRC32 instructions (checked just above).
            c = unsafe { hw::arm(c, p) };
        }
        return !c;
    }
    crc32c_table(parts)
}

fn crc32c_table(parts: &[&[u8]]) -> u32 {
    let mut d = CRC32C.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

mod hw {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn x86(mut c: u32, data: &[u8]) -> u32 {
        use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
        let mut words = data.chunks_exact(8);
        let mut c64 = u64::from(c);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            c64 = _mm_crc32_u64(c64, u64::from_le_bytes(b));
        }
        c = c64 as u32;
        for &b in words.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }

    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "crc")]
    pub(super) unsafe fn arm(mut c: u32, data: &[u8]) -> u32 {
        use std::arch::aarch64::{__crc32cb, __crc32cd};
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            c = __crc32cd(c, u64::from_le_bytes(b));
        }
        for &b in words.remainder() {
            c = __crc32cb(c, b);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The standard check values over "123456789".
        assert_eq!(CRC16.checksum(b"123456789"), 0x906e);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    /// The CPU's instruction and the table agree, however the bytes are split.
    #[test]
    fn hardware_crc32c_matches_the_table() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(crc32c(&[b"123456789"]), 0xe306_9283);
        for len in [0, 1, 7, 8, 9, 63, 64, 1000, 4093, 5000] {
            for cut in [0, 1, 5, len / 2, len] {
                let cut = cut.min(len);
                let parts: [&[u8]; 2] = [&data[..cut], &data[cut..len]];
                assert_eq!(crc32c(&parts), crc32c_table(&parts), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn seal_then_check() {
        for t in [CrcType::Crc16, CrcType::Crc32c] {
            let mut b = b"some block bytes\0\0\0\0".to_vec();
            b.truncate(16 + t.value_len());
            t.seal(&mut b);
            assert!(t.check(&b));
            b[3] ^= 1;
            assert!(!t.check(&b));
        }
    }
}
