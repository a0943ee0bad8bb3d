//! Sealed bundles: only the recipient opens them, nothing on a stick names the people or
//! shows the words, forged or unstamped sealed bundles are refused, relays carry what they
//! cannot read, and the receipt goes home sealed.

mod common;

use indicatif::ProgressBar;
use mycelium::adu::{self, Adu, Message};
use mycelium::bundle::{Bundle, BundleBuilder, CreationTimestamp, VerifiedBundle};
use mycelium::fec::Policy;
use mycelium::identity::Identity;
use mycelium::node::Node;
use mycelium::seal::{self, SealError};
use mycelium::time::DtnTime;
use mycelium::transport::folder::{self, ExportOptions, ImportOptions};
use std::collections::HashSet;
use std::path::Path;

const DAY: u64 = 86_400_000;
const NOW: DtnTime = DtnTime(820_000_000_000);

fn inner(from: &Identity, to: &Identity, text: &str, seq: u64) -> VerifiedBundle {
    BundleBuilder::new(to.node_id(), CreationTimestamp { time: NOW, seq }, DAY)
        .payload(adu::encode_message(&Message::Text(text.into())))
        .sign(from)
        .unwrap()
}

fn rng() -> rand_core::OsRng {
    rand_core::OsRng
}

#[test]
fn only_the_recipient_opens_and_the_inner_bundle_verifies() {
    let (a, b, c) = (
        Identity::from_seed([1; 32]),
        Identity::from_seed([2; 32]),
        Identity::from_seed([3; 32]),
    );
    let i = inner(&a, &b, "for b only", 0);
    let outer = seal::seal(&i, &b.seal_key().public(), NOW, &mut rng()).unwrap();
    let ob = outer.bundle();
    // The outer says nothing about who: anonymous source, a tag as destination.
    assert!(ob.primary.source.is_null());
    assert!(outer.is_sealed());
    assert!(!ob
        .primary
        .destination
        .to_string()
        .contains(&b.node_id().to_string()[6..20]));
    // It decodes as a verified (stamped) bundle from its bytes alone.
    let again = VerifiedBundle::decode(outer.raw()).unwrap();
    assert!(again.is_sealed());
    let opened = seal::open(ob, &b.seal_key(), &b.node_id())
        .unwrap()
        .unwrap();
    assert_eq!(opened.raw(), i.raw());
    assert_eq!(opened.bundle().primary.source, a.node_id());
    // Anyone else, the sender included, gets nothing.
    assert!(seal::open(ob, &c.seal_key(), &c.node_id())
        .unwrap()
        .is_none());
    assert!(seal::open(ob, &a.seal_key(), &a.node_id())
        .unwrap()
        .is_none());
    // The recipient refuses a sealed bundle that holds a bundle for someone else.
    let misdirected = seal::seal(
        &inner(&a, &c, "x", 1),
        &b.seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        seal::open(misdirected.bundle(), &b.seal_key(), &b.node_id()),
        Err(SealError::Misaddressed(_))
    ));
}

/// The body of a sealed bundle's payload, as the spec writes it (bundles/README.md §11).
#[derive(serde::Deserialize, serde::Serialize)]
struct Body {
    #[serde(with = "serde_bytes")]
    epk: Vec<u8>,
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
    stamp: u64,
}

/// Re-encode a sealed bundle with its body changed by `f` (CRCs recomputed, so only the
/// cryptography and the stamp can notice).
fn with_body(outer: &Bundle, f: impl FnOnce(&mut Body)) -> Bundle {
    let mut body: Body = adu::decode_kind(outer.payload(), seal::KIND_SEALED).unwrap();
    f(&mut body);
    let mut b = outer.clone();
    let n = b.blocks.len();
    b.blocks[n - 1].data = adu::encode_kind(seal::KIND_SEALED, &body).into();
    b
}

/// One bit of the ciphertext flipped.
fn flip_ct_bit(outer: &Bundle, bit: usize) -> Bundle {
    with_body(outer, |body| {
        let i = bit % (body.ct.len() * 8);
        body.ct[i / 8] ^= 1 << (i % 8);
    })
}

