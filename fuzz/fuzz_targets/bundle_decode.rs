//! Decode and validate arbitrary bytes as a bundle, then check the signature. Oracles: no
//! panic, no unbounded allocation, and anything that decodes re-encodes to a bundle that
//! decodes to the same value (canonical form is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycelium::bundle::{Bundle, DecodeLimits, VerifiedBundle};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_bundle_len: 1 << 20,
        max_blocks: 64,
    };
    if let Ok(b) = Bundle::decode_with(data, &limits) {
        let again = b.encode();
        let b2 = Bundle::decode_with(&again, &limits).expect("canonical re-encoding must decode");
        assert_eq!(b, b2, "re-encoding changed the bundle");
        assert_eq!(
            b2.encode(),
            again,
            "canonical encoding is not a fixed point"
        );
        let _ = b.verify_signature();
    }
    let _ = VerifiedBundle::decode_with(data, &limits);
});
