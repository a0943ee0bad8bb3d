//! Sealed bundles: a whole signed inner bundle encrypted for one recipient and carried as
//! the payload of an anonymous outer bundle, so whoever holds it (a stick, a feed
//! recording, a relay) learns neither who sent it, nor to whom, nor what it says.
//!
//! - Key agreement: X25519, a fresh ephemeral key per bundle against the recipient's static
//!   X25519 key (from its signed node record). Keys: blake3 in derive-key mode over the
//!   shared secret, the ephemeral and the recipient public keys → AEAD key (32), nonce (12)
//!   and recipient tag (16). A key is used for one message only, so nonces never repeat.
//! - AEAD: ChaCha20-Poly1305 (RFC 8439, ring's); the additional data binds the ciphertext
//!   to the outer bundle's tag, creation timestamp and lifetime.
//! - Outer bundle: source `dtn:none`, destination `dtn://sealed/<tag hex>` (a fresh tag per
//!   bundle: unlinkable; the recipient recognises its own by recomputing it), creation
//!   time rounded to the minute, a random sequence number, hop count, no signature.
//! - Flood defence: a proof-of-work stamp over the ciphertext and those outer fields,
//!   cheap to check, costly to make in bulk (see [`required_bits`]).
//! - Padding: the plaintext is padded (Padmé) so lengths leak little.
//!
//! Pure: no I/O; randomness comes from the caller's RNG. Spec: `bundles/README.md` §11.

use crate::adu;
use crate::bundle::{
    block_types, Bundle, BundleError, CanonicalBlock, CrcType, CreationTimestamp, Eid, HopCount,
    PrimaryBlock, VerifiedBundle,
};
use crate::time::DtnTime;
use rand_core::{CryptoRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use x25519_dalek::{PublicKey, StaticSecret};

/// ChaCha20-Poly1305 (RFC 8439) under `key`, ring's implementation (its assembly made
/// opening a sealed 1 MiB bundle about 1.4x faster here than the RustCrypto crate did;
/// the construction and the bytes are the same).
fn aead(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Auth)
}

pub const KIND_SEALED: &str = "sealed";
/// Node name of every sealed bundle's destination.
pub const SEALED_NODE: &str = "sealed";
const KDF_CONTEXT: &str = "mycelium 2026-11 sealed bundle v1 keys";
const AAD_DOMAIN: &[u8] = b"mycelium/sealed/v1";
/// Additional data of a sealed bundle that carries delivery secrets in clear.
const AAD_DOMAIN_REVEALING: &[u8] = b"mycelium/sealed/v2";
/// A v2 sealed bundle's tag is this hash of its delivery secret (§11.5).
const TAG_CONTEXT: &str = "mycelium 2026-12 sealed delivery tag v2";
/// Delivery secrets one sealed bundle may reveal.
pub const MAX_REVEALS: usize = 4096;
const STAMP_DOMAIN: &[u8] = b"mycelium/stamp/v1";
const ID_DOMAIN: &[u8] = b"mycelium/sealed/id/v1";
/// Longest life of a sealed bundle: a relay cannot be made to keep one for ever.
pub const MAX_LIFETIME_MS: u64 = 60 * 24 * 3600 * 1000;
/// Outer expiries are rounded up to the hour (plus up to an hour of jitter), so the outer
/// bundle does not repeat the inner one's exact expiry.
const EXPIRY_BUCKET_MS: u64 = 3600 * 1000;
/// Proof-of-work bits for a ciphertext up to 64 KiB; one more per doubling beyond.
pub const BASE_BITS: u32 = 16;
/// Sealed bundles a node takes from one contact (a sync session, a stick): a relay cannot
/// tell who made them, so however valid their stamps, one contact cannot fill its store.
pub const QUOTA_PER_CONTACT: u64 = 10_000;
/// Smallest padded plaintext.
pub const MIN_PADDED: usize = 1024;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed bundle: {0}")]
    NotSealed(String),
    #[error("sealed bundle carries no valid proof-of-work stamp ({got} of {need} bits)")]
    Stamp { got: u32, need: u32 },
    #[error("sealed bundle does not open: authentication failed (altered, or not for this key)")]
    Auth,
    #[error("sealed plaintext is malformed: {0}")]
    Plaintext(String),
    #[error("the recipient's X25519 key is not usable (low-order point)")]
    WeakKey,
    #[error("sealed inner bundle: {0}")]
    Inner(BundleError),
    #[error("a sealed bundle for this node holds a bundle addressed to {0}")]
    Misaddressed(String),
    #[error("cannot seal without a clock: the outer bundle needs a creation time")]
    NoClock,
}

