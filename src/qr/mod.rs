//! QR frames: bundles as a sequence of QR codes for screens and paper. The bundles are
//! packed like a feed segment and fountain-coded (RaptorQ, `fec::fountain`), one symbol
//! per frame, so any `K` (+ a couple) frames of a sequence, in any order, rebuild it. Every
//! frame carries a Merkle proof to the sequence id, so a forged frame is refused on its own
//! and cannot spoil a rebuild. A frame is text in QR's alphanumeric mode: `MYC1:` and the
//! frame's bytes in base45 (RFC 9285), which ordinary phone cameras and `zbarimg` read as
//! plain text. Spec: `bundles/README.md` §12.
//!
//! Pure: no I/O. Rendering and finding codes in images: [`image`].

pub mod image;

use crate::fec::feed::{pack_segment, unpack_segment};
use crate::fec::fountain::{self, SegmentParams};

/// Every frame's text starts with this.
pub const PREFIX: &str = "MYC1:";
/// Bytes of the sequence id, and of each hash in a frame's proof: 96 bits, so forging a
/// frame (a second preimage) is out of reach, while a proof stays small enough to leave
/// most of a frame for data.
pub const HASH_LEN: usize = 12;
/// Fixed header bytes: sequence id, frames, payload length, symbol size, frame index.
pub const HEADER_LEN: usize = HASH_LEN + 2 + 4 + 2 + 2;
/// Most frames in one sequence (the index is 16 bits).
pub const MAX_FRAMES: usize = 65_535;
/// Largest payload one sequence carries (64 KiB frames would not be read by anyone).
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Default share of frames that may be lost: a sequence has `(K + 2) / (1 − loss)` frames.
pub const DEFAULT_LOSS: f64 = 0.4;

const LEAF: &str = "mycelium qr frame leaf v1";
const NODE: &str = "mycelium qr frame node v1";

pub type SeqId = [u8; HASH_LEN];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("not a Mycelium frame (it does not start with {PREFIX})")]
    NotOurs,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("forged or damaged frame {index} of sequence {seq}: its proof does not lead to the sequence id")]
    Forged { seq: String, index: u16 },
    #[error("cannot make frames: {0}")]
    Params(String),
    #[error("sequence {seq}: {reason}")]
    Rebuild { seq: String, reason: String },
}

/// One decoded, verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: SeqId,
    /// Frames in the sequence.
    pub frames: u16,
    pub params: SegmentParams,
    pub index: u16,
    pub proof: Vec<[u8; HASH_LEN]>,
    pub symbol: Vec<u8>,
}

impl Frame {
    /// Frames needed to rebuild the sequence (its source symbols; a couple more make
    /// failure vanishingly rare).
    pub fn needed(&self) -> u32 {
        self.params.source_symbols()
    }

