//! Property tests: encode∘decode is the identity on every valid bundle we can build, and
//! no byte string (random or a mutated real bundle) makes the decoder panic.

mod common;
use common::vectors;
use mycelium::bundle::{
    block_types, primary::flags, Bundle, BundleBuilder, CanonicalBlock, CrcType, CreationTimestamp,
    Eid, PrimaryBlock, VerifiedBundle,
};
use mycelium::time::DtnTime;
use proptest::prelude::*;

fn eid() -> impl Strategy<Value = Eid> {
    prop_oneof![
        Just(Eid::Null),
        "[a-z0-9.-]{1,20}(/[a-zA-Z0-9_~-]{0,12}){0,2}".prop_map(|s| {
            let s = if s.contains('/') { s } else { format!("{s}/") };
            Eid::Dtn(format!("//{s}"))
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(node, service)| Eid::Ipn { node, service }),
    ]
}

fn crc() -> impl Strategy<Value = CrcType> {
    prop_oneof![
        Just(CrcType::None),
        Just(CrcType::Crc16),
        Just(CrcType::Crc32c)
    ]
}

fn bundle() -> impl Strategy<Value = Bundle> {
    (
        (
            eid(),
            eid(),
            eid(),
            1u64..u64::MAX,
            any::<u64>(),
            any::<u64>(),
        ),
        prop_oneof![Just(CrcType::Crc16), Just(CrcType::Crc32c)],
        proptest::option::of((0u64..1000, 1000u64..100_000)),
        proptest::collection::vec(
            (
                192u64..256,
                any::<u64>(),
                crc(),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..5,
        ),
        (crc(), proptest::collection::vec(any::<u8>(), 0..600)),
    )
        .prop_map(
            |((dst, src, rep, t, seq, life), pcrc, frag, ext, (paycrc, payload))| {
                let mut fl = flags::MUST_NOT_FRAGMENT;
                let fragment = frag.map(|(offset, total_adu_len)| {
                    fl = flags::IS_FRAGMENT;
                    mycelium::bundle::Fragment {
                        offset,
                        total_adu_len,
                    }
                });
                let primary = PrimaryBlock {
                    flags: fl,
                    crc: pcrc,
                    destination: dst,
                    source: if fragment.is_some() && src.is_null() {
                        Eid::dtn_node("x").unwrap()
                    } else {
                        src
                    },
                    report_to: rep,
                    created: CreationTimestamp {
                        time: DtnTime(t),
                        seq,
                    },
                    lifetime_ms: life,
                    fragment,
                };
                let mut blocks: Vec<CanonicalBlock> = ext
                    .into_iter()
                    .enumerate()
                    .map(|(i, (ty, fl, c, data))| CanonicalBlock {
                        block_type: ty,
                        number: 2 + i as u64,
                        flags: fl,
                        crc: c,
                        data: data.into(),
                    })
                    .collect();
                blocks.push(CanonicalBlock::new(
                    block_types::PAYLOAD,
                    1,
                    paycrc,
                    payload,
                ));
                Bundle { primary, blocks }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity(b in bundle()) {
        let bytes = b.encode();
        let back = Bundle::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &b);
        prop_assert_eq!(&back.encode(), &bytes);
        // Unsigned: structure is fine, but it must never be accepted for storage.
        prop_assert!(VerifiedBundle::decode(&bytes).is_err());
    }

    #[test]
    fn signed_bundles_verify_and_round_trip(
        dst in eid(),
        t in 0u64..u64::MAX / 2,
        seq in any::<u64>(),
        life in 1u64..u64::MAX / 2,
        hop in proptest::option::of(1u64..=255),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let vb = BundleBuilder::new(dst, CreationTimestamp { time: DtnTime(t), seq }, life)
            .hop_limit(hop)
            .payload(payload.clone())
            .sign(&vectors::alice())
            .unwrap();
        let back = VerifiedBundle::decode(vb.raw()).unwrap();
        prop_assert_eq!(back.bundle(), vb.bundle());
        prop_assert_eq!(back.bundle().payload(), &payload[..]);
        prop_assert_eq!(back.bundle().encode(), vb.raw().to_vec());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Bundle::decode(&bytes);
        let mut with_head = vec![0x9f];
        with_head.extend_from_slice(&bytes);
        let _ = VerifiedBundle::decode(&with_head);
    }

    #[test]
    fn mutated_real_bundles_never_panic_and_never_verify_changed(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
    ) {
        let good = vectors::all().remove(0).2.raw().to_vec();
        let mut b = good.clone();
        for (at, byte, op) in edits {
            if b.is_empty() { break; }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => { b.insert(i, byte); }
                _ => { b.remove(i); }
            }
        }
        if let Ok(vb) = VerifiedBundle::decode(&b) {
            // The only way to verify is to still mean the same bundle.
            let orig = Bundle::decode(&good).unwrap();
            prop_assert_eq!(vb.bundle().payload(), orig.payload());
            prop_assert_eq!(&vb.bundle().primary, &orig.primary);
        }
    }
}
