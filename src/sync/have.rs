//! Have-summaries: a node's signed list of the bundles it holds, as sorted 8-byte prefixes
//! of bundle keys (8 bytes per bundle; a false match needs a 64-bit collision). Signed by
//! the node so a stranger cannot make a stick claim "B already has this" and suppress
//! delivery.
//!
//! CBOR: `[1, node-id text, generated (DTN ms), prefixes (bstr, 8×n), signature (bstr 64)]`;
//! the signature covers `"mycelium/have/v1"` followed by the encoding of the first four
//! fields as a 4-element array.

use crate::bundle::cbor::{Reader, Writer};
use crate::bundle::Eid;
use crate::identity::{self, Identity};
use crate::time::DtnTime;

const DOMAIN: &[u8] = b"mycelium/have/v1";
/// Most bundles one summary may list (8 MiB of prefixes).
pub const MAX_ENTRIES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaveError {
    #[error("malformed have-summary: {0}")]
    Malformed(String),
    #[error("have-summary signature by {0} does not verify")]
    BadSignature(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveSummary {
    pub node: Eid,
    pub generated: DtnTime,
    prefixes: Vec<[u8; 8]>,
}

fn prefix(key: &[u8; 32]) -> [u8; 8] {
    let mut p = [0u8; 8];
    p.copy_from_slice(&key[..8]);
    p
}

impl HaveSummary {
    pub fn new(node: Eid, generated: DtnTime, keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        let mut prefixes: Vec<[u8; 8]> = keys.into_iter().map(|k| prefix(&k)).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        HaveSummary {
            node,
            generated,
            prefixes,
        }
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Whether the node (probably) holds the bundle with this key.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.prefixes.binary_search(&prefix(key)).is_ok()
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + 8 * self.prefixes.len());
        w.array(4);
        w.uint(1);
        w.text(&self.node.to_string());
        w.uint(self.generated.0);
        w.bytes(&self.prefixes.concat());
        w.into_vec()
    }

    /// Sign with `id` (which must be `self.node`) and encode.
    pub fn sign(&self, id: &Identity) -> Vec<u8> {
        let body = self.body();
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        let sig = id.sign(&msg);
        let mut w = Writer::with_capacity(body.len() + 80);
        w.array(5);
        // the body's fields, without its 4-array header
        w.buf.extend_from_slice(&body[1..]);
        w.bytes(&sig);
        w.into_vec()
    }

    /// Decode and verify a summary against the node key in its node ID.
    pub fn decode_verified(bytes: &[u8]) -> Result<HaveSummary, HaveError> {
        let m = |e: crate::bundle::cbor::CborError| HaveError::Malformed(e.to_string());
        let mut r = Reader::new(bytes);
        if r.array().map_err(m)? != 5 {
            return Err(HaveError::Malformed("expected 5 fields".into()));
        }
        if r.uint().map_err(m)? != 1 {
            return Err(HaveError::Malformed("unknown version".into()));
        }
        let node =
            Eid::parse(r.text().map_err(m)?).map_err(|e| HaveError::Malformed(e.to_string()))?;
        if node.node_id() != node {
            return Err(HaveError::Malformed(format!("{node} is not a node ID")));
        }
        let generated = DtnTime(r.uint().map_err(m)?);
        let raw = r.bytes().map_err(m)?;
        if raw.len() % 8 != 0 || raw.len() / 8 > MAX_ENTRIES {
            return Err(HaveError::Malformed("prefix list length".into()));
        }
        let sig: [u8; 64] = r
            .bytes()
            .map_err(m)?
            .try_into()
            .map_err(|_| HaveError::Malformed("signature is not 64 bytes".into()))?;
        r.finish().map_err(m)?;
        let prefixes: Vec<[u8; 8]> = raw
            .chunks_exact(8)
            .map(|c| {
                let mut p = [0u8; 8];
                p.copy_from_slice(c);
                p
            })
            .collect();
        if prefixes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(HaveError::Malformed("prefixes are not sorted".into()));
        }
        let s = HaveSummary {
            node,
            generated,
            prefixes,
        };
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&s.body());
        if !identity::verify_by_node(&s.node, &msg, &sig) {
            return Err(HaveError::BadSignature(s.node.to_string()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_summary_round_trips_and_forgeries_fail() {
        let id = Identity::from_seed([3; 32]);
        let keys: Vec<[u8; 32]> = (0..50u8).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        let s = HaveSummary::new(id.node_id(), DtnTime(5), keys.clone());
        let bytes = s.sign(&id);
        let back = HaveSummary::decode_verified(&bytes).unwrap();
        assert_eq!(back, s);
        assert!(keys.iter().all(|k| back.contains(k)));
        assert!(!back.contains(blake3::hash(b"other").as_bytes()));
        // signed by someone else for this node id
        let mallory = Identity::from_seed([4; 32]);
        let forged = s.sign(&mallory);
        assert!(matches!(
            HaveSummary::decode_verified(&forged),
            Err(HaveError::BadSignature(_))
        ));
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 70] ^= 1;
        assert!(HaveSummary::decode_verified(&flipped).is_err());
    }
}