/// The payload body of a sealed bundle (inside the ADU envelope of kind `sealed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedBody {
    #[serde(with = "serde_bytes")]
    epk: [u8; 32],
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
    stamp: u64,
    /// Delivery secrets revealed (16 bytes each): the sealed bundles they open were
    /// delivered, and anyone holding one may drop it (§11.5).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    opened: Vec<u8>,
}

/// A node's X25519 key pair for sealing.
#[derive(Clone)]
pub struct SealKey {
    secret: StaticSecret,
    /// The public key, computed once (a scalar multiplication and an inversion): opening
    /// a sealed bundle needs it for every bundle tried.
    public: [u8; 32],
}

impl SealKey {
    pub fn from_bytes(b: [u8; 32]) -> SealKey {
        let secret = StaticSecret::from(b);
        let public = PublicKey::from(&secret).to_bytes();
        SealKey { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

struct Derived {
    key: [u8; 32],
    nonce: [u8; 12],
    tag: [u8; TAG_LEN],
}

fn derive(shared: &[u8; 32], epk: &[u8; 32], rpk: &[u8; 32]) -> Derived {
    let mut h = blake3::Hasher::new_derive_key(KDF_CONTEXT);
    h.update(shared);
    h.update(epk);
    h.update(rpk);
    let mut out = [0u8; 60];
    h.finalize_xof().fill(&mut out);
    let mut d = Derived {
        key: [0; 32],
        nonce: [0; 12],
        tag: [0; TAG_LEN],
    };
    d.key.copy_from_slice(&out[..32]);
    d.nonce.copy_from_slice(&out[32..44]);
    d.tag.copy_from_slice(&out[44..60]);
    out.iter_mut().for_each(|b| *b = 0);
    d
}

fn aad(
    epk: &[u8; 32],
    tag: &[u8; TAG_LEN],
    time: DtnTime,
    lifetime: u64,
    opened: &[u8],
) -> Vec<u8> {
    let mut a = match opened.is_empty() {
        true => AAD_DOMAIN.to_vec(),
        false => AAD_DOMAIN_REVEALING.to_vec(),
    };
    a.extend_from_slice(epk);
    a.extend_from_slice(tag);
    a.extend_from_slice(&time.0.to_be_bytes());
    a.extend_from_slice(&lifetime.to_be_bytes());
    a.extend_from_slice(opened);
    a
}

/// The tag a delivery secret stands for: a v2 sealed bundle's destination is
/// `dtn://sealed/<hex of this>`, so whoever learns the secret can match the bundle, and
/// nobody can find a secret for a tag.
pub fn reveal_tag(secret: &[u8; TAG_LEN]) -> [u8; TAG_LEN] {
    let h = blake3::derive_key(TAG_CONTEXT, secret);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&h[..TAG_LEN]);
    t
}

/// The outer bundle's sequence number: bound to its content, so nobody can take a sealed
/// bundle's identity (its store key) with other content and have the real one refused as
/// a duplicate.
fn content_seq(aad: &[u8], ct: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(ID_DOMAIN);
    h.update(aad);
    h.update(ct);
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_be_bytes(b) >> 1
}

/// Proof-of-work bits a ciphertext of `len` bytes must carry: [`BASE_BITS`] up to 64 KiB,
/// one more for each doubling beyond (so a big forged bundle costs as much as many small).
pub fn required_bits(len: usize) -> u32 {
    let units = len.div_ceil(64 * 1024).max(1);
    BASE_BITS + (usize::BITS - (units - 1).leading_zeros())
}

fn stamp_digest(aad: &[u8], ct: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(aad);
    h.update(ct);
    *h.finalize().as_bytes()
}

fn stamp_bits(digest: &[u8; 32], stamp: u64) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(STAMP_DOMAIN);
    h.update(digest);
    h.update(&stamp.to_le_bytes());
    let out = h.finalize();
    let b = out.as_bytes();
    u128::from_be_bytes(b[..16].try_into().unwrap_or([0xff; 16])).leading_zeros()
}

/// Find a stamp with at least `bits` leading zero bits (expected 2^bits hashes).
fn make_stamp(digest: &[u8; 32], bits: u32, start: u64) -> u64 {
    let mut s = start;
    while stamp_bits(digest, s) < bits {
        s = s.wrapping_add(1);
    }
    s
}

/// Padmé padding (Nikitin et al., 2019): leaks O(log log n) bits of the length, costs at
/// most 12% (and at least [`MIN_PADDED`] bytes).
pub fn padded_len(n: usize) -> usize {
    let n = n.max(MIN_PADDED);
    let e = usize::BITS - 1 - n.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (n + mask) & !mask
}

/// Seal `inner` (a signed bundle) for the holder of X25519 key `recipient`. The outer
/// bundle lives as long as the inner one has left.
pub fn seal<R: RngCore + CryptoRng>(
    inner: &VerifiedBundle,
    recipient: &[u8; 32],
    now: DtnTime,
    rng: &mut R,
) -> Result<VerifiedBundle, SealError> {
    seal_revealing(inner, recipient, now, rng, &[])
}

/// [`seal`], with delivery secrets of other sealed bundles carried in clear (a receipt's
/// envelope: every node that sees it drops the bundles those secrets open).
pub fn seal_revealing<R: RngCore + CryptoRng>(
    inner: &VerifiedBundle,
    recipient: &[u8; 32],
    now: DtnTime,
    rng: &mut R,
    reveals: &[[u8; TAG_LEN]],
) -> Result<VerifiedBundle, SealError> {
    if reveals.len() > MAX_REVEALS {
        return Err(SealError::NotSealed(format!(
            "{} delivery secrets, more than the {MAX_REVEALS} one bundle may reveal",
            reveals.len()
        )));
    }
    let opened: Vec<u8> = reveals.iter().flatten().copied().collect();
    let rpk = PublicKey::from(*recipient);
    let esk = StaticSecret::random_from_rng(&mut *rng);
    let epk = PublicKey::from(&esk).to_bytes();
    let shared = esk.diffie_hellman(&rpk);
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let d = derive(shared.as_bytes(), &epk, recipient);
    // v2: the derived 16 bytes are the delivery secret; the tag is its hash.
    let tag = reveal_tag(&d.tag);
    // Outer timing: minute resolution; expiry rounded up to the hour plus jitter; the
    // sequence number is derived from the content below (no per-node counter).
    if now.0 < 60_000 {
        return Err(SealError::NoClock);
    }
    let minute = 60_000;
    let time = DtnTime(now.0 - now.0 % minute);
    let expires = inner.bundle().expires_at(now).0;
    let rounded =
        expires.div_ceil(EXPIRY_BUCKET_MS) * EXPIRY_BUCKET_MS + rng.next_u64() % EXPIRY_BUCKET_MS;
    let lifetime = rounded
        .saturating_sub(time.0)
        .clamp(minute, MAX_LIFETIME_MS);
    let raw = inner.raw();
    let mut pt = Vec::with_capacity(padded_len(raw.len() + 4));
    pt.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    pt.extend_from_slice(raw);
    pt.resize(padded_len(raw.len() + 4), 0);
    let a = aad(&epk, &tag, time, lifetime, &opened);
    let mut ct = pt;
    aead(&d.key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(d.nonce),
            Aad::from(&a),
            &mut ct,
        )
        .map_err(|_| SealError::Auth)?;
    let created = CreationTimestamp {
        time,
        seq: content_seq(&a, &ct),
    };
    let digest = stamp_digest(&a, &ct);
    let stamp = make_stamp(
        &digest,
        required_bits(ct.len() + opened.len()),
        rng.next_u64(),
    );
    let body = SealedBody {
        epk,
        ct,
        stamp,
        opened,
    };
    let payload = adu::encode_kind(KIND_SEALED, &body);
    let mut tag_hex = String::with_capacity(32);
    for b in tag {
        tag_hex.push_str(&format!("{b:02x}"));
    }
    let destination = Eid::parse(&format!("dtn://{SEALED_NODE}/{tag_hex}"))
        .map_err(|e| SealError::NotSealed(e.to_string()))?;
    let primary = PrimaryBlock {
        flags: crate::bundle::primary::flags::MUST_NOT_FRAGMENT,
        crc: CrcType::Crc32c,
        destination,
        source: Eid::Null,
        report_to: Eid::Null,
        created,
        lifetime_ms: lifetime,
        fragment: None,
    };
    let blocks = vec![
        CanonicalBlock::new(
            block_types::HOP_COUNT,
            2,
            CrcType::Crc16,
            HopCount {
                limit: crate::bundle::DEFAULT_HOP_LIMIT,
                // A random start, so the first relay cannot tell it met the sender.
                count: rng.next_u64() % 8,
            }
            .to_data(),
        ),
        CanonicalBlock::new(block_types::PAYLOAD, 1, CrcType::Crc32c, payload),
    ];
    let bundle = Bundle { primary, blocks };
    bundle.validate().map_err(SealError::Inner)?;
    VerifiedBundle::decode(&bundle.encode()).map_err(SealError::Inner)
}

/// The parts of a sealed outer bundle, structurally checked; the ciphertext and the
/// revealed secrets borrowed from the payload when it is encoded as `seal` writes it.
struct Parsed<'a> {
    tag: [u8; TAG_LEN],
    epk: [u8; 32],
    ct: Cow<'a, [u8]>,
    stamp: u64,
    opened: Cow<'a, [u8]>,
    aad: Vec<u8>,
}