    fn fixed(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&self.seq);
        b.extend_from_slice(&self.frames.to_be_bytes());
        // validate() bounds the length far below 2^32
        b.extend_from_slice(&(self.params.len as u32).to_be_bytes());
        b.extend_from_slice(&self.params.symbol_size.to_be_bytes());
        b.extend_from_slice(&self.index.to_be_bytes());
        b
    }

    /// The frame's bytes: header, proof, symbol.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.fixed();
        for h in &self.proof {
            b.extend_from_slice(h);
        }
        b.extend_from_slice(&self.symbol);
        b
    }

    /// The frame as QR text.
    pub fn to_text(&self) -> String {
        let mut s = String::from(PREFIX);
        s.push_str(&base45_encode(&self.to_bytes()));
        s
    }

    /// Parse and verify a frame's bytes: well formed, and its proof leads to its sequence
    /// id (so it belongs to the sequence it claims, unaltered).
    pub fn from_bytes(b: &[u8]) -> Result<Frame, QrError> {
        let bad = |s: String| Err(QrError::Malformed(s));
        if b.len() < HEADER_LEN {
            return bad(format!("{} bytes, shorter than a header", b.len()));
        }
        let mut seq = [0u8; HASH_LEN];
        seq.copy_from_slice(&b[..HASH_LEN]);
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let frames = u16_at(HASH_LEN);
        let len = u32::from_be_bytes([
            b[HASH_LEN + 2],
            b[HASH_LEN + 3],
            b[HASH_LEN + 4],
            b[HASH_LEN + 5],
        ]);
        let symbol_size = u16_at(HASH_LEN + 6);
        let index = u16_at(HASH_LEN + 8);
        let params = SegmentParams {
            len: u64::from(len),
            symbol_size,
        };
        params
            .validate()
            .map_err(|e| QrError::Malformed(e.to_string()))?;
        if u64::from(len) > MAX_PAYLOAD {
            return bad(format!("payload of {len} bytes exceeds {MAX_PAYLOAD}"));
        }
        if frames == 0 || index >= frames || u32::from(frames) < params.source_symbols() {
            return bad(format!(
                "frame {index} of {frames} for {} source symbols",
                params.source_symbols()
            ));
        }
        let depth = depth(frames) as usize;
        let want = HEADER_LEN + depth * HASH_LEN + symbol_size as usize;
        if b.len() != want {
            return bad(format!("{} bytes, its header says {want}", b.len()));
        }
        let proof: Vec<[u8; HASH_LEN]> = b[HEADER_LEN..HEADER_LEN + depth * HASH_LEN]
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let f = Frame {
            seq,
            frames,
            params,
            index,
            proof,
            symbol: b[HEADER_LEN + depth * HASH_LEN..].to_vec(),
        };
        if root_from_proof(leaf(&f.fixed(), &f.symbol), index, &f.proof) != seq {
            return Err(QrError::Forged {
                seq: hex::encode(seq),
                index,
            });
        }
        Ok(f)
    }

    /// Parse and verify a frame from the text of a QR code.
    pub fn from_text(t: &str) -> Result<Frame, QrError> {
        let body = t.trim().strip_prefix(PREFIX).ok_or(QrError::NotOurs)?;
        let b = base45_decode(body).map_err(QrError::Malformed)?;
        Frame::from_bytes(&b)
    }
}

fn short_hash(context: &str, parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    let mut o = [0u8; HASH_LEN];
    o.copy_from_slice(&h.finalize().as_bytes()[..HASH_LEN]);
    o
}

fn leaf(fixed: &[u8], symbol: &[u8]) -> [u8; HASH_LEN] {
    // The leaf's own sequence id field is zeroed: the id is the root, made after.
    let mut f = fixed.to_vec();
    f[..HASH_LEN].fill(0);
    short_hash(LEAF, &[&f, symbol])
}

fn node(l: &[u8; HASH_LEN], r: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    short_hash(NODE, &[l, r])
}

fn depth(frames: u16) -> u32 {
    u32::from(frames)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
}

fn root_from_proof(mut h: [u8; HASH_LEN], index: u16, proof: &[[u8; HASH_LEN]]) -> [u8; HASH_LEN] {
    let mut i = index;
    for s in proof {
        h = if i & 1 == 0 { node(&h, s) } else { node(s, &h) };
        i >>= 1;
    }
    h
}

/// How a sequence is cut into frames.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Bytes one frame may hold (what the chosen QR version and error correction carry).
    pub frame_bytes: usize,
    /// Share of frames that may be lost, 0 ≤ loss < 1.
    pub loss: f64,
}

