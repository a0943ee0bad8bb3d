//! Hostile and broken bundles: each is refused with an error naming the problem, and the
//! store is left exactly as it was.

mod common;
use common::vectors;
use mycelium::bundle::cbor::Writer;
use mycelium::bundle::{
    block_types, Bundle, BundleBuilder, BundleError, CanonicalBlock, CrcType, DecodeLimits,
    VerifiedBundle,
};
use mycelium::node::Node;
use mycelium::store::PutOutcome;
use mycelium::time::DtnTime;

fn good() -> Vec<u8> {
    vectors::all().remove(0).2.raw().to_vec()
}

fn err(bytes: &[u8]) -> BundleError {
    match VerifiedBundle::decode(bytes) {
        Ok(_) => panic!(
            "accepted bad input {}",
            hex::encode(&bytes[..bytes.len().min(64)])
        ),
        Err(e) => e,
    }
}

#[test]
fn truncated_at_every_length_is_refused() {
    let g = good();
    for n in 0..g.len() {
        let e = err(&g[..n]);
        let msg = e.to_string();
        assert!(!msg.is_empty());
        if n == 0 {
            assert_eq!(e, BundleError::Empty);
        }
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    let g = good();
    for i in 0..g.len() {
        for bit in 0..8 {
            let mut b = g.clone();
            b[i] ^= 1 << bit;
            let _ = err(&b);
        }
    }
}

#[test]
fn payload_bit_flip_names_the_crc_or_signature() {
    let g = good();
    let mut b = g.clone();
    let n = b.len();
    b[n - 10] ^= 0x04; // inside the payload data
    assert!(matches!(err(&b), BundleError::CrcMismatch { block: 1 }));

    // The same change with the CRC recomputed (an attacker, not noise): the signature
    // catches it.
    let mut bundle = Bundle::decode(&g).unwrap();
    let last = bundle.blocks.len() - 1;
    let mut data = bundle.blocks[last].data.to_vec();
    data[3] ^= 0x04;
    bundle.blocks[last].data = data.into();
    let forged = bundle.encode();
    assert!(matches!(err(&forged), BundleError::BadSignature(_)));
}

#[test]
fn oversized_is_refused_before_parsing() {
    let g = good();
    let limits = DecodeLimits {
        max_bundle_len: g.len() - 1,
        max_blocks: 64,
    };
    assert!(matches!(
        VerifiedBundle::decode_with(&g, &limits),
        Err(BundleError::TooLarge { .. })
    ));
    // A byte string announcing 4 GiB inside a tiny input.
    let mut b = vec![0x9f, 0x89, 0x07, 0x04, 0x02];
    b.extend_from_slice(&[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00]);
    assert!(matches!(err(&b), BundleError::Cbor(_)));
}

#[test]
fn wrongly_tagged_inputs_are_refused() {
    let g = good();
    // a definite-length array instead of the indefinite one
    let mut b = g.clone();
    b[0] = 0x84;
    assert!(matches!(err(&b), BundleError::NotABundle(0x84)));
    // a CBOR tag in front
    let mut t = vec![0xd8, 0x18];
    t.extend_from_slice(&g);
    assert!(matches!(err(&t), BundleError::NotABundle(0xd8)));
    // BPv6-ish version number
    let mut w = Writer::new();
    w.indefinite_array();
    w.array(9);
    w.uint(6);
    let mut v6 = w.into_vec();
    v6.extend_from_slice(&[0; 20]);
    assert!(matches!(err(&v6), BundleError::BadVersion(6)));
    // JSON is not a bundle
    assert!(matches!(err(b"{\"a\":1}"), BundleError::NotABundle(b'{')));
    // trailing garbage after the break
    let mut tr = g.clone();
    tr.push(0x00);
    assert!(matches!(err(&tr), BundleError::Cbor(_)));
}

#[test]
fn unsigned_and_foreign_signatures_are_refused() {
    let g = good();
    let mut bundle = Bundle::decode(&g).unwrap();
    bundle.blocks.retain(|b| b.block_type != block_types::BIB);
    assert_eq!(err(&bundle.encode()), BundleError::Unsigned);

    // Mallory signs a bundle but claims Alice as its source: the BIB's security source
    // is Mallory, the primary says Alice.
    let mallory = mycelium::identity::Identity::from_seed([9; 32]);
    let m = BundleBuilder::new(
        vectors::bob().node_id(),
        mycelium::bundle::CreationTimestamp {
            time: vectors::T_2026,
            seq: 0,
        },
        vectors::WEEK_MS,
    )
    .payload(b"pay mallory".to_vec())
    .sign(&mallory)
    .unwrap();
    let mut forged = m.bundle().clone();
    forged.primary.source = vectors::alice().node_id();
    assert!(matches!(
        err(&forged.encode()),
        BundleError::SignerMismatch { .. }
    ));

    // Mallory's BIB grafted onto Alice's bundle with the security source rewritten to
    // Alice: the signature is by another key and does not verify.
    let mut graft = Bundle::decode(&g).unwrap();
    let bib_m = m
        .bundle()
        .blocks
        .iter()
        .find(|b| b.block_type == block_types::BIB)
        .unwrap();
    let mut asb = mycelium::bundle::bib::Asb::decode(2, &bib_m.data).unwrap();
    asb.source = vectors::alice().node_id();
    for b in graft.blocks.iter_mut() {
        if b.block_type == block_types::BIB {
            b.data = asb.encode().into();
        }
    }
    assert!(matches!(err(&graft.encode()), BundleError::BadSignature(_)));
}

#[test]
fn structural_rules_are_enforced() {
    let base = Bundle::decode(&good()).unwrap();
    // duplicate block number
    let mut b = base.clone();
    b.blocks
        .insert(0, CanonicalBlock::new(200, 2, CrcType::Crc16, vec![1]));
    assert_eq!(err(&b.encode()), BundleError::DuplicateBlockNumber(2));
    // payload not last
    let mut b = base.clone();
    let p = b.blocks.pop().unwrap();
    b.blocks.insert(0, p);
    assert_eq!(err(&b.encode()), BundleError::PayloadMisplaced);
    // no payload
    let mut b = base.clone();
    b.blocks.pop();
    assert_eq!(err(&b.encode()), BundleError::NoPayload);
    // two hop count blocks
    let mut b = base.clone();
    let hc = b
        .blocks
        .iter()
        .find(|x| x.block_type == block_types::HOP_COUNT)
        .unwrap()
        .clone();
    let mut hc2 = hc.clone();
    hc2.number = 9;
    b.blocks.insert(0, hc2);
    assert_eq!(
        err(&b.encode()),
        BundleError::DuplicateExtension("hop count")
    );
    // hop limit exceeded
    let mut b = base.clone();
    for x in b.blocks.iter_mut() {
        if x.block_type == block_types::HOP_COUNT {
            x.data = mycelium::bundle::HopCount { limit: 3, count: 4 }
                .to_data()
                .into();
        }
    }
    assert!(matches!(
        err(&b.encode()),
        BundleError::HopLimitExceeded { limit: 3, count: 4 }
    ));
    // clock unknown without an age block
    let mut b = base.clone();
    b.primary.created.time = DtnTime(0);
    assert_eq!(err(&b.encode()), BundleError::MissingAge);
    // too many blocks
    let mut b = base.clone();
    for i in 0..70 {
        b.blocks
            .insert(0, CanonicalBlock::new(200, 100 + i, CrcType::None, vec![]));
    }
    assert_eq!(err(&b.encode()), BundleError::TooManyBlocks(64));
}

#[test]
fn refused_input_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::init(dir.path()).unwrap();
    let now = vectors::T_2026;
    let g = good();
    assert_eq!(node.receive(&g, now).unwrap().1, PutOutcome::New);
    let before = node.store.records().unwrap();

    let mut flipped = g.clone();
    let n = flipped.len();
    flipped[n - 10] ^= 1;
    let mut bad_inputs = vec![g[..g.len() / 2].to_vec(), flipped, b"junk".to_vec(), vec![]];
    let mut unsigned = Bundle::decode(&g).unwrap();
    unsigned.blocks.retain(|b| b.block_type != block_types::BIB);
    unsigned.primary.created.seq = 77;
    bad_inputs.push(unsigned.encode());
    for bad in &bad_inputs {
        assert!(node.receive(bad, now).is_err());
    }
    // a replay of the good bundle is a duplicate and changes nothing
    assert_eq!(node.receive(&g, now).unwrap().1, PutOutcome::Duplicate);
    assert_eq!(node.store.records().unwrap(), before);
}