/// A sealed body's epk, ciphertext, stamp and revealed secrets, borrowed.
type InPlace<'a> = ([u8; 32], &'a [u8], u64, &'a [u8]);

/// The body of a sealed payload read in place, when it is encoded exactly as `seal`
/// writes it (`{"v": 1, "kind": "sealed", "body": {"epk", "ct", "stamp"[, "opened"]}}`,
/// definite lengths, in that order): its epk, ciphertext, stamp and revealed secrets.
/// `None` for any other encoding, which the serde path then judges as before: this only
/// saves copying a megabyte ciphertext three times.
fn body_in_place(payload: &[u8]) -> Option<InPlace<'_>> {
    use crate::bundle::cbor::Reader;
    use ciborium_ll::Header;
    let mut r = adu::body_reader(payload, KIND_SEALED)?;
    let key = |r: &mut Reader<'_>, k: &str| (r.text().ok()? == k).then_some(());
    let n = match r.header().ok()? {
        Header::Map(Some(n @ 3..=4)) => n,
        _ => return None,
    };
    key(&mut r, "epk")?;
    let epk: [u8; 32] = r.bytes().ok()?.try_into().ok()?;
    key(&mut r, "ct")?;
    let ct = r.bytes().ok()?;
    key(&mut r, "stamp")?;
    let stamp = r.uint().ok()?;
    let opened = if n == 4 {
        key(&mut r, "opened")?;
        r.bytes().ok()?
    } else {
        &[][..]
    };
    r.finish().ok()?;
    Some((epk, ct, stamp, opened))
}

