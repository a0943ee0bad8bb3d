//! The RocksDB store, on real RocksDB in temp dirs: durability across reopen, dedup on
//! BPv7 identity, indexes, prefix ids, expiry purge, the sequence counter.

mod common;
use common::vectors;
use mycelium::adu::{self, Message};
use mycelium::bundle::{BundleBuilder, CreationTimestamp, Eid};
use mycelium::store::{PutOutcome, Store, StoreError};
use mycelium::time::DtnTime;

fn msg(to: &Eid, seq: u64, lifetime_ms: u64, text: &str) -> mycelium::bundle::VerifiedBundle {
    BundleBuilder::new(
        to.clone(),
        CreationTimestamp {
            time: vectors::T_2026,
            seq,
        },
        lifetime_ms,
    )
    .payload(adu::encode_message(&Message::Text(text.into())))
    .sign(&vectors::alice())
    .unwrap()
}

#[test]
fn put_survives_reopen_and_dedups_on_identity() {
    let dir = tempfile::tempdir().unwrap();
    let bob = vectors::bob().node_id();
    let b1 = msg(&bob, 1, vectors::WEEK_MS, "one");
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.put(&b1, vectors::T_2026).unwrap(), PutOutcome::New);
        assert_eq!(s.put(&b1, vectors::T_2026).unwrap(), PutOutcome::Duplicate);
        // Same BPv7 identity, different content: still a duplicate, the first one stays.
        let other = msg(&bob, 1, vectors::WEEK_MS, "different text");
        assert_eq!(
            s.put(&other, vectors::T_2026).unwrap(),
            PutOutcome::Duplicate
        );
    }
    let s = Store::open(dir.path()).unwrap();
    let key = b1.id().key();
    assert_eq!(s.get_raw(&key).unwrap().unwrap(), b1.raw());
    assert_eq!(s.get(&key).unwrap().unwrap().raw(), b1.raw());
    assert!(s.contains(&b1.id()).unwrap());
    assert_eq!(s.len().unwrap(), 1);
    let rec = s.record(&key).unwrap().unwrap();
    assert_eq!(rec.kind, "message");
    assert_eq!(rec.destination, bob.to_string());
    assert_eq!(
        rec.expires_at,
        vectors::T_2026.saturating_add_ms(vectors::WEEK_MS)
    );
}

#[test]
fn indexes_find_by_destination_node_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let bob = vectors::bob().node_id();
    let bob_app = Eid::parse(&format!("{}inbox", bob)).unwrap();
    let carol = Eid::dtn_node("carol").unwrap();
    let a = msg(&bob, 1, vectors::WEEK_MS, "a");
    let b = msg(&bob_app, 2, vectors::WEEK_MS, "b");
    let c = msg(&carol, 3, vectors::WEEK_MS, "c");
    for x in [&a, &b, &c] {
        s.put(x, vectors::T_2026).unwrap();
    }
    let mut got = s.for_destination_node(&bob).unwrap();
    got.sort();
    let mut want = vec![a.id().key(), b.id().key()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(s.for_destination_node(&carol).unwrap(), vec![c.id().key()]);
    assert_eq!(s.of_kind("message").unwrap().len(), 3);
    assert!(s.of_kind("payment").unwrap().is_empty());
}

#[test]
fn prefix_ids_resolve_or_explain() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let bob = vectors::bob().node_id();
    let mut keys = Vec::new();
    for i in 0..40 {
        let b = msg(&bob, i, vectors::WEEK_MS, "x");
        s.put(&b, vectors::T_2026).unwrap();
        keys.push(b.id().hex());
    }
    for k in &keys {
        assert_eq!(hex::encode(s.resolve(&k[..12]).unwrap()), *k);
        assert_eq!(hex::encode(s.resolve(&k.to_uppercase()).unwrap()), *k);
    }
    // odd-length prefixes work too
    assert_eq!(hex::encode(s.resolve(&keys[0][..9]).unwrap()), keys[0]);
    assert!(matches!(s.resolve("zz12"), Err(StoreError::BadId(_))));
    assert!(matches!(s.resolve("ab"), Err(StoreError::BadId(_))));
    let absent = (0..=0xffffu32)
        .map(|i| format!("{i:04x}"))
        .find(|p| !keys.iter().any(|k| k.starts_with(p.as_str())))
        .unwrap();
    assert!(matches!(s.resolve(&absent), Err(StoreError::NotFound(_))));
    // 40 keys share 4-digit prefixes rarely, but "0000".."ffff" all resolve or explain;
    // an ambiguous prefix is reported as such: find two keys sharing their first 4 digits
    // by storing more until they do.
    let mut seq = 1000;
    let (p, n) = loop {
        let b = msg(&bob, seq, vectors::WEEK_MS, "y");
        s.put(&b, vectors::T_2026).unwrap();
        let h = b.id().hex();
        if keys.iter().any(|k| k[..4] == h[..4]) {
            break (h[..4].to_string(), 2);
        }
        keys.push(h);
        seq += 1;
    };
    match s.resolve(&p) {
        Err(StoreError::Ambiguous { count, .. }) => assert_eq!(count, n),
        other => panic!("expected ambiguity for {p}, got {other:?}"),
    }
}

#[test]
fn expired_bundles_are_purged_with_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let bob = vectors::bob().node_id();
    let short = msg(&bob, 1, 60_000, "short");
    let long = msg(&bob, 2, vectors::WEEK_MS, "long");
    s.put(&short, vectors::T_2026).unwrap();
    s.put(&long, vectors::T_2026).unwrap();
    assert_eq!(s.purge_expired(vectors::T_2026).unwrap(), 0);
    assert_eq!(
        s.purge_expired(vectors::T_2026.saturating_add_ms(60_000))
            .unwrap(),
        1
    );
    assert!(!s.contains(&short.id()).unwrap());
    assert!(s.contains(&long.id()).unwrap());
    assert_eq!(s.for_destination_node(&bob).unwrap(), vec![long.id().key()]);
    assert_eq!(s.of_kind("message").unwrap(), vec![long.id().key()]);
    // a purged bundle can arrive again later only as new data (it is gone)
    assert_eq!(s.len().unwrap(), 1);
}

#[test]
fn creation_sequence_never_repeats_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let s = Store::open(dir.path()).unwrap();
        for _ in 0..5 {
            let ts = s.next_creation_timestamp(DtnTime(0)).unwrap();
            assert!(seen.insert(ts.seq), "sequence {} repeated", ts.seq);
        }
    }
}

#[test]
fn a_second_process_cannot_open_a_locked_store() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Store::open(dir.path()).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("expected a lock error, got {e}"),
        Ok(_) => panic!("opened a store twice"),
    }
}
