//! When two results of one task count as the same answer, for the quorum:
//! - `digest`: the same output hash (the job is exact);
//! - `embed`: the same number of vectors, of the same width, each pair with cosine
//!   similarity ≥ [`EMBED_MIN_COSINE`] (a GPU and a CPU differ in the last bits);
//! - `generate`: the same output here (greedy decoding is deterministic on one
//!   implementation). A marketplace that holds the model also re-scores each answer
//!   (`market::engine::GenerateCheck`, teacher-forced), and two answers that both pass
//!   agree: a GPU and a CPU can part on a near tie.
//!
//! Owns: output agreement. Pure.

use crate::adu::market::JobKind;

/// Least cosine similarity between two embeddings of the same text that agree.
pub const EMBED_MIN_COSINE: f32 = 0.999;

/// Decode an `embed` output: a CBOR array of float32 arrays.
pub fn decode_vectors(b: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    ciborium::from_reader(b).map_err(|e| format!("not an embedding output: {e}"))
}

/// Cosine similarity of two vectors (0 when either is zero or their widths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// Whether outputs `a` and `b` (with their hashes) of a `job` agree.
pub fn agree(job: JobKind, a: (&[u8], &[u8]), b: (&[u8], &[u8])) -> bool {
    if a.0 == b.0 {
        return true;
    }
    match job {
        JobKind::Digest | JobKind::Generate => false,
        JobKind::Embed => match (decode_vectors(a.1), decode_vectors(b.1)) {
            (Ok(x), Ok(y)) => {
                !x.is_empty()
                    && x.len() == y.len()
                    && x.iter()
                        .zip(&y)
                        .all(|(u, v)| u.len() == v.len() && cosine(u, v) >= EMBED_MIN_COSINE)
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &[Vec<f32>]) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn embeddings_agree_within_the_cosine_bound_only() {
        let a = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        let mut b = a.clone();
        b[0][1] = 0.01; // cosine 0.99995
        let mut c = a.clone();
        c[1] = vec![0.0, 1.0, 0.1]; // cosine 0.995
        let (ea, eb, ec) = (enc(&a), enc(&b), enc(&c));
        let h = |x: &[u8]| *blake3::hash(x).as_bytes();
        let (ha, hb, hc) = (h(&ea), h(&eb), h(&ec));
        assert!(agree(JobKind::Embed, (&ha, &ea), (&hb, &eb)));
        assert!(!agree(JobKind::Embed, (&ha, &ea), (&hc, &ec)));
        // Exact jobs need the same bytes.
        assert!(!agree(JobKind::Digest, (&ha, &ea), (&hb, &eb)));
        // A different count of vectors, or garbage, never agrees.
        let short = enc(&a[..1]);
        assert!(!agree(JobKind::Embed, (&ha, &ea), (&h(&short), &short)));
        assert!(!agree(JobKind::Embed, (&ha, &ea), (&[9; 32], b"junk")));
    }
}
