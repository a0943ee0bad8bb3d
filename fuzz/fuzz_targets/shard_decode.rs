//! Shards and shard packs from a hostile drive: arbitrary bytes as a pack file (framing,
//! resynchronisation) and every record in it as a shard (decode + Merkle verification).
//! Oracles: no panic, bounded allocation, and a shard that verifies re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycelium::fec::pack::{Frame, PackReader};
use mycelium::fec::Shard;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Shard::decode_verified(data) {
        assert_eq!(
            s.encode(),
            data,
            "a verified shard must re-encode to its input"
        );
    }
    let mut input = mycelium::fec::pack::PACK_MAGIC.to_vec();
    input.extend_from_slice(data);
    let Ok(Ok(mut r)) = PackReader::open(input.as_slice()) else {
        return;
    };
    let mut frames = 0;
    while let Ok(Some(f)) = r.next_frame() {
        frames += 1;
        assert!(frames <= input.len() + 1, "reader does not make progress");
        if let Frame::Record { bytes, .. } = f {
            if Shard::decode_verified(&bytes).is_err() {
                r.unread(bytes);
            }
        }
    }
});
