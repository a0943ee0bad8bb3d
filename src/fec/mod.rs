//! Erasure-coded shards: a bundle's exact bytes become `stripes × (k data + m parity)`
//! Reed–Solomon shards (GF(2^8) with run-time SIMD products, [`gf`]). Every shard carries a Merkle
//! proof, so it is verified on its own against the object id before it is kept; any `k`
//! valid shards of each stripe rebuild the object.
//!
//! The object id commits to this one encoding: blake3 (derive-key mode) over the coding
//! parameters and the Merkle root of all shards. Pure: no I/O.

pub mod feed;
pub mod fountain;
pub mod gf;
pub mod merkle;
pub mod pack;

use crate::bundle::cbor::{Reader, Writer};
use gf::ReedSolomon;
use merkle::Hash;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub const SHARD_VERSION: u64 = 1;
/// Largest shard payload accepted.
pub const MAX_SHARD_LEN: u32 = 16 * 1024 * 1024;
/// Largest object accepted (the bundle decode limit).
pub const MAX_OBJECT_LEN: u64 = 64 * 1024 * 1024;
/// Most shards (leaves) in one object.
pub const MAX_LEAVES: u64 = 1 << 16;
/// GF(2^8) allows at most 256 shards per stripe.
pub const MAX_SHARDS_PER_STRIPE: u32 = 256;

/// A 32-byte object id.
pub type ObjectId = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    #[error("not a shard record: {0}")]
    BadRecord(String),
    #[error("shard format version {0} is not supported (this build reads version 1)")]
    Version(u64),
    #[error("impossible coding parameters: {0}")]
    Params(String),
    #[error("shard data is {got} bytes, its header says {want}")]
    WrongLength { got: usize, want: usize },
    #[error("shard does not belong to object {object}: its Merkle proof does not lead to that id (corrupted or forged)")]
    ProofMismatch { object: String },
    #[error("stripe {stripe} has {have} of the {need} shards needed")]
    NotEnoughShards {
        stripe: u32,
        have: usize,
        need: usize,
    },
    #[error("Reed-Solomon: {0}")]
    Rs(String),
}

/// Coding parameters of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub k: u32,
    pub m: u32,
    pub stripes: u32,
    pub shard_len: u32,
    pub object_len: u64,
}

impl Params {
    pub fn n(&self) -> u32 {
        self.k + self.m
    }

    pub fn leaves(&self) -> u64 {
        u64::from(self.stripes) * u64::from(self.n())
    }

    pub fn validate(&self) -> Result<(), FecError> {
        let bad = |s: String| Err(FecError::Params(s));
        if self.k > MAX_SHARDS_PER_STRIPE || self.m > MAX_SHARDS_PER_STRIPE {
            return bad(format!("k = {} or m = {} exceeds 256", self.k, self.m));
        }
        if self.k == 0 || self.stripes == 0 || self.shard_len == 0 {
            return bad("k, stripes and shard length must be at least 1".into());
        }
        if self.n() > MAX_SHARDS_PER_STRIPE {
            return bad(format!("k + m = {} exceeds 256", self.n()));
        }
        if self.leaves() > MAX_LEAVES {
            return bad(format!("{} shards exceed {MAX_LEAVES}", self.leaves()));
        }
        if self.shard_len > MAX_SHARD_LEN {
            return bad(format!(
                "shard length {} exceeds {MAX_SHARD_LEN}",
                self.shard_len
            ));
        }
        if self.object_len == 0 || self.object_len > MAX_OBJECT_LEN {
            return bad(format!(
                "object length {} is outside 1..={MAX_OBJECT_LEN}",
                self.object_len
            ));
        }
        let capacity = u64::from(self.stripes) * u64::from(self.k) * u64::from(self.shard_len);
        let exact = self
            .object_len
            .div_ceil(u64::from(self.stripes) * u64::from(self.k));
        if u64::from(self.shard_len) != exact {
            return bad(format!(
                "shard length {} is not the {exact} bytes an object of {} needs",
                self.shard_len, self.object_len
            ));
        }
        if self.object_len > capacity {
            return bad(format!(
                "object length {} does not fit {} stripes of {} × {} bytes",
                self.object_len, self.stripes, self.k, self.shard_len
            ));
        }
        Ok(())
    }

    /// The object id: blake3 over the parameters and the Merkle root.
    pub fn object_id(&self, root: &Hash) -> ObjectId {
        let mut h = blake3::Hasher::new_derive_key("mycelium shard object v1");
        h.update(&[SHARD_VERSION as u8]);
        h.update(&self.k.to_be_bytes());
        h.update(&self.m.to_be_bytes());
        h.update(&self.stripes.to_be_bytes());
        h.update(&self.shard_len.to_be_bytes());
        h.update(&self.object_len.to_be_bytes());
        h.update(root);
        *h.finalize().as_bytes()
    }
}

