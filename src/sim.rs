//! A seeded lossy broadcast channel and a simulation of the feed over it, used by the
//! broadcast test and benchmark. Pure: real fountain encoding and decoding and the real
//! carousel schedule (`route::interleave`), with files kept in memory instead of on disk.
//!
//! The channel loses whole files, independently or in Gilbert–Elliott bursts.

use crate::fec::fountain;
use crate::route;

/// splitmix64: a small, seedable generator, so every simulation is reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Channel {
    /// Each file is lost with probability `loss`.
    Independent { loss: f64 },
    /// Two-state bursts: in the bad state every file is lost, in the good state none;
    /// `burst` is the mean burst length in files and `loss` the long-run fraction lost.
    GilbertElliott { loss: f64, burst: f64 },
}

impl Channel {
    /// Which of `n` files are lost.
    pub fn lose(&self, n: usize, rng: &mut Rng) -> Vec<bool> {
        match *self {
            Channel::Independent { loss } => (0..n).map(|_| rng.unit() < loss).collect(),
            Channel::GilbertElliott { loss, burst } => {
                let p_bg = 1.0 / burst.max(1.0);
                let p_gb = (loss * p_bg / (1.0 - loss).max(1e-9)).min(1.0);
                let mut bad = rng.unit() < loss;
                (0..n)
                    .map(|_| {
                        let lost = bad;
                        bad = if bad {
                            rng.unit() >= p_bg
                        } else {
                            rng.unit() < p_gb
                        };
                        lost
                    })
                    .collect()
            }
        }
    }
}

/// The shape of a simulated feed.
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    pub bundles: usize,
    pub bundle_size: usize,
    pub segment_size: usize,
    pub symbol_size: u16,
    /// Symbols per file.
    pub per_file: usize,
}

/// Fraction of bundles recovered after each of `passes` passes of the coded feed.
pub fn coded(feed: &Feed, overhead: f64, passes: u32, ch: Channel, seed: u64) -> Vec<f64> {
    let per_seg = (feed.segment_size / feed.bundle_size).max(1);
    let mut rng = Rng::new(seed);
    let mut segs = Vec::new();
    let mut left = feed.bundles;
    while left > 0 {
        let n = left.min(per_seg);
        let data: Vec<u8> = (0..n * feed.bundle_size)
            .map(|_| rng.next_u64() as u8)
            .collect();
        segs.push((n, data));
        left -= n;
    }
    let enc: Vec<fountain::Encoded> = segs
        .iter()
        .filter_map(|(_, d)| fountain::encode(d, feed.symbol_size, overhead, passes).ok())
        .collect();
    let mut got: Vec<Vec<(u32, Vec<u8>)>> = vec![Vec::new(); enc.len()];
    let mut done = vec![false; enc.len()];
    let mut out = Vec::new();
    for p in 0..passes as usize {
        let counts: Vec<usize> = enc.iter().map(|e| e.passes[p].len()).collect();
        let files = route::interleave(&counts, feed.per_file);
        let lost = ch.lose(files.len(), &mut rng);
        for (f, syms) in files.iter().enumerate() {
            if lost[f] {
                continue;
            }
            for (s, i) in syms {
                got[*s].push(enc[*s].passes[p][*i].clone());
            }
        }
        for (s, e) in enc.iter().enumerate() {
            if !done[s] {
                let v: Vec<(u32, &[u8])> = got[s].iter().map(|(i, d)| (*i, d.as_slice())).collect();
                done[s] = matches!(fountain::decode(e.params, &v), Ok(Some(d)) if d == segs[s].1);
            }
        }
        let recovered: usize = segs
            .iter()
            .zip(&done)
            .filter(|(_, d)| **d)
            .map(|(s, _)| s.0)
            .sum();
        out.push(recovered as f64 / feed.bundles as f64);
    }
    out
}

/// The same feed as a plain carousel of whole bundles (what a feed does without coding):
/// bundles packed whole into files of `per_file × symbol_size` bytes, resent every pass.
pub fn plain(feed: &Feed, passes: u32, ch: Channel, seed: u64) -> Vec<f64> {
    let per_file_bundles = ((feed.per_file * feed.symbol_size as usize) / feed.bundle_size).max(1);
    let files = feed.bundles.div_ceil(per_file_bundles);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut have = vec![false; files];
    let mut out = Vec::new();
    for _ in 0..passes {
        let lost = ch.lose(files, &mut rng);
        for (h, l) in have.iter_mut().zip(lost) {
            *h |= !l;
        }
        let recovered: usize = have
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| per_file_bundles.min(feed.bundles - i * per_file_bundles))
            .sum();
        out.push(recovered as f64 / feed.bundles as f64);
    }
    out
}
