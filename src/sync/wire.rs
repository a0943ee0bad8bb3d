//! Sync frames on the wire: `len (u32 BE) ‖ type (u8) ‖ body`, `len` counting type and
//! body. Lengths are checked against the caller's limit before anything is allocated.
//! Pure: encodes to and decodes from byte slices; the transports do the reading.
//!
//! | type | frame  | body                                             |
//! |------|--------|--------------------------------------------------|
//! | 1    | Hello  | version (u64 BE) ‖ item count (u64 BE)           |
//! | 2    | Recon  | a negentropy message                             |
//! | 3    | Want   | n × 32-byte bundle keys (n ≥ 1)                  |
//! | 4    | Bundle | one encoded BPv7 bundle                          |
//! | 5    | Done   | empty                                            |
//! | 6    | Error  | UTF-8 reason (≤ 1024 bytes), then the sender closes |
//! | 7    | Spray  | copies handed over (u32 BE, ≥ 1) ‖ one encoded BPv7 bundle |

/// Bytes before the body: length and type.
pub const HEADER: usize = 5;
/// Largest frame other than `Bundle` (a `Want` of 4096 keys fits, with room).
pub const MAX_CONTROL: usize = 256 * 1024;
/// Default largest `Bundle` frame: the largest bundle the decoder accepts, plus the type.
pub const MAX_BUNDLE_FRAME: usize = 64 * 1024 * 1024 + 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u64,
        items: u64,
    },
    Recon(Vec<u8>),
    Want(Vec<[u8; 32]>),
    Bundle(Vec<u8>),
    Done,
    Error(String),
    /// A bundle under a spray-and-wait copy limit, with the copies the receiver may hand on.
    Spray {
        copies: u32,
        bundle: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: String },
}

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Recon(_) => 2,
            Frame::Want(_) => 3,
            Frame::Bundle(_) => 4,
            Frame::Done => 5,
            Frame::Error(_) => 6,
            Frame::Spray { .. } => 7,
        }
    }

    /// The whole frame, header included.
    pub fn encode(&self) -> Vec<u8> {
        let body_len = match self {
            Frame::Hello { .. } => 16,
            Frame::Recon(b) | Frame::Bundle(b) => b.len(),
            Frame::Want(k) => 32 * k.len(),
            Frame::Done => 0,
            Frame::Error(s) => error_cut(s),
            Frame::Spray { bundle, .. } => 4 + bundle.len(),
        };
        let mut out = Vec::with_capacity(HEADER + body_len);
        out.extend_from_slice(&((body_len + 1) as u32).to_be_bytes());
        out.push(self.type_byte());
        match self {
            Frame::Hello { version, items } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&items.to_be_bytes());
            }
            Frame::Recon(b) | Frame::Bundle(b) => out.extend_from_slice(b),
            Frame::Want(keys) => keys.iter().for_each(|k| out.extend_from_slice(k)),
            Frame::Done => {}
            Frame::Error(s) => out.extend_from_slice(&s.as_bytes()[..body_len]),
            Frame::Spray { copies, bundle } => {
                out.extend_from_slice(&copies.to_be_bytes());
                out.extend_from_slice(bundle);
            }
        }
        out
    }

    /// Header of a spray frame: the caller sends `copies` (u32 BE) and the bundle next.
    pub fn spray_header(bundle_len: usize) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&((bundle_len + 5) as u32).to_be_bytes());
        h[4] = 7;
        h
    }

    /// Header of a bundle frame whose body (the bundle bytes) the caller sends next,
    /// so large bundles are not copied into a frame buffer.
    pub fn bundle_header(bundle_len: usize) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&((bundle_len + 1) as u32).to_be_bytes());
        h[4] = 4;
        h
    }

    /// The length field of a header: how many bytes follow it. Checked against
    /// `max_bundle` (for any frame) before the caller allocates.
    pub fn body_len(header: [u8; 4], max_bundle: usize) -> Result<usize, WireError> {
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > max_bundle.max(MAX_CONTROL) {
            return Err(WireError::Oversized {
                len,
                max: max_bundle.max(MAX_CONTROL),
            });
        }
        Ok(len)
    }

    /// [`Frame::decode`] of a frame of type `t` whose body was read on its own: a bundle
    /// frame takes `body` as it is (no copy).
    pub fn decode_body(t: u8, mut body: Vec<u8>) -> Result<Frame, WireError> {
        if t == 4 {
            return Ok(Frame::Bundle(body));
        }
        // A Spray frame: the copies field is taken off the front (a move within `body`, no
        // second buffer).
        if t == 7 && body.len() >= 4 {
            let copies = [body[0], body[1], body[2], body[3]];
            body.drain(..4);
            return Frame::spray(copies, body);
        }
        let mut buf = Vec::with_capacity(body.len() + 1);
        buf.push(t);
        buf.extend_from_slice(&body);
        Frame::decode(buf)
    }

    /// A Spray frame from its copies field and the bundle after it, each read on its own
    /// (so the bundle, perhaps megabytes, is taken as it is, not copied).
    pub fn spray(copies: [u8; 4], bundle: Vec<u8>) -> Result<Frame, WireError> {
        let bad = |reason: &str| WireError::Malformed {
            frame: "Spray",
            reason: reason.to_string(),
        };
        if bundle.is_empty() {
            return Err(bad("shorter than copies and a bundle"));
        }
        let copies = u32::from_be_bytes(copies);
        if copies == 0 {
            return Err(bad("hands over zero copies"));
        }
        Ok(Frame::Spray { copies, bundle })
    }

    /// Decode a frame from what follows the length field (type byte and body).
    pub fn decode(buf: Vec<u8>) -> Result<Frame, WireError> {
        let (&t, _) = buf.split_first().ok_or(WireError::Empty)?;
        if t != 4 && t != 7 && buf.len() > MAX_CONTROL {
            return Err(WireError::Oversized {
                len: buf.len(),
                max: MAX_CONTROL,
            });
        }
        let bad = |frame: &'static str, reason: &str| WireError::Malformed {
            frame,
            reason: reason.to_string(),
        };
        let body = &buf[1..];
        Ok(match t {
            1 => {
                if body.len() != 16 {
                    return Err(bad("Hello", "body is not 16 bytes"));
                }
                let mut v = [0u8; 8];
                let mut n = [0u8; 8];
                v.copy_from_slice(&body[..8]);
                n.copy_from_slice(&body[8..]);
                Frame::Hello {
                    version: u64::from_be_bytes(v),
                    items: u64::from_be_bytes(n),
                }
            }
            2 => Frame::Recon(body.to_vec()),
            3 => {
                if body.is_empty() || !body.len().is_multiple_of(32) {
                    return Err(bad("Want", "body is not a non-empty list of 32-byte keys"));
                }
                Frame::Want(
                    body.chunks_exact(32)
                        .map(|c| {
                            let mut k = [0u8; 32];
                            k.copy_from_slice(c);
                            k
                        })
                        .collect(),
                )
            }
            4 => {
                let mut buf = buf;
                buf.remove(0);
                Frame::Bundle(buf)
            }
            5 => {
                if !body.is_empty() {
                    return Err(bad("Done", "has a body"));
                }
                Frame::Done
            }
            6 => {
                if body.len() > 1024 {
                    return Err(bad("Error", "reason longer than 1024 bytes"));
                }
                Frame::Error(
                    String::from_utf8(body.to_vec())
                        .map_err(|_| bad("Error", "reason is not UTF-8"))?,
                )
            }
            7 => {
                if body.len() < 5 {
                    return Err(bad("Spray", "shorter than copies and a bundle"));
                }
                Frame::spray([body[0], body[1], body[2], body[3]], body[4..].to_vec())?
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// Bytes of an error reason that go on the wire: at most 1024, cut at a character edge.
fn error_cut(s: &str) -> usize {
    let mut n = s.len().min(1024);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(f: Frame) {
        let enc = f.encode();
        let mut h = [0u8; 4];
        h.copy_from_slice(&enc[..4]);
        let len = Frame::body_len(h, MAX_BUNDLE_FRAME).unwrap();
        assert_eq!(len, enc.len() - 4);
        assert_eq!(Frame::decode(enc[4..].to_vec()).unwrap(), f);
        // As a stream driver reads it: the type byte, then the body on its own.
        assert_eq!(Frame::decode_body(enc[4], enc[5..].to_vec()).unwrap(), f);
    }

    #[test]
    fn frames_round_trip() {
        round(Frame::Hello {
            version: 1,
            items: 7,
        });
        round(Frame::Recon(vec![0x61, 1, 2]));
        round(Frame::Want(vec![[1; 32], [2; 32]]));
        round(Frame::Bundle(vec![0x9f, 0xff]));
        round(Frame::Done);
        round(Frame::Spray {
            copies: 3,
            bundle: vec![0x9f, 0xff],
        });
        assert!(Frame::decode(vec![7, 0, 0, 0, 0, 0x9f]).is_err());
        // Zero copies, or copies and no bundle, refused however the body was read.
        for body in [vec![0, 0, 0, 0, 0x9f], vec![0, 0, 0, 1], vec![0, 1]] {
            assert!(Frame::decode_body(7, body.clone()).is_err(), "{body:?}");
            let mut whole = vec![7];
            whole.extend_from_slice(&body);
            assert!(Frame::decode(whole).is_err(), "{body:?}");
        }
        assert!(Frame::spray([0, 0, 0, 2], Vec::new()).is_err());
        assert_eq!(
            Frame::spray([0, 0, 1, 2], vec![0x9f]).unwrap(),
            Frame::Spray {
                copies: 258,
                bundle: vec![0x9f]
            }
        );
        round(Frame::Error("no".into()));
        let long = "é".repeat(600);
        let enc = Frame::Error(long).encode();
        assert!(matches!(Frame::decode(enc[4..].to_vec()), Ok(Frame::Error(s)) if s.len() == 1024));
        assert!(Frame::decode(vec![6, 0xff]).is_err());
        let h = Frame::bundle_header(10);
        assert_eq!(Frame::body_len([h[0], h[1], h[2], h[3]], 100).unwrap(), 11);
    }

    #[test]
    fn bad_frames_are_refused_before_allocation() {
        assert!(matches!(
            Frame::body_len(u32::MAX.to_be_bytes(), MAX_BUNDLE_FRAME),
            Err(WireError::Oversized { .. })
        ));
        assert_eq!(Frame::body_len([0; 4], 10), Err(WireError::Empty));
        assert_eq!(Frame::decode(vec![9]), Err(WireError::UnknownType(9)));
        assert!(Frame::decode(vec![3, 1, 2]).is_err());
        assert!(Frame::decode(vec![3]).is_err());
        assert!(Frame::decode(vec![1, 0]).is_err());
        assert!(Frame::decode(vec![5, 0]).is_err());
        let mut big = vec![2u8];
        big.resize(MAX_CONTROL + 2, 0);
        assert!(matches!(
            Frame::decode(big),
            Err(WireError::Oversized { .. })
        ));
    }
}