/// How to choose `k`, `m` and stripes for an object, by size and medium.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Parity as a fraction of the data shards (0.25 = 25%).
    pub parity: f64,
    /// Objects up to this size use k = 1 and whole copies as parity.
    pub tiny: usize,
    /// Preferred shard size for larger objects.
    pub shard_target: usize,
    /// Most data shards per stripe; more than this makes several stripes.
    pub max_k: u32,
}

impl Policy {
    /// USB sticks and folders: few large files are cheap, shards of 64 KiB.
    pub fn folder(parity: f64) -> Policy {
        Policy {
            parity,
            tiny: 4 * 1024,
            shard_target: 64 * 1024,
            max_k: 128,
        }
    }

    pub fn params(&self, len: usize) -> Params {
        let len = len.max(1);
        let parity = self.parity.clamp(0.0, 1.0);
        let m_for = |k: u32| -> u32 {
            if parity == 0.0 {
                0
            } else {
                ((f64::from(k) * parity).ceil() as u32).max(1)
            }
        };
        if len <= self.tiny {
            let m = if parity == 0.0 {
                0
            } else {
                (parity * 4.0).ceil() as u32
            };
            return Params {
                k: 1,
                m: m.min(3),
                stripes: 1,
                shard_len: len as u32,
                object_len: len as u64,
            };
        }
        let max_k = self.max_k.clamp(1, 255);
        // Never more data shards than the leaf limit leaves room for with full parity.
        let total = len
            .div_ceil(self.shard_target.max(1))
            .clamp(2, (MAX_LEAVES / 2) as usize) as u32;
        let stripes = total.div_ceil(max_k);
        let k = total.div_ceil(stripes);
        let m = m_for(k).min(MAX_SHARDS_PER_STRIPE - k);
        let shard_len = len.div_ceil((stripes * k) as usize) as u32;
        Params {
            k,
            m,
            stripes,
            shard_len,
            object_len: len as u64,
        }
    }
}

/// One verified-on-arrival piece of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub object: ObjectId,
    pub params: Params,
    pub stripe: u32,
    pub index: u32,
    pub proof: Vec<Hash>,
    pub data: Vec<u8>,
}

impl Shard {
    pub fn leaf_index(&self) -> u64 {
        u64::from(self.stripe) * u64::from(self.params.n()) + u64::from(self.index)
    }

    pub fn is_parity(&self) -> bool {
        self.index >= self.params.k
    }

    /// CBOR: `[1, object, k, m, stripes, shard_len, object_len, stripe, index, [proof*], data]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_bound());
        self.encode_into(&mut out);
        out
    }

    /// At least the length of [`Shard::encode`]'s bytes.
    pub fn encoded_bound(&self) -> usize {
        self.data.len() + 64 + 34 * self.proof.len()
    }

    /// [`Shard::encode`]'s bytes appended to `out` (a pack being built), with no buffer
    /// of their own.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = Writer {
            buf: std::mem::take(out),
        };
        w.array(11);
        w.uint(SHARD_VERSION);
        w.bytes(&self.object);
        let p = &self.params;
        w.uint(p.k.into());
        w.uint(p.m.into());
        w.uint(p.stripes.into());
        w.uint(p.shard_len.into());
        w.uint(p.object_len);
        w.uint(self.stripe.into());
        w.uint(self.index.into());
        w.array(self.proof.len());
        for h in &self.proof {
            w.bytes(h);
        }
        w.bytes(&self.data);
        *out = w.into_vec();
    }

    /// Decode a record and verify it against its object id. Nothing is allocated beyond
    /// the input's own size.
    pub fn decode_verified(bytes: &[u8]) -> Result<Shard, FecError> {
        let bad = |e: crate::bundle::cbor::CborError| FecError::BadRecord(e.to_string());
        let mut r = Reader::new(bytes);
        if r.array().map_err(bad)? != 11 {
            return Err(FecError::BadRecord("expected 11 fields".into()));
        }
        let v = r.uint().map_err(bad)?;
        if v != SHARD_VERSION {
            return Err(FecError::Version(v));
        }
        let object: ObjectId = r
            .bytes()
            .map_err(bad)?
            .try_into()
            .map_err(|_| FecError::BadRecord("object id is not 32 bytes".into()))?;
        let small = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| FecError::Params(format!("{what} {v} is too large")))
        };
        let params = Params {
            k: small(r.uint().map_err(bad)?, "k")?,
            m: small(r.uint().map_err(bad)?, "m")?,
            stripes: small(r.uint().map_err(bad)?, "stripes")?,
            shard_len: small(r.uint().map_err(bad)?, "shard length")?,
            object_len: r.uint().map_err(bad)?,
        };
        params.validate()?;
        let stripe = small(r.uint().map_err(bad)?, "stripe")?;
        let index = small(r.uint().map_err(bad)?, "index")?;
        if stripe >= params.stripes || index >= params.n() {
            return Err(FecError::Params(format!(
                "shard {stripe}/{index} is outside {} stripes of {}",
                params.stripes,
                params.n()
            )));
        }
        let depth = merkle::depth(params.leaves());
        let np = r.array().map_err(bad)?;
        if np != depth as usize {
            return Err(FecError::BadRecord(format!(
                "proof has {np} hashes, {depth} expected"
            )));
        }
        let mut proof = Vec::with_capacity(np);
        for _ in 0..np {
            proof.push(
                r.bytes()
                    .map_err(bad)?
                    .try_into()
                    .map_err(|_| FecError::BadRecord("proof hash is not 32 bytes".into()))?,
            );
        }
        let data = r.bytes().map_err(bad)?;
        r.finish().map_err(bad)?;
        if data.len() != params.shard_len as usize {
            return Err(FecError::WrongLength {
                got: data.len(),
                want: params.shard_len as usize,
            });
        }
        let shard = Shard {
            object,
            params,
            stripe,
            index,
            proof,
            data: data.to_vec(),
        };
        let root = merkle::root_from_proof(
            merkle::leaf(shard.leaf_index(), &shard.data),
            shard.leaf_index(),
            &shard.proof,
        );
        if params.object_id(&root) != object {
            return Err(FecError::ProofMismatch {
                object: hex::encode(&object[..8]),
            });
        }
        Ok(shard)
    }
}

