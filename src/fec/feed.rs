//! The broadcast feed's formats: segments (a CBOR array of bundle byte strings), symbol
//! records, and the signed file header (see `transport::broadcast` for the file layout and
//! `bundles/README.md` §9). Pure: encoding and strict, bounded decoding only.

use super::fountain::SegmentParams;
use crate::bundle::cbor::{Reader, Writer};
use crate::bundle::Eid;

pub const FEED_MAGIC: &[u8; 8] = b"MYCFEED1";
/// Domain separation for the header signature.
pub const DOMAIN: &[u8] = b"mycelium/feed/v1";

/// Pack bundles into a segment: a CBOR array of byte strings.
pub fn pack_segment(bundles: &[&[u8]]) -> Vec<u8> {
    let mut w = Writer::with_capacity(bundles.iter().map(|b| b.len() + 5).sum::<usize>() + 5);
    w.array(bundles.len());
    for b in bundles {
        w.bytes(b);
    }
    w.into_vec()
}

/// The bundles in a segment (borrowed), or why it is malformed.
pub fn unpack_segment(seg: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut r = Reader::new(seg);
    let n = r.array().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.bytes().map_err(|e| e.to_string())?);
    }
    r.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

pub struct Record<'a> {
    pub segment: [u8; 32],
    pub params: SegmentParams,
    pub symbol: u32,
    pub data: &'a [u8],
}

pub fn encode_record(segment: &[u8; 32], p: SegmentParams, symbol: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(data.len() + 64);
    w.array(5);
    w.bytes(segment);
    w.uint(p.len);
    w.uint(p.symbol_size.into());
    w.uint(symbol.into());
    w.bytes(data);
    w.into_vec()
}

pub fn decode_record(b: &[u8]) -> Result<Record<'_>, String> {
    let mut r = Reader::new(b);
    let e = |x: crate::bundle::cbor::CborError| x.to_string();
    if r.array().map_err(e)? != 5 {
        return Err("record is not a 5-element array".into());
    }
    let segment: [u8; 32] = r
        .bytes()
        .map_err(e)?
        .try_into()
        .map_err(|_| "segment id is not 32 bytes".to_string())?;
    let len = r.uint().map_err(e)?;
    let symbol_size = u16::try_from(r.uint().map_err(e)?).map_err(|_| "symbol size".to_string())?;
    let symbol = u32::try_from(r.uint().map_err(e)?).map_err(|_| "symbol id".to_string())?;
    let data = r.bytes().map_err(e)?;
    r.finish().map_err(e)?;
    let params = SegmentParams { len, symbol_size };
    params.validate().map_err(|x| x.to_string())?;
    if data.len() != symbol_size as usize {
        return Err(format!("symbol is {} bytes, not {symbol_size}", data.len()));
    }
    Ok(Record {
        segment,
        params,
        symbol,
        data,
    })
}

/// The signed header of a feed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    pub publisher: Eid,
    pub feed_id: [u8; 16],
    pub pass: u32,
    pub seq: u32,
    pub file_len: u64,
    pub hashes: Vec<[u8; 32]>,
}

impl FileHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(100 + 34 * self.hashes.len());
        w.array(7);
        w.uint(1);
        w.text(&self.publisher.to_string());
        w.bytes(&self.feed_id);
        w.uint(self.pass.into());
        w.uint(self.seq.into());
        w.uint(self.file_len);
        w.array(self.hashes.len());
        for h in &self.hashes {
            w.bytes(h);
        }
        w.into_vec()
    }

    pub fn decode(b: &[u8]) -> Result<FileHeader, String> {
        let mut r = Reader::new(b);
        let e = |x: crate::bundle::cbor::CborError| x.to_string();
        if r.array().map_err(e)? != 7 || r.uint().map_err(e)? != 1 {
            return Err("unknown feed header version".into());
        }
        let publisher = Eid::parse(r.text().map_err(e)?).map_err(|x| x.to_string())?;
        let feed_id: [u8; 16] = r
            .bytes()
            .map_err(e)?
            .try_into()
            .map_err(|_| "feed id is not 16 bytes".to_string())?;
        let pass = u32::try_from(r.uint().map_err(e)?).map_err(|_| "pass".to_string())?;
        let seq = u32::try_from(r.uint().map_err(e)?).map_err(|_| "seq".to_string())?;
        let file_len = r.uint().map_err(e)?;
        let n = r.array().map_err(e)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            hashes.push(
                r.bytes()
                    .map_err(e)?
                    .try_into()
                    .map_err(|_| "record hash is not 32 bytes".to_string())?,
            );
        }
        r.finish().map_err(e)?;
        Ok(FileHeader {
            publisher,
            feed_id,
            pass,
            seq,
            file_len,
            hashes,
        })
    }
}