fn parse(b: &Bundle) -> Result<Parsed<'_>, SealError> {
    let p = &b.primary;
    let bad = |s: &str| Err(SealError::NotSealed(s.to_string()));
    if !p.source.is_null() {
        return bad("its source is not dtn:none");
    }
    // Exactly the shape `seal` writes: nothing a stamp does not pay for can ride along.
    if p.flags != crate::bundle::primary::flags::MUST_NOT_FRAGMENT
        || p.fragment.is_some()
        || !p.report_to.is_null()
    {
        return bad("flags, fragment fields or report-to differ from a sealed bundle's");
    }
    if p.created.time.0 == 0 || p.lifetime_ms > MAX_LIFETIME_MS {
        return bad("no creation time, or a lifetime beyond the sealed maximum");
    }
    let shape: Vec<(u64, u64)> = b.blocks.iter().map(|x| (x.block_type, x.number)).collect();
    if shape != [(block_types::HOP_COUNT, 2), (block_types::PAYLOAD, 1)] {
        return bad("blocks other than a hop count and the payload");
    }
    let tag_hex = match &p.destination {
        Eid::Dtn(_) if p.destination.node_name() == Some(SEALED_NODE) => p
            .destination
            .to_string()
            .strip_prefix(&format!("dtn://{SEALED_NODE}/"))
            .map(str::to_string)
            .unwrap_or_default(),
        _ => {
            return Err(SealError::NotSealed(
                "destination is not a sealed tag".into(),
            ))
        }
    };
    let mut tag = [0u8; TAG_LEN];
    hex::decode_to_slice(&tag_hex, &mut tag)
        .map_err(|_| SealError::NotSealed("destination tag is not 16 bytes of hex".into()))?;
    let (epk, ct, stamp, opened) = match body_in_place(b.payload()) {
        Some((epk, ct, stamp, opened)) => (epk, Cow::Borrowed(ct), stamp, Cow::Borrowed(opened)),
        None => {
            let body: SealedBody = adu::decode_kind(b.payload(), KIND_SEALED)
                .map_err(|e| SealError::NotSealed(e.to_string()))?;
            (
                body.epk,
                Cow::Owned(body.ct),
                body.stamp,
                Cow::Owned(body.opened),
            )
        }
    };
    if !opened.len().is_multiple_of(TAG_LEN) || opened.len() > MAX_REVEALS * TAG_LEN {
        return Err(SealError::NotSealed(format!(
            "its list of delivery secrets is {} bytes, not a multiple of {TAG_LEN} up to {}",
            opened.len(),
            MAX_REVEALS * TAG_LEN
        )));
    }
    let aad = aad(&epk, &tag, p.created.time, p.lifetime_ms, &opened);
    Ok(Parsed {
        tag,
        epk,
        ct,
        stamp,
        opened,
        aad,
    })
}

