//! Element-wise maths for the CPU engines, written branch-free over plain arrays so that
//! the loops calling it vectorise in whichever instruction set the caller is compiled for
//! (the engines compile their bodies once per path: portable, AVX2, AVX-512): `exp` and
//! `erf` polynomials, sums and maxima in sixteen independent lanes, a dot product in eight.
//!
//! Owns: these scalar building blocks. Pure; no I/O, no allocation.

/// Σ f(x) over `xs` in sixteen independent lanes, so it vectorises (a sum indexed by
/// `i % 16` did not).
#[inline(always)]
pub fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let c = xs.chunks_exact(16);
    let tail: f32 = c.remainder().iter().map(|&v| f(v)).sum();
    let mut acc = [0f32; 16];
    for ch in c {
        for k in 0..16 {
            acc[k] += f(ch[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest of `xs` (NaN never wins), in sixteen lanes as [`sum16`].
#[inline(always)]
pub fn max16(xs: &[f32]) -> f32 {
    let c = xs.chunks_exact(16);
    let tail = c
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut acc = [f32::NEG_INFINITY; 16];
    for ch in c {
        for k in 0..16 {
            acc[k] = acc[k].max(ch[k]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// `exp(x)`, Cephes' single-precision polynomial: branch-free so loops over it vectorise.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut y = 1.987_569_2e-4f32;
    y = y * r + 1.398_2e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)`, Eigen's rational approximation (absolute error < 1e-7).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// Σ a·b in eight independent lanes (so it vectorises; the order differs from a plain
/// left-to-right sum only in rounding).
#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..8000 {
            let x = i as f32 / 1000.0;
            let e = (x as f64).exp();
            assert!(((exp_fast(x) as f64 - e) / e).abs() < 2e-7, "exp {x}");
            // erf by its series / continued fraction would be long: check GELU's use of
            // it against erf's odd symmetry, range and a few known values instead.
            assert!((erf_fast(x) + erf_fast(-x)).abs() < 1e-7);
            assert!(erf_fast(x).abs() <= 1.0 + 1e-7);
        }
        for (x, want) in [
            (0.5f32, 0.520_499_9f32),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf_fast(x) - want).abs() < 2e-7, "erf {x}");
        }
    }

    #[test]
    fn exp_holds_over_the_whole_float_range() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let e = (x as f64).exp();
            assert!(
                ((exp_fast(x) as f64 - e) / e).abs() < 1e-6,
                "exp {x}: {}",
                exp_fast(x)
            );
        }
        assert!(exp_fast(-200.0) < 1e-37 && exp_fast(200.0) > 1e38);
    }

    #[test]
    fn lane_sums_maxima_and_dots_agree_with_plain_loops() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 19) as f32 - 9.0) / 5.0).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot8(&a, &b) - plain).abs() < 1e-4, "dot {n}");
            let s: f32 = a.iter().map(|x| x * x).sum();
            assert!((sum16(&a, |x| x * x) - s).abs() < 1e-4, "sum {n}");
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max16(&a), m, "max {n}");
        }
        assert_eq!(max16(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }
}