#[test]
fn any_flipped_bit_fails_authentication_and_the_stamp() {
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let outer = seal::seal(
        &inner(&a, &b, "tamper with me", 0),
        &b.seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    let ob = outer.bundle();
    let bits = 8 * 1100;
    let mut stamp_still_valid = 0;
    for bit in (0..bits).step_by(7) {
        let t = flip_ct_bit(ob, bit);
        // A relay refuses it: the stamp covers the ciphertext. (A stamp is a cost, not a
        // MAC: a changed ciphertext keeps a 16-bit stamp valid with odds 2^-16.)
        if seal::check_stamp(&t).is_ok() {
            stamp_still_valid += 1;
        } else {
            assert!(VerifiedBundle::decode(&t.encode()).is_err());
        }
        // The recipient is never fooled: the AEAD is the integrity check.
        assert_eq!(
            seal::open(&t, &b.seal_key(), &b.node_id()).unwrap_err(),
            SealError::Auth,
            "bit {bit}"
        );
    }
    assert!(
        stamp_still_valid <= 2,
        "{stamp_still_valid} altered bundles kept a valid stamp"
    );
    // Every single-bit flip of the whole encoded bundle is refused on decode.
    let raw = outer.raw();
    for i in (0..raw.len() * 8).step_by(13) {
        let mut x = raw.to_vec();
        x[i / 8] ^= 1 << (i % 8);
        if let Ok(v) = VerifiedBundle::decode(&x) {
            panic!("bit {i} flipped still decodes: {:?}", v.id());
        }
    }
}

#[test]
fn ephemeral_keys_tags_and_ids_never_repeat() {
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let i = inner(&a, &b, "same message every time", 0);
    let mut epks = HashSet::new();
    let mut dests = HashSet::new();
    let mut ids = HashSet::new();
    let mut cts = HashSet::new();
    for _ in 0..500 {
        let o = seal::seal(&i, &b.seal_key().public(), NOW, &mut rng()).unwrap();
        let payload = o.bundle().payload().to_vec();
        assert!(epks.insert(payload[..80].to_vec()));
        assert!(dests.insert(o.bundle().primary.destination.to_string()));
        assert!(ids.insert(o.id().key()));
        assert!(cts.insert(payload));
    }
}

#[test]
fn a_sealed_bundle_without_a_valid_stamp_is_refused_by_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Node::init(&dir.path().join("r")).unwrap();
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let outer = seal::seal(
        &inner(&a, &b, "x", 0),
        &b.seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    // Replace the stamp with one that (almost surely) has too few zero bits.
    let mut refused = 0;
    for s in 0..20u64 {
        let t = with_body(outer.bundle(), |b| b.stamp = b.stamp.wrapping_add(1 + s));
        if let Err(e) = relay.receive(&t.encode(), NOW) {
            assert!(e.to_string().contains("stamp"), "{e}");
            refused += 1;
        }
    }
    assert!(refused >= 19, "only {refused} of 20 bad stamps refused");
    // An unsigned bundle that is not sealed is refused as unsigned, as before.
    assert!(relay.store.is_empty().unwrap());
    // The genuine one is carried.
    relay.receive(outer.raw(), NOW).unwrap();
    assert_eq!(relay.store.len().unwrap(), 1);
}

fn walk(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.to_string_lossy().as_bytes().to_vec());
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(std::fs::read(&p).unwrap());
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_seized_stick_names_nobody_and_shows_no_words() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::init(&dir.path().join("a")).unwrap();
    let b = Node::init(&dir.path().join("b")).unwrap();
    // a has b's node record (learnt earlier, say over the LAN).
    let rec = b.publish_record(NOW).unwrap();
    a.receive(rec.raw(), NOW).unwrap();
    let text = "meet at the old bakery, bring the list";
    let (_, outer) = a
        .send(
            b.node_id(),
            adu::encode_message(&Message::Text(text.into())),
            DAY,
            NOW,
            true,
        )
        .unwrap();
    assert!(outer.is_some());
    let stick = dir.path().join("stick");
    let e = folder::export(
        &a,
        &stick,
        &ExportOptions {
            for_node: None,
            max_bytes: None,
            policy: Policy::folder(0.25),
            now: NOW,
            have_summary: false,
            node_records: false,
            only: None,
        },
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(e.bundles, 1, "only the sealed bundle travels: {e:?}");
    let mut blobs = Vec::new();
    walk(&stick, &mut blobs);
    let needles: Vec<(String, Vec<u8>)> = vec![
        ("a's node ID".into(), a.node_id().to_string().into_bytes()),
        ("b's node ID".into(), b.node_id().to_string().into_bytes()),
        (
            "a's node name".into(),
            a.node_id().node_name().unwrap().as_bytes().to_vec(),
        ),
        (
            "b's node name".into(),
            b.node_id().node_name().unwrap().as_bytes().to_vec(),
        ),
        ("a's public key".into(), a.identity.public_key().to_vec()),
        ("b's public key".into(), b.identity.public_key().to_vec()),
        (
            "b's sealing key".into(),
            b.identity.seal_key().public().to_vec(),
        ),
        ("the text".into(), text.as_bytes().to_vec()),
        ("a word of it".into(), b"bakery".to_vec()),
    ];
    for blob in &blobs {
        for (what, n) in &needles {
            assert!(!contains(blob, n), "the stick shows {what}");
        }
    }
    // b imports, opens, reads; the inner bundle is private (never offered on).
    let r = folder::import(
        &b,
        &stick,
        &ImportOptions {
            clean: false,
            now: NOW,
        },
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(r.delivered, 1, "{r:?}");
    let inbox = b.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(matches!(&inbox[0].adu, Ok(Adu::Message(Message::Text(t))) if t == text));
    assert!(b
        .store
        .sync_items(&b.node_id(), None, NOW)
        .unwrap()
        .iter()
        .all(|i| i.key != inbox[0].key));
    let _ = common::cli_json;
}

#[test]
fn nobody_can_take_a_sealed_bundles_identity_with_other_content() {
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let outer = seal::seal(
        &inner(&a, &b, "the real one", 0),
        &b.seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    // Same creation time and sequence number (the store key), different ciphertext.
    let squat = with_body(outer.bundle(), |body| body.ct[0] ^= 0xff);
    assert_eq!(squat.id(), outer.bundle().id());
    let e = VerifiedBundle::decode(&squat.encode()).unwrap_err();
    assert!(
        e.to_string().contains("bound to its content") || e.to_string().contains("stamp"),
        "{e}"
    );
    // Extra blocks or a longer life cannot ride on a valid stamp either.
    let mut longer = outer.bundle().clone();
    longer.primary.lifetime_ms = seal::MAX_LIFETIME_MS + 1;
    assert!(VerifiedBundle::decode(&longer.encode()).is_err());
    let mut extra = outer.bundle().clone();
    extra.blocks.insert(
        0,
        mycelium::bundle::CanonicalBlock::new(
            200,
            3,
            mycelium::bundle::CrcType::Crc32c,
            vec![0; 4096],
        ),
    );
    let e = VerifiedBundle::decode(&extra.encode()).unwrap_err();
    assert!(e.to_string().contains("blocks other than"), "{e}");
}

/// Sealing keys come from node IDs now; a home made before (whose node record published
/// the old derived key) still opens bundles sealed to that key, and a new home does not
/// spend a second X25519 on every sealed bundle trying a key it never published.
#[test]
fn homes_that_published_the_old_sealing_key_still_open_bundles_sealed_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Identity::from_seed([1; 32]);
    let home = dir.path().join("old");
    let old = Node::init(&home).unwrap();
    let old_key = old.identity.legacy_seal_key().public();
    // What `init` recorded before 2026-12: its own old key as its published contact.
    old.store
        .set_contact(&old.node_id().to_string(), &old_key)
        .unwrap();
    drop(old);
    let old = Node::open(&home).unwrap();
    assert_eq!(old.identity.seal_keys().len(), 2);
    let to_old = |seq| {
        let i = BundleBuilder::new(old.node_id(), CreationTimestamp { time: NOW, seq }, DAY)
            .payload(adu::encode_message(&Message::Text(format!("note {seq}"))))
            .sign(&a)
            .unwrap();
        i
    };
    let by_old_key = seal::seal(&to_old(1), &old_key, NOW, &mut rng()).unwrap();
    let by_id_key = seal::seal(
        &to_old(2),
        &old.identity.seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    old.receive(by_old_key.raw(), NOW).unwrap();
    old.receive(by_id_key.raw(), NOW).unwrap();
    let texts: HashSet<String> = old
        .inbox()
        .unwrap()
        .into_iter()
        .filter_map(|m| match m.adu {
            Ok(Adu::Message(Message::Text(t))) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(texts, HashSet::from(["note 1".into(), "note 2".into()]));

    // A new home tries its node-ID key alone: a bundle sealed to its old key is carried,
    // not opened.
    let new = Node::init(&dir.path().join("new")).unwrap();
    assert_eq!(new.identity.seal_keys().len(), 1);
    let i = BundleBuilder::new(new.node_id(), CreationTimestamp { time: NOW, seq: 3 }, DAY)
        .payload(adu::encode_message(&Message::Text("old key".into())))
        .sign(&a)
        .unwrap();
    let o = seal::seal(
        &i,
        &new.identity.legacy_seal_key().public(),
        NOW,
        &mut rng(),
    )
    .unwrap();
    new.receive(o.raw(), NOW).unwrap();
    assert!(new.inbox().unwrap().is_empty());
}