/// What a relay checks before storing an unsigned bundle: that it is a well-formed sealed
/// bundle with a valid stamp. Costs one blake3 pass over the ciphertext.
pub fn check_stamp(b: &Bundle) -> Result<(), SealError> {
    let p = parse(b)?;
    if b.primary.created.seq != content_seq(&p.aad, &p.ct) {
        return Err(SealError::NotSealed(
            "its sequence number is not bound to its content".into(),
        ));
    }
    let need = required_bits(p.ct.len() + p.opened.len());
    let got = stamp_bits(&stamp_digest(&p.aad, &p.ct), p.stamp);
    if got < need {
        return Err(SealError::Stamp { got, need });
    }
    Ok(())
}

/// Whether an X25519 public key yields a real shared secret (not a low-order point).
pub fn usable_key(k: &[u8; 32]) -> bool {
    let probe = StaticSecret::from([0x42; 32]);
    probe
        .diffie_hellman(&PublicKey::from(*k))
        .was_contributory()
}

/// Whether a bundle is a sealed one (by its shape; says nothing about validity).
pub fn is_sealed(b: &Bundle) -> bool {
    is_sealed_primary(&b.primary)
}

/// [`is_sealed`] from the primary block alone.
pub fn is_sealed_primary(p: &crate::bundle::PrimaryBlock) -> bool {
    p.source.is_null() && p.destination.node_name() == Some(SEALED_NODE)
}

