//! Shard pack files (`*.msp`): an 8-byte file header `MYCPACK1`, then frames of
//! `MSR1` ‖ length (u32 BE) ‖ shard record. Frames resynchronise on the magic, so damage
//! costs the records it touches, not the rest of the file. Reading is streamed: at most one
//! record (bounded by [`MAX_RECORD`]) is in memory.

use super::MAX_SHARD_LEN;
use std::io::{self, Read};

pub const PACK_MAGIC: &[u8; 8] = b"MYCPACK1";
pub const REC_MAGIC: &[u8; 4] = b"MSR1";
/// Largest record accepted: the largest shard plus room for its header and proof.
pub const MAX_RECORD: u32 = MAX_SHARD_LEN + 64 * 1024;

/// Append one framed record to a pack being built in memory.
pub fn push_frame(pack: &mut Vec<u8>, record: &[u8]) {
    push_frame_with(pack, |p| p.extend_from_slice(record));
}

/// Append one framed record that `write` appends to the pack itself (so the record needs
/// no buffer of its own); its length is filled in after. `write` only appends, and
/// records are far below 4 GiB ([`MAX_RECORD`]).
pub fn push_frame_with(pack: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    pack.extend_from_slice(REC_MAGIC);
    let at = pack.len();
    pack.extend_from_slice(&[0; 4]);
    write(pack);
    let len = (pack.len() - at - 4) as u32;
    pack[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// What the reader found at some byte offset.
pub enum Frame {
    Record { offset: u64, bytes: Vec<u8> },
    Damage { offset: u64, reason: String },
}

pub struct PackReader<R: Read> {
    inner: R,
    back: Vec<u8>,
    back_pos: usize,
    offset: u64,
    done: bool,
    gave_up: bool,
    /// Bytes given back so far; bounded so a crafted file cannot make us rescan forever.
    reread: u64,
}

/// Most bytes a reader rescans after records that did not verify, per file.
pub const MAX_REREAD: u64 = 64 << 20;

impl<R: Read> Read for PackReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.back_pos < self.back.len() {
            let n = buf.len().min(self.back.len() - self.back_pos);
            buf[..n].copy_from_slice(&self.back[self.back_pos..self.back_pos + n]);
            self.back_pos += n;
            n
        } else {
            self.inner.read(buf)?
        };
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R: Read> PackReader<R> {
    /// Check the file header; `Err` says why this is not a pack.
    pub fn open(inner: R) -> io::Result<Result<PackReader<R>, String>> {
        let mut r = PackReader {
            inner,
            back: Vec::new(),
            back_pos: 0,
            offset: 0,
            done: false,
            gave_up: false,
            reread: 0,
        };
        let mut h = [0u8; 8];
        let n = r.fill(&mut h)?;
        Ok(if n == 0 {
            Err("empty file".into())
        } else if n < 8 {
            Err(format!("truncated: {n} bytes, not even a pack header"))
        } else if &h != PACK_MAGIC {
            Err("not a Mycelium shard pack (bad magic)".into())
        } else {
            Ok(r)
        })
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read until `buf` is full or the input ends; returns bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Give bytes back to be read again (after a record that did not decode, so scanning
    /// resumes right behind its header).
    /// Past [`MAX_REREAD`] the bytes are dropped instead and the rest of the file is
    /// skipped (the next frame says so).
    pub fn unread(&mut self, bytes: Vec<u8>) {
        self.reread += bytes.len() as u64;
        if self.reread > MAX_REREAD {
            self.gave_up = true;
            return;
        }
        self.offset -= bytes.len() as u64;
        let mut v = bytes;
        v.extend_from_slice(&self.back[self.back_pos..]);
        self.back = v;
        self.back_pos = 0;
    }

    /// The next frame, or `None` at the end of the file.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        if self.gave_up {
            self.done = true;
            return Ok(Some(Frame::Damage {
                offset: self.offset,
                reason: format!(
                    "more than {} MiB rescanned after damaged records: rest of the file skipped",
                    MAX_REREAD >> 20
                ),
            }));
        }
        let start = self.offset;
        let mut win = [0u8; 4];
        let n = self.fill(&mut win)?;
        if n == 0 {
            return Ok(None);
        }
        if n < 4 {
            self.done = true;
            return Ok(Some(Frame::Damage {
                offset: start,
                reason: format!("{n} stray bytes at the end"),
            }));
        }
        if &win != REC_MAGIC {
            // Scan forward, a chunk at a time, for the next record magic.
            let mut hay = win[1..].to_vec();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = self.fill(&mut chunk)?;
                if n == 0 {
                    self.done = true;
                    return Ok(Some(Frame::Damage {
                        offset: start,
                        reason: format!("{} unreadable bytes at the end", self.offset - start),
                    }));
                }
                hay.extend_from_slice(&chunk[..n]);
                if let Some(i) = hay.windows(4).position(|w| w == REC_MAGIC) {
                    self.unread(hay.split_off(i));
                    return Ok(Some(Frame::Damage {
                        offset: start,
                        reason: format!("{} unreadable bytes skipped", self.offset - start),
                    }));
                }
                let keep = hay.split_off(hay.len() - 3);
                hay = keep;
            }
        }
        let mut lb = [0u8; 4];
        let n = self.fill(&mut lb)?;
        if n < 4 {
            self.done = true;
            return Ok(Some(Frame::Damage {
                offset: start,
                reason: "truncated record header".into(),
            }));
        }
        let len = u32::from_be_bytes(lb);
        if len > MAX_RECORD {
            self.unread(lb.to_vec());
            return Ok(Some(Frame::Damage {
                offset: start,
                reason: format!(
                    "record announces {len} bytes, more than the {MAX_RECORD}-byte limit"
                ),
            }));
        }
        // Grows only as bytes actually arrive: a lying length cannot make us allocate it.
        let mut bytes = Vec::new();
        (&mut *self).take(u64::from(len)).read_to_end(&mut bytes)?;
        if bytes.len() < len as usize {
            self.done = true;
            return Ok(Some(Frame::Damage {
                offset: start,
                reason: format!("truncated record: {} of {len} bytes", bytes.len()),
            }));
        }
        Ok(Some(Frame::Record {
            offset: start,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(data: &[u8]) -> Vec<String> {
        let mut r = match PackReader::open(data).unwrap() {
            Ok(r) => r,
            Err(e) => return vec![format!("file: {e}")],
        };
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            out.push(match f {
                Frame::Record { offset, bytes } => format!("rec@{offset}:{}", bytes.len()),
                Frame::Damage { offset, reason } => format!("bad@{offset}:{reason}"),
            });
        }
        out
    }

    #[test]
    fn nested_record_headers_cannot_make_the_reader_rescan_forever() {
        // A file of nothing but "MSR1" + maximal length: every record fails and is given
        // back, and each rescan finds another header 8 bytes further on.
        let mut p = PACK_MAGIC.to_vec();
        while p.len() < 40 << 20 {
            p.extend_from_slice(REC_MAGIC);
            p.extend_from_slice(&MAX_RECORD.to_be_bytes());
        }
        let mut r = PackReader::open(p.as_slice()).unwrap().unwrap();
        let mut records = 0;
        let mut last = String::new();
        while let Some(f) = r.next_frame().unwrap() {
            match f {
                Frame::Record { bytes, .. } => {
                    records += 1;
                    r.unread(bytes);
                }
                Frame::Damage { reason, .. } => last = reason,
            }
        }
        assert!(records <= 6, "{records} records read");
        assert!(last.contains("rest of the file skipped"), "{last}");
    }

    #[test]
    fn frames_resync_after_junk_and_report_truncation() {
        let mut p = PACK_MAGIC.to_vec();
        push_frame(&mut p, b"hello");
        p.extend_from_slice(b"zzz");
        push_frame(&mut p, b"world!");
        let f = frames(&p);
        assert_eq!(f[0], "rec@8:5");
        assert!(f[1].starts_with("bad@21:"), "{f:?}");
        assert_eq!(f[2], "rec@24:6");
        let mut t = p.clone();
        t.truncate(t.len() - 2);
        assert!(frames(&t).last().unwrap().contains("truncated record"));
        assert_eq!(frames(b""), vec!["file: empty file"]);
        assert!(frames(b"GARBAGE!xx")[0].contains("bad magic"));
        // 4 GiB announced: refused without allocating
        let mut huge = PACK_MAGIC.to_vec();
        huge.extend_from_slice(REC_MAGIC);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(frames(&huge)[0].contains("more than the"));
    }
}
