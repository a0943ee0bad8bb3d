//! Interoperability with the independent `bp7` crate, in both directions: it decodes what
//! we write (also see `golden.rs` and `cli.rs`), and we decode what it writes.

mod common;
use common::vectors;
use mycelium::bundle::{
    block_types, Bundle, BundleBuilder, CreationTimestamp, Eid, VerifiedBundle,
};
use mycelium::time::DtnTime;

fn bp7_bundle(crc: u8, with_age: bool, time: u64) -> Vec<u8> {
    use bp7::flags::{BlockControlFlags, BundleControlFlags};
    let src = bp7::EndpointID::try_from("dtn://alpha/app").unwrap();
    let dst = bp7::EndpointID::try_from("dtn://beta/inbox").unwrap();
    let primary = bp7::primary::PrimaryBlockBuilder::default()
        .bundle_control_flags(BundleControlFlags::BUNDLE_MUST_NOT_FRAGMENTED.bits())
        .destination(dst)
        .source(src.clone())
        .report_to(src)
        .creation_timestamp(bp7::CreationTimestamp::with_time_and_seq(time, 3))
        .lifetime(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut blocks = vec![
        bp7::canonical::new_payload_block(BlockControlFlags::empty(), b"from bp7".to_vec()),
        bp7::canonical::new_hop_count_block(2, BlockControlFlags::empty(), 16),
        bp7::canonical::new_previous_node_block(
            3,
            BlockControlFlags::empty(),
            bp7::EndpointID::try_from("dtn://gamma/").unwrap(),
        ),
    ];
    if with_age {
        blocks.push(bp7::canonical::new_bundle_age_block(
            4,
            BlockControlFlags::empty(),
            1234,
        ));
    }
    let mut b = bp7::Bundle::new(primary, blocks);
    b.sort_canonicals();
    b.set_crc(crc);
    b.to_cbor()
}

#[test]
fn we_decode_what_bp7_writes() {
    for crc in [bp7::crc::CRC_16, bp7::crc::CRC_32] {
        for (with_age, time) in [(false, 700_000_000_000u64), (true, 0)] {
            let bytes = bp7_bundle(crc, with_age, time);
            let b =
                Bundle::decode(&bytes).unwrap_or_else(|e| panic!("crc {crc} age {with_age}: {e}"));
            assert_eq!(b.primary.source, Eid::parse("dtn://alpha/app").unwrap());
            assert_eq!(
                b.primary.destination,
                Eid::parse("dtn://beta/inbox").unwrap()
            );
            assert_eq!(b.primary.created.time, DtnTime(time));
            assert_eq!(b.primary.created.seq, 3);
            assert_eq!(b.primary.lifetime_ms, 3_600_000);
            assert_eq!(b.payload(), b"from bp7");
            assert_eq!(b.hop_count().map(|h| (h.limit, h.count)), Some((16, 0)));
            assert_eq!(b.previous_node(), Some(Eid::parse("dtn://gamma/").unwrap()));
            assert_eq!(b.age_ms(), with_age.then_some(1234));
            // Our canonical re-encoding is the same bytes bp7 wrote.
            assert_eq!(b.encode(), bytes);
            // It carries no Mycelium signature, so it is never stored or forwarded.
            assert!(matches!(
                VerifiedBundle::decode(&bytes),
                Err(mycelium::bundle::BundleError::Unsigned)
            ));
        }
    }
}

#[test]
fn bp7_detects_our_crcs_and_reads_our_extension_blocks() {
    let vb = BundleBuilder::new(
        vectors::bob().node_id(),
        CreationTimestamp {
            time: DtnTime(0),
            seq: 9,
        },
        60_000,
    )
    .age_ms(42)
    .payload(vec![7; 5000])
    .sign(&vectors::alice())
    .unwrap();
    let mut theirs = bp7::Bundle::try_from(vb.raw()).unwrap();
    theirs.validate().unwrap();
    assert!(theirs.crc_valid(), "bp7 disagrees with our CRCs");
    let hc = theirs
        .extension_block_by_type(block_types::HOP_COUNT)
        .unwrap();
    assert_eq!(hc.hop_count_get(), Some((32, 0)));
    let age = theirs
        .extension_block_by_type(block_types::BUNDLE_AGE)
        .unwrap();
    assert_eq!(age.bundle_age_get(), Some(42));
    // bp7 re-encodes our bundle to the very same bytes.
    assert_eq!(theirs.to_cbor(), vb.raw());
}