/// Cut `bundles` into frames: packed, fountain-coded, each frame proved to the sequence
/// id. Frames come in index order (source symbols first).
pub fn encode(bundles: &[&[u8]], layout: Layout) -> Result<Vec<Frame>, QrError> {
    if bundles.is_empty() {
        return Err(QrError::Params("no bundles to put in frames".into()));
    }
    if !(0.0..0.95).contains(&layout.loss) {
        return Err(QrError::Params(format!(
            "a loss of {} is not in 0..0.95",
            layout.loss
        )));
    }
    let payload = pack_segment(bundles);
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(QrError::Params(format!(
            "{} bytes of bundles; one sequence carries at most {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    // The proof's length depends on the frame count, which depends on the symbol size:
    // try deeper trees until the count fits the depth assumed.
    for d in 0..=16usize {
        let room = layout.frame_bytes.saturating_sub(HEADER_LEN + d * HASH_LEN);
        let symbol_size = (room / 8 * 8).min(u16::MAX as usize / 8 * 8);
        if symbol_size < 8 {
            break;
        }
        let params = SegmentParams {
            len: payload.len() as u64,
            symbol_size: symbol_size as u16,
        };
        if params.validate().is_err() {
            continue;
        }
        let k = params.source_symbols() as usize;
        let n = ((k + 2) as f64 / (1.0 - layout.loss)).ceil() as usize;
        if n > MAX_FRAMES {
            return Err(QrError::Params(format!(
                "{} bytes need {n} frames of {symbol_size} bytes; at most {MAX_FRAMES}: use a larger symbol",
                payload.len()
            )));
        }
        if depth(n as u16) as usize > d {
            continue;
        }
        let enc = fountain::encode(&payload, params.symbol_size, (n - k) as f64 / k as f64, 1)
            .map_err(|e| QrError::Params(e.to_string()))?;
        let symbols: Vec<(u32, Vec<u8>)> = enc.passes.into_iter().flatten().take(n).collect();
        let n = symbols.len();
        let mut frames: Vec<Frame> = symbols
            .into_iter()
            .map(|(id, data)| Frame {
                seq: [0; HASH_LEN],
                frames: n as u16,
                params,
                index: id as u16,
                proof: Vec::new(),
                symbol: data,
            })
            .collect();
        // Merkle tree over the frames, padded with zero leaves to a power of two.
        let width = 1usize << depth(n as u16);
        let mut level: Vec<[u8; HASH_LEN]> =
            frames.iter().map(|f| leaf(&f.fixed(), &f.symbol)).collect();
        level.resize(width, [0; HASH_LEN]);
        let mut pos: Vec<usize> = (0..n).collect();
        while level.len() > 1 {
            for (f, p) in frames.iter_mut().zip(pos.iter_mut()) {
                f.proof.push(level[*p ^ 1]);
                *p >>= 1;
            }
            level = level.chunks(2).map(|c| node(&c[0], &c[1])).collect();
        }
        let seq = level[0];
        for f in &mut frames {
            f.seq = seq;
        }
        return Ok(frames);
    }
    Err(QrError::Params(format!(
        "a frame of {} bytes has no room for a symbol",
        layout.frame_bytes
    )))
}

/// Rebuild a sequence from verified frames of it (any order, repeats allowed): `None`
/// while more are needed, else the bundles it carried (raw, not yet verified).
pub fn decode(frames: &[Frame]) -> Result<Option<Vec<Vec<u8>>>, QrError> {
    let Some(first) = frames.first() else {
        return Ok(None);
    };
    let err = |reason: String| QrError::Rebuild {
        seq: hex::encode(first.seq),
        reason,
    };
    let mut seen = std::collections::HashSet::new();
    let mut symbols: Vec<(u32, &[u8])> = Vec::new();
    for f in frames {
        if f.seq != first.seq || f.params != first.params || f.frames != first.frames {
            return Err(err("frames of another sequence mixed in".into()));
        }
        if seen.insert(f.index) {
            symbols.push((u32::from(f.index), &f.symbol));
        }
    }
    let data = match fountain::decode(first.params, &symbols) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let bundles = unpack_segment(&data).map_err(|e| err(format!("malformed payload: {e}")))?;
    Ok(Some(bundles.into_iter().map(<[u8]>::to_vec).collect()))
}

pub(crate) const B45: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// RFC 9285 base45: two bytes become three characters of QR's alphanumeric set.
pub fn base45_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len().div_ceil(2) * 3);
    for c in b.chunks(2) {
        let mut n = match c {
            [x, y] => u32::from(*x) * 256 + u32::from(*y),
            [x] => u32::from(*x),
            _ => 0,
        };
        let digits = if c.len() == 2 { 3 } else { 2 };
        for _ in 0..digits {
            s.push(B45[(n % 45) as usize] as char);
            n /= 45;
        }
    }
    s
}

/// Decode RFC 9285 base45, strictly (no values beyond a byte pair's range).
pub fn base45_decode(s: &str) -> Result<Vec<u8>, String> {
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| {
            B45.iter()
                .position(|&x| x == c)
                .map(|v| v as u32)
                .ok_or_else(|| format!("{:?} is not a base45 character", c as char))
        })
        .collect::<Result<_, _>>()?;
    if vals.len() % 3 == 1 {
        return Err(format!("{} base45 characters: a dangling one", vals.len()));
    }
    let mut out = Vec::with_capacity(vals.len() / 3 * 2 + 1);
    for c in vals.chunks(3) {
        match c {
            [a, b, d] => {
                let n = a + b * 45 + d * 45 * 45;
                if n > 0xffff {
                    return Err("base45 triple beyond two bytes".into());
                }
                out.push((n >> 8) as u8);
                out.push(n as u8);
            }
            [a, b] => {
                let n = a + b * 45;
                if n > 0xff {
                    return Err("base45 pair beyond one byte".into());
                }
                out.push(n as u8);
            }
            _ => return Err("base45 length".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base45_matches_rfc_9285_examples_and_round_trips() {
        assert_eq!(base45_encode(b"AB"), "BB8");
        assert_eq!(base45_encode(b"Hello!!"), "%69 VD92EX0");
        assert_eq!(base45_encode(b"base-45"), "UJCLQE7W581");
        assert_eq!(base45_decode("QED8WEX0").unwrap(), b"ietf!");
        assert!(base45_decode("GGW").is_err(), "65535 + 1 is out of range");
        assert!(base45_decode("ab").is_err(), "lower case is not base45");
        for n in 0..40 {
            let v: Vec<u8> = (0..n).map(|i| (i * 97 + 13) as u8).collect();
            assert_eq!(base45_decode(&base45_encode(&v)).unwrap(), v);
        }
    }

    fn bundles() -> Vec<Vec<u8>> {
        (0..5)
            .map(|i| (0..(700 + i * 311)).map(|j| (j * 7 + i) as u8).collect())
            .collect()
    }

    #[test]
    fn any_large_enough_subset_in_any_order_rebuilds() {
        let b = bundles();
        let refs: Vec<&[u8]> = b.iter().map(|x| x.as_slice()).collect();
        let frames = encode(
            &refs,
            Layout {
                frame_bytes: 300,
                loss: 0.4,
            },
        )
        .unwrap();
        let k = frames[0].needed() as usize;
        assert!(frames.len() as f64 * 0.6 >= (k + 2) as f64);
        for f in &frames {
            assert!(f.to_bytes().len() <= 300);
            let back = Frame::from_text(&f.to_text()).unwrap();
            assert_eq!(&back, f);
        }
        // every third frame dropped, the rest reversed
        let mut some: Vec<Frame> = frames
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(_, f)| f.clone())
            .collect();
        some.reverse();
        assert_eq!(decode(&some).unwrap().unwrap(), b);
        assert_eq!(decode(&some[..k - 1]).unwrap(), None);
    }

    #[test]
    fn altered_or_foreign_frames_are_refused_alone() {
        let b = bundles();
        let refs: Vec<&[u8]> = b.iter().map(|x| x.as_slice()).collect();
        let layout = Layout {
            frame_bytes: 400,
            loss: 0.3,
        };
        let frames = encode(&refs, layout).unwrap();
        let good = frames[3].to_bytes();
        // any single flipped bit of the symbol, proof or header
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(Frame::from_bytes(&bad).is_err(), "byte {i}");
        }
        // a symbol swapped in from another sequence under this sequence's id and proof
        let other = encode(&refs[..2], layout).unwrap();
        let mut forged = frames[3].clone();
        forged.symbol = other[3].symbol.clone();
        forged.symbol.resize(frames[3].symbol.len(), 0);
        assert!(matches!(
            Frame::from_bytes(&forged.to_bytes()),
            Err(QrError::Forged { index: 3, .. })
        ));
        assert_eq!(Frame::from_text("HELLO WORLD"), Err(QrError::NotOurs));
        assert!(matches!(
            Frame::from_text("MYC1:abc"),
            Err(QrError::Malformed(_))
        ));
        assert!(Frame::from_bytes(&good[..good.len() - 1]).is_err());
        assert!(decode(&[frames[0].clone(), other[0].clone()]).is_err());
    }
}
