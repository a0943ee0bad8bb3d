//! Fountain coding for the one-way broadcast feed: a segment (a batch of bundles) becomes
//! RaptorQ (RFC 6330) symbols. Pass 1 carries the source symbols plus `overhead` repair
//! symbols; every later pass carries only *fresh* repair symbols (new ids), so every file a
//! receiver catches adds information, and any `K` (+ a couple) distinct symbols rebuild.
//!
//! Why not Reed–Solomon here: GF(2^8) codes stop at 256 shards per stripe, and a segment
//! with k ≤ 255 cannot reach 99% recovery at 20% loss with 30% overhead (Bin(332, 0.8) ≥ 256
//! holds only ~90% of the time); RaptorQ codes thousands of symbols per block in linear time.
//!
//! Pure: no I/O. Symbols are authenticated by the feed file that carries them, not here.

use raptorq::{
    Decoder, EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockEncoder,
};

/// Largest segment: one RaptorQ source block of at most 56,403 symbols.
pub const MAX_SEGMENT_LEN: u64 = 64 * 1024 * 1024;
pub const MAX_SOURCE_SYMBOLS: u64 = 56_403;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FountainError {
    #[error("bad segment parameters: {0}")]
    Params(String),
    #[error("bad symbol: {0}")]
    Symbol(String),
}

/// The coding parameters of a segment (RFC 6330 OTI, restricted to one source block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentParams {
    pub len: u64,
    pub symbol_size: u16,
}

impl SegmentParams {
    /// Source symbols `K`.
    pub fn source_symbols(&self) -> u32 {
        self.len.div_ceil(u64::from(self.symbol_size.max(1))) as u32
    }

    pub fn validate(&self) -> Result<(), FountainError> {
        if self.symbol_size < 8 || !self.symbol_size.is_multiple_of(8) {
            return Err(FountainError::Params(format!(
                "symbol size {} is not a positive multiple of 8",
                self.symbol_size
            )));
        }
        if self.len == 0 || self.len > MAX_SEGMENT_LEN {
            return Err(FountainError::Params(format!(
                "segment length {}",
                self.len
            )));
        }
        if u64::from(self.source_symbols()) > MAX_SOURCE_SYMBOLS {
            return Err(FountainError::Params(format!(
                "{} source symbols exceed {MAX_SOURCE_SYMBOLS}",
                self.source_symbols()
            )));
        }
        Ok(())
    }

    fn oti(&self) -> ObjectTransmissionInformation {
        // validate() guarantees the RFC 6330 limits this constructor asserts.
        ObjectTransmissionInformation::new(self.len, self.symbol_size, 1, 1, 8)
    }
}

/// A segment's symbols for every pass: `passes[p]` is a list of `(symbol id, data)`.
pub struct Encoded {
    pub params: SegmentParams,
    pub passes: Vec<Vec<(u32, Vec<u8>)>>,
}

/// Encode `data` for `passes` passes with `overhead` repair symbols (fraction of K) in
/// the first pass; later passes each carry `K × (1 + overhead)` fresh repair symbols.
pub fn encode(
    data: &[u8],
    symbol_size: u16,
    overhead: f64,
    passes: u32,
) -> Result<Encoded, FountainError> {
    let params = SegmentParams {
        len: data.len() as u64,
        symbol_size,
    };
    params.validate()?;
    let k = params.source_symbols();
    let repair = (f64::from(k) * overhead.max(0.0)).ceil() as u32;
    let per_pass = k + repair;
    // RFC 6330 symbol ids are 24 bits.
    let ids = u64::from(k)
        + u64::from(repair)
        + u64::from(passes.saturating_sub(1)) * u64::from(per_pass);
    if ids >= 1 << 24 {
        return Err(FountainError::Params(format!(
            "{passes} passes at {overhead} overhead need {ids} symbol ids, more than RFC 6330's 2^24"
        )));
    }
    let enc = SourceBlockEncoder::new(0, &params.oti(), &padded(data, k, symbol_size));
    let mut out = Vec::with_capacity(passes as usize);
    let mut next_repair = 0u32;
    for p in 0..passes {
        let packets: Vec<EncodingPacket> = if p == 0 {
            let mut v = enc.source_packets();
            v.extend(enc.repair_packets(0, repair));
            next_repair = repair;
            v
        } else {
            let v = enc.repair_packets(next_repair, per_pass);
            next_repair += per_pass;
            v
        };
        out.push(
            packets
                .into_iter()
                .map(|pk| {
                    let (id, data) = pk.split();
                    (id.encoding_symbol_id(), data)
                })
                .collect(),
        );
    }
    Ok(Encoded {
        params,
        passes: out,
    })
}

fn padded(data: &[u8], k: u32, symbol_size: u16) -> Vec<u8> {
    let mut d = data.to_vec();
    d.resize(k as usize * symbol_size as usize, 0);
    d
}

/// Try to rebuild a segment from the symbols received so far. `None` means not yet (more
/// symbols needed); symbols that do not fit the parameters are an error.
pub fn decode(
    params: SegmentParams,
    symbols: &[(u32, &[u8])],
) -> Result<Option<Vec<u8>>, FountainError> {
    params.validate()?;
    for (id, data) in symbols {
        if data.len() != params.symbol_size as usize {
            return Err(FountainError::Symbol(format!(
                "symbol {id} is {} bytes, the segment uses {}",
                data.len(),
                params.symbol_size
            )));
        }
        if *id >= 1 << 24 {
            return Err(FountainError::Symbol(format!(
                "symbol id {id} is out of range"
            )));
        }
    }
    if symbols.len() < params.source_symbols() as usize {
        return Ok(None);
    }
    let mut dec = Decoder::new(params.oti());
    for (id, data) in symbols {
        dec.add_new_packet(EncodingPacket::new(PayloadId::new(0, *id), data.to_vec()));
    }
    Ok(dec.get_result().map(|mut v| {
        v.truncate(params.len as usize);
        v
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_plus_a_few_symbols_from_any_passes_rebuild() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let e = encode(&data, 512, 0.3, 3).unwrap();
        let k = e.params.source_symbols() as usize;
        assert_eq!(e.passes[0].len(), k + (k as f64 * 0.3).ceil() as usize);
        // all symbol ids differ across passes: later passes are fresh
        let mut ids: Vec<u32> = e.passes.iter().flatten().map(|(i, _)| *i).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // take every third symbol of every pass until k + 2
        let picked: Vec<(u32, &[u8])> = e
            .passes
            .iter()
            .flatten()
            .step_by(3)
            .take(k + 2)
            .map(|(i, d)| (*i, d.as_slice()))
            .collect();
        assert_eq!(decode(e.params, &picked).unwrap().unwrap(), data);
        assert_eq!(decode(e.params, &picked[..k - 1]).unwrap(), None);
    }

    #[test]
    fn malformed_symbols_and_params_are_errors_not_panics() {
        let p = SegmentParams {
            len: 1000,
            symbol_size: 64,
        };
        assert!(decode(p, &[(0, &[0u8; 63][..])]).is_err());
        assert!(decode(p, &[(1 << 25, &[0u8; 64][..])]).is_err());
        for bad in [
            SegmentParams {
                len: 0,
                symbol_size: 64,
            },
            SegmentParams {
                len: 10,
                symbol_size: 0,
            },
            SegmentParams {
                len: 10,
                symbol_size: 63,
            },
            SegmentParams {
                len: u64::MAX,
                symbol_size: 64,
            },
            SegmentParams {
                len: 60_000_000,
                symbol_size: 8,
            },
        ] {
            assert!(decode(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
