//! Minimal CBOR plumbing for the bundle codec: a zero-copy cursor over an input slice that
//! pulls item headers with `ciborium-ll` and bounds every length against the bytes actually
//! left before anything is allocated, and an infallible writer of shortest-form headers.
//!
//! Owns: CBOR item framing. Knows nothing about BPv7 semantics.

use ciborium_ll::{Decoder, Header};

/// Why a CBOR item could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("input ends early at byte {0}")]
    Truncated(usize),
    #[error("malformed CBOR at byte {0}")]
    Syntax(usize),
    #[error("at byte {offset}: expected {expected}, found {found}")]
    Unexpected {
        offset: usize,
        expected: &'static str,
        found: String,
    },
    #[error("at byte {offset}: {what} of {len} bytes is longer than the {left} bytes left")]
    TooLong {
        offset: usize,
        what: &'static str,
        len: u64,
        left: usize,
    },
    #[error("at byte {0}: integer out of range")]
    Range(usize),
}

/// A cursor over a CBOR byte slice.
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

fn describe(h: &Header) -> String {
    match h {
        Header::Positive(n) => format!("unsigned integer {n}"),
        Header::Negative(_) => "negative integer".into(),
        Header::Float(_) => "float".into(),
        Header::Simple(s) => format!("simple value {s}"),
        Header::Tag(t) => format!("tag {t}"),
        Header::Break => "break".into(),
        Header::Bytes(_) => "byte string".into(),
        Header::Text(_) => "text string".into(),
        Header::Array(Some(n)) => format!("array of {n}"),
        Header::Array(None) => "indefinite array".into(),
        Header::Map(_) => "map".into(),
    }
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Reader { input, pos: 0 }
    }

    /// Current byte offset into the input.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    /// The input between two offsets (both previously returned by [`Reader::pos`]).
    pub fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        &self.input[from..to]
    }

    /// Pull the next item header. Lengths are checked against what is left, so a huge
    /// announced length is refused here, before any allocation.
    pub fn header(&mut self) -> Result<Header, CborError> {
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            return Err(CborError::Truncated(self.pos));
        }
        let mut dec = Decoder::from(rest);
        let h = dec.pull().map_err(|e| match e {
            ciborium_ll::Error::Io(_) => CborError::Truncated(self.input.len()),
            ciborium_ll::Error::Syntax(_) => CborError::Syntax(self.pos),
        })?;
        let start = self.pos;
        self.pos += dec.offset();
        match h {
            Header::Bytes(Some(n)) | Header::Text(Some(n)) if n > self.left() => {
                Err(CborError::TooLong {
                    offset: start,
                    what: "string",
                    len: n as u64,
                    left: self.left(),
                })
            }
            // Every array element or map entry takes at least one byte.
            Header::Array(Some(n)) | Header::Map(Some(n)) if n > self.left() => {
                Err(CborError::TooLong {
                    offset: start,
                    what: "container",
                    len: n as u64,
                    left: self.left(),
                })
            }
            h => Ok(h),
        }
    }

    fn unexpected(&self, offset: usize, expected: &'static str, h: &Header) -> CborError {
        CborError::Unexpected {
            offset,
            expected,
            found: describe(h),
        }
    }

    pub fn uint(&mut self) -> Result<u64, CborError> {
        let at = self.pos;
        match self.header()? {
            Header::Positive(n) => Ok(n),
            h => Err(self.unexpected(at, "unsigned integer", &h)),
        }
    }

    /// A CBOR integer (major type 0 or 1) as i64.
    pub fn int(&mut self) -> Result<i64, CborError> {
        let at = self.pos;
        match self.header()? {
            Header::Positive(n) => i64::try_from(n).map_err(|_| CborError::Range(at)),
            Header::Negative(n) => {
                let v = i64::try_from(n).map_err(|_| CborError::Range(at))?;
                Ok(-1 - v)
            }
            h => Err(self.unexpected(at, "integer", &h)),
        }
    }

    /// A definite-length array header; returns its length.
    pub fn array(&mut self) -> Result<usize, CborError> {
        let at = self.pos;
        match self.header()? {
            Header::Array(Some(n)) => Ok(n),
            h => Err(self.unexpected(at, "definite-length array", &h)),
        }
    }

    /// A definite-length byte string, borrowed from the input.
    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let at = self.pos;
        match self.header()? {
            Header::Bytes(Some(n)) => {
                let s = &self.input[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            h => Err(self.unexpected(at, "definite-length byte string", &h)),
        }
    }

    /// A definite-length UTF-8 text string, borrowed from the input.
    pub fn text(&mut self) -> Result<&'a str, CborError> {
        let at = self.pos;
        match self.header()? {
            Header::Text(Some(n)) => {
                let s = &self.input[self.pos..self.pos + n];
                self.pos += n;
                std::str::from_utf8(s).map_err(|_| CborError::Unexpected {
                    offset: at,
                    expected: "UTF-8 text",
                    found: "invalid UTF-8".into(),
                })
            }
            h => Err(self.unexpected(at, "definite-length text string", &h)),
        }
    }

    /// Skip `n` bytes that a header announced (already bounded by [`Reader::header`]).
    pub fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.input.len());
    }

    /// Look at the next header without consuming it.
    pub fn peek(&mut self) -> Result<Header, CborError> {
        let save = self.pos;
        let h = self.header();
        self.pos = save;
        h
    }

    /// Require that the whole input has been consumed.
    pub fn finish(&self) -> Result<(), CborError> {
        if self.left() == 0 {
            Ok(())
        } else {
            Err(CborError::Unexpected {
                offset: self.pos,
                expected: "end of input",
                found: format!("{} trailing bytes", self.left()),
            })
        }
    }
}

/// Shortest-form CBOR writer into a `Vec<u8>`. Writing to memory cannot fail.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        if arg < 24 {
            self.buf.push(m | arg as u8);
        } else if arg <= u8::MAX as u64 {
            self.buf.extend_from_slice(&[m | 24, arg as u8]);
        } else if arg <= u16::MAX as u64 {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(arg as u16).to_be_bytes());
        } else if arg <= u32::MAX as u64 {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(arg as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&arg.to_be_bytes());
        }
    }

    pub fn uint(&mut self, v: u64) {
        self.head(0, v);
    }

    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            self.head(0, v as u64);
        } else {
            self.head(1, (-1 - v) as u64);
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn array(&mut self, n: usize) {
        self.head(4, n as u64);
    }

    pub fn indefinite_array(&mut self) {
        self.buf.push(0x9f);
    }

    pub fn brk(&mut self) {
        self.buf.push(0xff);
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_on_boundaries() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut w = Writer::new();
            w.uint(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.uint().unwrap(), v);
            r.finish().unwrap();
        }
        for v in [-1i64, -24, -25, -256, -257, i64::MIN] {
            let mut w = Writer::new();
            w.int(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.int().unwrap(), v);
        }
    }

    #[test]
    fn huge_announced_length_is_refused_before_allocation() {
        // byte string announcing 2^32 bytes, with 3 bytes behind it
        let input = [0x5b, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3];
        let mut r = Reader::new(&input);
        assert!(matches!(r.bytes(), Err(CborError::TooLong { .. })));
        let arr = [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let mut r = Reader::new(&arr);
        assert!(matches!(r.array(), Err(CborError::TooLong { .. })));
    }
}
