//! Block CRCs (RFC 9171 §4.2.1): CRC-16/X-25 and CRC-32C, computed over the block's CBOR
//! encoding with the CRC value bytes set to zero, stored big-endian.

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
            CrcType::Crc32c => {
                let mut d = CRC32C.digest();
                d.update(body);
                d.update(&zeros[..4]);
                d.finalize().to_be_bytes().to_vec()
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The standard check values over "123456789".
        assert_eq!(CRC16.checksum(b"123456789"), 0x906e);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
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
