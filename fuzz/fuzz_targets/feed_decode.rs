//! Feed files from a hostile recording: arbitrary bytes as a signed header, a symbol record
//! and a segment; whatever decodes must fit its limits, and a decodable record's symbol must
//! be exactly its declared size. A header that decodes re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycelium::fec::feed::{decode_record, unpack_segment, FileHeader};
use mycelium::fec::fountain;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FileHeader::decode(data) {
        assert_eq!(FileHeader::decode(&h.encode()).as_ref(), Ok(&h));
    }
    if let Ok(r) = decode_record(data) {
        assert_eq!(r.data.len(), r.params.symbol_size as usize);
        let _ = fountain::decode(r.params, &[(r.symbol, r.data)]);
    }
    if let Ok(bundles) = unpack_segment(data) {
        assert!(bundles.iter().map(|b| b.len()).sum::<usize>() <= data.len());
    }
});
