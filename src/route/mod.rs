//! Forwarding policy: which bundles should travel on the next contact and in what order.
//! Pure: decisions over values (records, summaries, budgets), no I/O.
//!
//! Priority: payments and results first, then receipts, tasks and messages, then bulk
//! (model blobs, opaque and unknown kinds). Within a class, what expires soonest goes first.

use crate::time::DtnTime;

/// Priority class of an ADU kind (lower travels first).
pub fn priority(kind: &str) -> u8 {
    match kind {
        "payment" | "result" => 0,
        "receipt" => 1,
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