type CodecCache = Mutex<HashMap<(u32, u32), Arc<ReedSolomon>>>;

/// A cached Reed–Solomon codec for (k, m); built once per shape, shared after.
pub fn codec(k: u32, m: u32) -> Result<Arc<ReedSolomon>, FecError> {
    static CACHE: OnceLock<CodecCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = g.get(&(k, m)) {
        return Ok(c.clone());
    }
    let c = Arc::new(
        ReedSolomon::new(k as usize, m as usize).map_err(|e| FecError::Rs(format!("{e:?}")))?,
    );
    // A hostile stick chooses shapes: keep the cache small.
    if g.len() >= 64 {
        g.clear();
    }
    g.insert((k, m), c.clone());
    Ok(c)
}

/// Encode an object's bytes into all its shards.
pub fn encode(bytes: &[u8], params: Params) -> Result<(ObjectId, Vec<Shard>), FecError> {
    params.validate()?;
    if bytes.len() as u64 != params.object_len {
        return Err(FecError::Params(
            "object length differs from its parameters".into(),
        ));
    }
    let sl = params.shard_len as usize;
    let (k, m) = (params.k as usize, params.m as usize);
    let mut pieces: Vec<(u32, u32, Vec<u8>)> = Vec::with_capacity(params.leaves() as usize);
    for s in 0..params.stripes as usize {
        let base = s * k * sl;
        let data: Vec<Vec<u8>> = (0..k)
            .map(|i| {
                let start = (base + i * sl).min(bytes.len());
                let end = (base + (i + 1) * sl).min(bytes.len());
                let mut d = bytes[start..end].to_vec();
                d.resize(sl, 0);
                d
            })
            .collect();
        let mut parity = vec![vec![0u8; sl]; m];
        if m > 0 {
            codec(params.k, params.m)?
                .encode_sep(&data, &mut parity)
                .map_err(|e| FecError::Rs(format!("{e:?}")))?;
        }
        for (i, d) in data.into_iter().chain(parity).enumerate() {
            pieces.push((s as u32, i as u32, d));
        }
    }
    let leaves: Vec<Hash> = pieces
        .iter()
        .enumerate()
        .map(|(li, (_, _, d))| merkle::leaf(li as u64, d))
        .collect();
    let (root, proofs) = merkle::build(&leaves);
    let object = params.object_id(&root);
    let shards = pieces
        .into_iter()
        .zip(proofs)
        .map(|((stripe, index, data), proof)| Shard {
            object,
            params,
            stripe,
            index,
            proof,
            data,
        })
        .collect();
    Ok((object, shards))
}

/// Whether these shards (verified, of one object) suffice to rebuild it.
pub fn complete(params: &Params, shards: &[&Shard]) -> bool {
    let mut per = vec![0u32; params.stripes as usize];
    let mut seen = std::collections::HashSet::new();
    for s in shards {
        if seen.insert(s.leaf_index()) {
            per[s.stripe as usize] += 1;
        }
    }
    per.iter().all(|c| *c >= params.k)
}

