//! Binary Merkle tree over shard hashes (blake3, domain-separated leaves and nodes, padded
//! to a power of two with zero hashes), so one shard can be checked alone against its
//! object id.

pub type Hash = [u8; 32];

const LEAF: &str = "mycelium shard leaf v1";
const NODE: &str = "mycelium shard node v1";

/// Hash of leaf `index` holding `data`.
pub fn leaf(index: u64, data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(LEAF);
    h.update(&index.to_be_bytes());
    h.update(data);
    *h.finalize().as_bytes()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(NODE);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// Depth of the padded tree for `n` leaves (0 for a single leaf).
pub fn depth(n: u64) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Root and the proof (siblings, leaf to root) of every leaf.
pub fn build(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    let d = depth(leaves.len() as u64) as usize;
    let width = 1usize << d;
    let mut level: Vec<Hash> = leaves.to_vec();
    level.resize(width, [0u8; 32]);
    let mut proofs: Vec<Vec<Hash>> = vec![Vec::with_capacity(d); leaves.len()];
    let mut pos: Vec<usize> = (0..leaves.len()).collect();
    while level.len() > 1 {
        for (i, p) in pos.iter_mut().enumerate() {
            proofs[i].push(level[*p ^ 1]);
            *p >>= 1;
        }
        level = level.chunks(2).map(|c| node(&c[0], &c[1])).collect();
    }
    (level[0], proofs)
}

/// Recompute the root from a leaf hash, its index and its proof.
pub fn root_from_proof(leaf_hash: Hash, index: u64, proof: &[Hash]) -> Hash {
    let mut h = leaf_hash;
    let mut i = index;
    for s in proof {
        h = if i & 1 == 0 { node(&h, s) } else { node(s, &h) };
        i >>= 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proof_leads_to_the_root_and_no_other_leaf_does() {
        for n in [1usize, 2, 3, 5, 8, 13] {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(i as u64, &[i as u8])).collect();
            let (root, proofs) = build(&leaves);
            for i in 0..n {
                assert_eq!(proofs[i].len() as u32, depth(n as u64));
                assert_eq!(root_from_proof(leaves[i], i as u64, &proofs[i]), root);
                let wrong = leaf(i as u64, b"forged");
                assert_ne!(root_from_proof(wrong, i as u64, &proofs[i]), root);
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_proof(leaves[i], j as u64, &proofs[i]), root);
                }
            }
        }
    }
}
