//! Forwarding policy: which bundles should travel on the next contact and in what order.
//! Pure: decisions over values (records, summaries, budgets), no I/O.
//!
//! Priority: payments and results first, then receipts, tasks and messages, then bulk
//! (model blobs, opaque and unknown kinds). Within a class, what expires soonest goes first.

use crate::time::DtnTime;

pub mod delivery;

/// Priority class of an ADU kind (lower travels first).
pub fn priority(kind: &str) -> u8 {
    match kind {
        "payment" | "result" => 0,
        "receipt" | "receipts" => 1,
        "task" | "message" => 2,
        _ => 3,
    }
}

/// A bundle that could travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: [u8; 32],
    pub kind: String,
    pub expires_at: DtnTime,
    /// Bytes it will take on the medium (shards and framing included).
    pub cost: u64,
}

/// Why a candidate was left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub expired: usize,
    pub unwanted: usize,
    pub over_budget: usize,
}

/// Choose what travels: drop expired and unwanted ones (already on the medium, known held
/// by the peer or delivered), order by priority and expiry, then fill `budget` greedily
/// (a big bundle that does not fit does not stop smaller ones behind it).
pub fn plan(
    mut candidates: Vec<Candidate>,
    now: DtnTime,
    budget: u64,
    unwanted: impl Fn(&Candidate) -> bool,
) -> (Vec<Candidate>, Skipped) {
    let mut skipped = Skipped::default();
    candidates.retain(|c| {
        if c.expires_at <= now {
            skipped.expired += 1;
            false
        } else if unwanted(c) {
            skipped.unwanted += 1;
            false
        } else {
            true
        }
    });
    candidates.sort_by(|a, b| {
        (priority(&a.kind), a.expires_at, a.key).cmp(&(priority(&b.kind), b.expires_at, b.key))
    });
    let mut left = budget;
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.cost <= left {
            left -= c.cost;
            out.push(c);
        } else {
            skipped.over_budget += 1;
        }
    }
    (out, skipped)
}

/// Broadcast carousel schedule: given how many symbols each segment sends in a pass, the
/// contents of each file as `(segment, symbol index)`, `per_file` to a file. Segments are
/// interleaved round-robin (symbol i of every segment, then i + 1, ...), so consecutive
/// files carry different symbols of every segment and a burst of lost files costs each
/// segment a little instead of one segment everything.
pub fn interleave(counts: &[usize], per_file: usize) -> Vec<Vec<(usize, usize)>> {
    let longest = counts.iter().copied().max().unwrap_or(0);
    let mut order = Vec::with_capacity(counts.iter().sum());
    for i in 0..longest {
        for (s, n) in counts.iter().enumerate() {
            if i < *n {
                order.push((s, i));
            }
        }
    }
    order.chunks(per_file.max(1)).map(<[_]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(k: u8, kind: &str, exp: u64, cost: u64) -> Candidate {
        Candidate {
            key: [k; 32],
            kind: kind.into(),
            expires_at: DtnTime(exp),
            cost,
        }
    }

    #[test]
    fn interleave_spreads_every_segment_over_consecutive_files() {
        // equal segments, a file as wide as the segment count: one symbol of each per file
        let files = interleave(&[5, 5, 5], 3);
        assert_eq!(files.len(), 5);
        for (i, f) in files.iter().enumerate() {
            assert_eq!(f, &vec![(0, i), (1, i), (2, i)]);
        }
        // unequal segments: every symbol exactly once, in round-robin order
        let files = interleave(&[6, 3, 6], 4);
        let all: Vec<(usize, usize)> = files.concat();
        assert_eq!(all.len(), 15);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 15);
        assert_eq!(&all[..4], &[(0, 0), (1, 0), (2, 0), (0, 1)]);
    }

    #[test]
    fn payments_first_then_soonest_expiry_within_budget() {
        let cands = vec![
            c(1, "blob", 100, 10),
            c(2, "task", 50, 10),
            c(3, "payment", 90, 10),
            c(4, "message", 40, 10),
            c(5, "result", 10, 10),
            c(6, "message", 5, 10), // expired at now = 5
            c(7, "task", 60, 1000), // too big
            c(8, "task", 70, 10),   // unwanted
        ];
        let (out, sk) = plan(cands, DtnTime(5), 55, |x| x.key == [8; 32]);
        let keys: Vec<u8> = out.iter().map(|x| x.key[0]).collect();
        assert_eq!(keys, vec![5, 3, 4, 2, 1]);
        assert_eq!(
            sk,
            Skipped {
                expired: 1,
                unwanted: 1,
                over_budget: 1
            }
        );
        let (out, sk) = plan(
            vec![c(1, "blob", 100, 10), c(2, "payment", 100, 10)],
            DtnTime(0),
            15,
            |_| false,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, [2; 32]);
        assert_eq!(sk.over_budget, 1);
    }
}
