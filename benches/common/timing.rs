//! Timing shared by the benches that print tables: the median of repeated runs.

use std::time::Instant;

/// Median seconds of `runs` timed calls after `warm` untimed ones.
pub fn median(warm: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}