/// Rebuild an object from verified shards of it. Returns the bytes and whether any parity
/// shard was needed.
pub fn rebuild(params: &Params, shards: &[&Shard]) -> Result<(Vec<u8>, bool), FecError> {
    let (k, n, sl) = (
        params.k as usize,
        params.n() as usize,
        params.shard_len as usize,
    );
    let mut out = Vec::with_capacity(params.stripes as usize * k * sl);
    let mut used_parity = false;
    for s in 0..params.stripes {
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; n];
        for sh in shards.iter().filter(|x| x.stripe == s) {
            if sh.data.len() == sl {
                slots[sh.index as usize] = Some(sh.data.clone());
            }
        }
        let have = slots.iter().filter(|x| x.is_some()).count();
        if have < k {
            return Err(FecError::NotEnoughShards {
                stripe: s,
                have,
                need: k,
            });
        }
        if slots[..k].iter().any(Option::is_none) {
            used_parity = true;
            codec(params.k, params.m)?
                .reconstruct_data(&mut slots)
                .map_err(|e| FecError::Rs(format!("{e:?}")))?;
        }
        for d in slots.into_iter().take(k) {
            out.extend_from_slice(&d.unwrap_or_default());
        }
    }
    out.truncate(params.object_len as usize);
    Ok((out, used_parity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize, policy: Policy, drop: &[usize]) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let p = policy.params(len);
        p.validate().unwrap();
        let (id, shards) = encode(&bytes, p).unwrap();
        let mut kept = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            let back = Shard::decode_verified(&s.encode()).unwrap();
            assert_eq!(&back, s);
            assert_eq!(back.object, id);
            if !drop.contains(&i) {
                kept.push(back);
            }
        }
        let refs: Vec<&Shard> = kept.iter().collect();
        assert!(complete(&p, &refs));
        let (out, parity) = rebuild(&p, &refs).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(parity, drop.iter().any(|d| (*d as u32 % p.n()) < p.k));
    }

    /// A record written into a pack in place is the record [`Shard::encode`] makes, after
    /// what the pack held, and no longer than the room reserved for it.
    #[test]
    fn records_written_in_place_are_the_records() {
        let bytes: Vec<u8> = (0..300_000).map(|i| (i * 7 % 253) as u8).collect();
        let (_, shards) = encode(&bytes, Policy::folder(0.5).params(bytes.len())).unwrap();
        let mut pack = b"head".to_vec();
        for s in &shards {
            let at = pack.len();
            s.encode_into(&mut pack);
            assert_eq!(pack[at..], s.encode()[..]);
            assert!(pack.len() - at <= s.encoded_bound());
        }
        assert_eq!(&pack[..4], b"head");
    }

    #[test]
    fn any_k_shards_rebuild() {
        let pol = Policy::folder(0.25);
        roundtrip(100, pol, &[]);
        roundtrip(100, pol, &[0]);
        roundtrip(5000, pol, &[]);
        roundtrip(300_000, pol, &[0, 2]);
        roundtrip(300_000, pol, &[4, 5]);
    }

    #[test]
    fn large_objects_use_several_stripes() {
        let pol = Policy {
            parity: 0.25,
            tiny: 16,
            shard_target: 64,
            max_k: 16,
        };
        let p = pol.params(5000);
        assert!(p.stripes > 1, "{p:?}");
        assert!(p.k <= 16);
        roundtrip(5000, pol, &[0, 16 + 4, 40]);
    }

    #[test]
    fn forged_and_corrupted_shards_are_refused() {
        let bytes = vec![7u8; 200_000];
        let p = Policy::folder(0.25).params(bytes.len());
        let (_, shards) = encode(&bytes, p).unwrap();
        let (_, other) = encode(&vec![8u8; 200_000], p).unwrap();
        // other object's data with this object's id and proof
        let mut forged = other[0].clone();
        forged.object = shards[0].object;
        forged.proof = shards[0].proof.clone();
        assert!(matches!(
            Shard::decode_verified(&forged.encode()),
            Err(FecError::ProofMismatch { .. })
        ));
        let enc = shards[1].encode();
        for i in (0..enc.len()).step_by(97) {
            let mut b = enc.clone();
            b[i] ^= 0x10;
            assert!(Shard::decode_verified(&b).is_err(), "flip at {i} accepted");
        }
        assert!(Shard::decode_verified(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn too_few_shards_say_how_many_are_missing() {
        let bytes = vec![1u8; 300_000];
        let p = Policy::folder(0.25).params(bytes.len());
        let (_, shards) = encode(&bytes, p).unwrap();
        let refs: Vec<&Shard> = shards.iter().skip(p.m as usize + 1).collect();
        assert!(!complete(&p, &refs));
        assert!(matches!(
            rebuild(&p, &refs),
            Err(FecError::NotEnoughShards { .. })
        ));
    }
}