/// A fresh X25519 public key whose secret is forgotten at once: sealing for it makes a
/// bundle nobody can open (a receipt whose only use is the secrets it reveals).
pub fn nobody<R: RngCore + CryptoRng>(rng: &mut R) -> [u8; 32] {
    PublicKey::from(&StaticSecret::random_from_rng(rng)).to_bytes()
}

/// The tag in a sealed bundle's destination, if it is one.
pub fn tag_of(b: &Bundle) -> Option<[u8; TAG_LEN]> {
    if !is_sealed(b) {
        return None;
    }
    let hex_tag = b
        .primary
        .destination
        .to_string()
        .strip_prefix(&format!("dtn://{SEALED_NODE}/"))?
        .to_string();
    let mut tag = [0u8; TAG_LEN];
    hex::decode_to_slice(hex_tag, &mut tag).ok()?;
    Some(tag)
}

/// The delivery secrets a sealed bundle reveals (none for a malformed one).
pub fn reveals(b: &Bundle) -> Vec<[u8; TAG_LEN]> {
    match parse(b) {
        Ok(p) => p
            .opened
            .chunks_exact(TAG_LEN)
            .filter_map(|c| c.try_into().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A sealed bundle opened by its recipient.
pub struct Opened {
    /// The inner bundle, verified and addressed to the recipient.
    pub inner: VerifiedBundle,
    /// Its delivery secret (v2 tags; `None` for a v1 bundle, which cannot be revealed).
    pub secret: Option<[u8; TAG_LEN]>,
}

/// Try to open a sealed bundle with this node's key: `Ok(None)` if it is for someone else;
/// `Ok(Some(inner))` with the inner bundle verified (signature) and addressed to `me`.
pub fn open(outer: &Bundle, key: &SealKey, me: &Eid) -> Result<Option<VerifiedBundle>, SealError> {
    Ok(open_revealing(outer, key, me)?.map(|o| o.inner))
}

/// [`open`], also returning the delivery secret a receipt reveals.
pub fn open_revealing(
    outer: &Bundle,
    key: &SealKey,
    me: &Eid,
) -> Result<Option<Opened>, SealError> {
    open_with_any(outer, std::slice::from_ref(key), me)
}

/// [`open_revealing`] with each of a node's keys in turn (the node-ID key and an older
/// one): the bundle is parsed once, and the first key whose tag matches opens it.
pub fn open_with_any(
    outer: &Bundle,
    keys: &[SealKey],
    me: &Eid,
) -> Result<Option<Opened>, SealError> {
    let p = parse(outer)?;
    let epk = PublicKey::from(p.epk);
    let mut found = None;
    for key in keys {
        let shared = key.secret.diffie_hellman(&epk);
        if !shared.was_contributory() {
            continue;
        }
        let d = derive(shared.as_bytes(), &p.epk, &key.public());
        if reveal_tag(&d.tag) == p.tag {
            found = Some((d, true));
            break;
        } else if d.tag == p.tag {
            found = Some((d, false));
            break;
        }
    }
    let Some((d, v2)) = found else {
        return Ok(None);
    };
    let secret = v2.then_some(d.tag);
    let mut pt = p.ct.to_vec();
    let n = aead(&d.key)?
        .open_in_place(
            Nonce::assume_unique_for_key(d.nonce),
            Aad::from(&p.aad),
            &mut pt,
        )
        .map_err(|_| SealError::Auth)?
        .len();
    pt.truncate(n);
    if pt.len() < 4 {
        return Err(SealError::Plaintext("shorter than its length field".into()));
    }
    let len = u32::from_be_bytes([pt[0], pt[1], pt[2], pt[3]]) as usize;
    if len > pt.len() - 4 {
        return Err(SealError::Plaintext(format!(
            "claims {len} bytes, holds {}",
            pt.len() - 4
        )));
    }
    if pt.len() != padded_len(4 + len) || pt[4 + len..].iter().any(|&b| b != 0) {
        return Err(SealError::Plaintext("padding is not zeros".into()));
    }
    // The inner bundle keeps (a slice of) the plaintext itself: no copy.
    let inner = VerifiedBundle::decode_bytes(bytes::Bytes::from(pt).slice(4..4 + len))
        .map_err(SealError::Inner)?;
    let dest = inner.bundle().primary.destination.node_id();
    if dest != me.node_id() {
        return Err(SealError::Misaddressed(dest.to_string()));
    }
    Ok(Some(Opened { inner, secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AEAD is RFC 8439's ChaCha20-Poly1305 (its §2.8.2 vector): sealed bundles made
    /// by any implementation of it, earlier builds of ours included, open alike.
    #[test]
    fn the_aead_is_rfc_8439_chacha20_poly1305() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut ct = pt.to_vec();
        aead(&key)
            .unwrap()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut ct,
            )
            .unwrap();
        let want = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0600691";
        let hex: String = ct.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
        let n = aead(&key)
            .unwrap()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut ct,
            )
            .unwrap()
            .len();
        assert_eq!(&ct[..n], pt);
    }

    #[test]
    fn sealed_bodies_read_in_place_as_serde_reads_them() {
        for opened in [Vec::new(), vec![7u8; 2 * TAG_LEN]] {
            let body = SealedBody {
                epk: [3; 32],
                ct: (0..5000u32).map(|i| i as u8).collect(),
                stamp: 1234567,
                opened: opened.clone(),
            };
            let payload = adu::encode_kind(KIND_SEALED, &body);
            let (epk, ct, stamp, op) = body_in_place(&payload).expect("seal's own encoding");
            let serde: SealedBody = adu::decode_kind(&payload, KIND_SEALED).unwrap();
            assert_eq!(
                (epk, ct, stamp, op),
                (serde.epk, &serde.ct[..], serde.stamp, &serde.opened[..])
            );
            assert_eq!(serde, body);
            // Anything after it, or cut short: not read in place (serde refuses it too).
            let mut longer = payload.clone();
            longer.push(0);
            assert!(body_in_place(&longer).is_none());
            assert!(body_in_place(&payload[..payload.len() - 1]).is_none());
        }
        // The same fields in another order: not read in place, and serde still reads it.
        use ciborium::Value;
        let body = Value::Map(vec![
            (Value::Text("stamp".into()), Value::Integer(9.into())),
            (Value::Text("ct".into()), Value::Bytes(vec![1; 40])),
            (Value::Text("epk".into()), Value::Bytes(vec![2; 32])),
        ]);
        let payload = adu::encode_kind(KIND_SEALED, &body);
        assert!(body_in_place(&payload).is_none());
        let serde: SealedBody = adu::decode_kind(&payload, KIND_SEALED).unwrap();
        assert_eq!((serde.stamp, serde.ct.len(), serde.epk), (9, 40, [2; 32]));
    }

    #[test]
    fn padme_is_monotone_bounded_and_at_least_the_minimum() {
        let mut last = 0;
        for n in (0..5_000_000).step_by(997) {
            let p = padded_len(n);
            assert!(p >= n.max(MIN_PADDED) && p >= last);
            assert!(
                n < MIN_PADDED || (p - n) as f64 <= 0.12 * n as f64,
                "{n} -> {p}"
            );
            last = p;
        }
        assert_eq!(padded_len(1), MIN_PADDED);
    }

    #[test]
    fn stamp_difficulty_grows_with_size() {
        assert_eq!(required_bits(100), BASE_BITS);
        assert_eq!(required_bits(64 * 1024), BASE_BITS);
        assert_eq!(required_bits(64 * 1024 + 1), BASE_BITS + 1);
        assert_eq!(required_bits(1 << 20), BASE_BITS + 4);
    }
}
