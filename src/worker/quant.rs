//! Quantised matrices for the CPU llama engine ([`super::llama`]): GGUF weight blocks
//! (Q4_1 and Q8_0 kept as the file has them, half scales included; F32), activations
//! quantised to 8 bits per 32-value block (llama.cpp's Q8_1: scale and scaled sum), and
//! the product of a weight matrix with many activation rows at once. The dot kernels use
//! AVX2 when the CPU has it (picked at run time by [`super::isa`], so one binary runs
//! everywhere; `MYCELIUM_KERNELS=portable` forces the scalar loop) and a portable scalar
//! loop otherwise; the rows of the output are split across the rayon threads.
//!
//! Owns: quantised weight storage and the products over it. No I/O.

use super::isa::Isa;
use rayon::prelude::*;

/// Values per block.
pub const QK: usize = 32;

/// A Q4_1 weight block as GGUF stores it (20 bytes): value = d · q + m, q in 0..16, `d`
/// and `m` IEEE halves; `qs[j]` holds element j in its low nibble and element j + 16 in
/// its high nibble. Halves, as in the file: 17% less memory than with f32 scales (24-byte
/// blocks), and that much less for decoding to read, which reads every weight per token.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

/// A Q8_0 weight block as GGUF stores it (34 bytes): value = d · q, `d` an IEEE half.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

/// An activation block: value ≈ d · q, with s = d · Σq (for Q4_1's offset term).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

const ZERO_Q8: BlockQ8 = BlockQ8 {
    d: 0.0,
    s: 0.0,
    qs: [0; 32],
};

/// The storage of a matrix of `rows` × `cols` (row-major, `cols` a multiple of 32 for the
/// quantised kinds).
#[derive(Debug, Clone)]
pub enum Data {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    F32(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Data,
}

/// Why a GGUF tensor could not become a [`QMatrix`].
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("tensor type {0} is not supported (Q4_1, Q8_0 and F32 are)")]
    Type(String),
    #[error("{rows}×{cols} tensor: {why}")]
    Shape {
        rows: usize,
        cols: usize,
        why: &'static str,
    },
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalise.
            let shift = man.leading_zeros() - 21;
            let man = (man << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl QMatrix {
    /// A matrix from GGUF tensor bytes of `kind` ("Q4_1", "Q8_0", "F32").
    pub fn from_gguf(
        kind: &str,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, QuantError> {
        let shape = |why| QuantError::Shape { rows, cols, why };
        let n = rows.checked_mul(cols).ok_or(shape("too large"))?;
        let data = match kind {
            "F32" => {
                if bytes.len() != n * 4 {
                    return Err(shape("byte length does not match"));
                }
                Data::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            "Q4_1" | "Q8_0" => {
                if !cols.is_multiple_of(QK) {
                    return Err(shape("row length is not a multiple of 32"));
                }
                let size = if kind == "Q4_1" { 20 } else { 34 };
                if bytes.len() != n / QK * size {
                    return Err(shape("byte length does not match"));
                }
                if kind == "Q4_1" {
                    Data::Q4_1(
                        bytes
                            .chunks_exact(20)
                            .map(|c| {
                                let mut qs = [0u8; 16];
                                qs.copy_from_slice(&c[4..20]);
                                BlockQ4_1 {
                                    d: le16(c, 0),
                                    m: le16(c, 2),
                                    qs,
                                }
                            })
                            .collect(),
                    )
                } else {
                    Data::Q8_0(
                        bytes
                            .chunks_exact(34)
                            .map(|c| {
                                let mut qs = [0i8; 32];
                                for (q, b) in qs.iter_mut().zip(&c[2..34]) {
                                    *q = *b as i8;
                                }
                                BlockQ8_0 { d: le16(c, 0), qs }
                            })
                            .collect(),
                    )
                }
            }
            other => return Err(QuantError::Type(other.to_string())),
        };
        Ok(QMatrix { rows, cols, data })
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            Data::Q8_0(v) => {
                for (b, o) in v[r * c / QK..(r + 1) * c / QK]
                    .iter()
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = f16_to_f32(b.d);
                    for (x, q) in o.iter_mut().zip(b.qs) {
                        *x = d * f32::from(q);
                    }
                }
            }
            Data::Q4_1(v) => {
                for (b, o) in v[r * c / QK..(r + 1) * c / QK]
                    .iter()
                    .zip(out.chunks_exact_mut(QK))
                {
                    let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                    for j in 0..16 {
                        o[j] = d * f32::from(b.qs[j] & 0xf) + m;
                        o[j + 16] = d * f32::from(b.qs[j] >> 4) + m;
                    }
                }
            }
        }
    }

    /// `out[i][r] = Σ_c self[r][c] · x[i][c]` for the `n` rows of `x` (each `cols`
    /// long); `out` is `n` × `rows`. On the kernel path this process uses
    /// ([`super::isa::chosen`]).
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_on(super::isa::chosen(), x, n, out)
    }

    /// [`QMatrix::matmul`] on the given path (AVX-512 CPUs run the AVX2 kernels: there
    /// are no AVX-512 ones for these blocks yet). `isa` must be one this CPU runs.
    pub fn matmul_on(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), n * cols, "matmul input length");
        assert_eq!(out.len(), n * rows, "matmul output length");
        if let Data::F32(w) = &self.data {
            out.par_chunks_mut(rows)
                .zip(x.par_chunks(cols))
                .for_each(|(o, xi)| {
                    for (r, y) in o.iter_mut().enumerate() {
                        *y = w[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(xi)
                            .map(|(a, b)| a * b)
                            .sum();
                    }
                });
            return;
        }
        let nb = cols / QK;
        let mut xq = vec![ZERO_Q8; n * nb];
        for (xi, qi) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(nb)) {
            quantize_q8(xi, qi);
        }
        // Row-major output per weight row (each row's n dots), transposed at the end.
        let mut t = if n == 1 {
            Vec::new()
        } else {
            vec![0f32; rows * n]
        };
        let dst: &mut [f32] = if n == 1 { out } else { &mut t };
        // Chunks of rows big enough to be worth a task, small enough to balance.
        let chunk = (rows / (rayon::current_num_threads() * 8)).clamp(8, 256);
        let avx2 = isa >= Isa::Avx2 && Isa::Avx2.available();
        dst.par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(ci, o)| {
                let r0 = ci * chunk;
                for (k, orow) in o.chunks_exact_mut(n).enumerate() {
                    let r = r0 + k;
                    let mut j = 0;
                    while j + 4 <= n {
                        let d = self.dot::<4>(avx2, r, &xq, nb, j);
                        orow[j..j + 4].copy_from_slice(&d);
                        j += 4;
                    }
                    while j < n {
                        orow[j] = self.dot::<1>(avx2, r, &xq, nb, j)[0];
                        j += 1;
                    }
                }
            });
        if n > 1 {
            for (r, tr) in t.chunks_exact(n).enumerate() {
                for (i, v) in tr.iter().enumerate() {
                    out[i * rows + r] = *v;
                }
            }
        }
    }

    /// Dots of weight row `r` with activation rows `j..j + N`.
    #[inline]
    fn dot<const N: usize>(
        &self,
        avx2: bool,
        r: usize,
        xq: &[BlockQ8],
        nb: usize,
        j: usize,
    ) -> [f32; N] {
        let xs: [&[BlockQ8]; N] = std::array::from_fn(|k| &xq[(j + k) * nb..(j + k + 1) * nb]);
        match &self.data {
            Data::Q4_1(w) => {
                let w = &w[r * nb..(r + 1) * nb];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
                    return unsafe { x86::dot_q4_1::<N>(w, xs) };
                }
                let _ = avx2;
                std::array::from_fn(|k| dot_q4_1_scalar(w, xs[k]))
            }
            Data::Q8_0(w) => {
                let w = &w[r * nb..(r + 1) * nb];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: as above.
                    return unsafe { x86::dot_q8_0::<N>(w, xs) };
                }
                let _ = avx2;
                std::array::from_fn(|k| dot_q8_0_scalar(w, xs[k]))
            }
            Data::F32(_) => [0.0; N],
        }
    }
}

/// Quantise `x` (a multiple of 32 long) into 8-bit blocks, rounding to nearest.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (c, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(c) {
            // Nearest, ties to even (as llama.cpp's SIMD quantiser), without a libm call:
            // adding 1.5·2^23 leaves no fraction bits for |v·id| ≤ 127.
            let r = ((v * id + 12_582_912.0) - 12_582_912.0) as i8;
            *q = r;
            sum += i32::from(r);
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

pub fn dot_q4_1_scalar(w: &[BlockQ4_1], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in w.iter().zip(x) {
        let mut i = 0i32;
        for j in 0..16 {
            i += i32::from(b.qs[j] & 0xf) * i32::from(a.qs[j])
                + i32::from(b.qs[j] >> 4) * i32::from(a.qs[j + 16]);
        }
        sum += f16_to_f32(b.d) * a.d * i as f32 + f16_to_f32(b.m) * a.s;
    }
    sum
}

pub fn dot_q8_0_scalar(w: &[BlockQ8_0], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in w.iter().zip(x) {
        let i: i32 =
            b.qs.iter()
                .zip(&a.qs)
                .map(|(p, q)| i32::from(*p) * i32::from(*q))
                .sum();
        sum += f16_to_f32(b.d) * a.d * i as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Q4_1 weights · N activation rows. Two sets of accumulators (even and odd blocks),
    /// so one row's sum is two dependency chains, not one (a single row was bound by the
    /// latency of its one chain of adds).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1<const N: usize>(w: &[BlockQ4_1], xs: [&[BlockQ8]; N]) -> [f32; N] {
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        let (mut off0, mut off1) = ([0f32; N], [0f32; N]);
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        macro_rules! step {
            ($i:expr, $acc:ident, $off:ident) => {{
                let b = w.get_unchecked($i);
                // d and m, two halves side by side, widened at once (F16C).
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    (b as *const BlockQ4_1).cast::<i32>(),
                )));
                let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
                let q = _mm_loadu_si128(b.qs.as_ptr().cast());
                let qw = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
                for k in 0..N {
                    let a = xs[k].get_unchecked($i);
                    let qx = _mm256_loadu_si256(a.qs.as_ptr().cast());
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qx), ones);
                    $acc[k] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), $acc[k]);
                    $off[k] = m.mul_add(a.s, $off[k]);
                }
            }};
        }
        let mut i = 0;
        while i + 2 <= w.len() {
            step!(i, acc0, off0);
            step!(i + 1, acc1, off1);
            i += 2;
        }
        if i < w.len() {
            step!(i, acc0, off0);
        }
        let mut out = [0f32; N];
        for k in 0..N {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k])) + (off0[k] + off1[k]);
        }
        out
    }

    /// Q8_0 weights · N activation rows (two chains per row, as [`dot_q4_1`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0<const N: usize>(w: &[BlockQ8_0], xs: [&[BlockQ8]; N]) -> [f32; N] {
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        let ones = _mm256_set1_epi16(1);
        macro_rules! step {
            ($i:expr, $acc:ident) => {{
                let b = w.get_unchecked($i);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(b.d))));
                let qw = _mm256_loadu_si256(b.qs.as_ptr().cast());
                let aw = _mm256_sign_epi8(qw, qw);
                for k in 0..N {
                    let a = xs[k].get_unchecked($i);
                    let qx = _mm256_loadu_si256(a.qs.as_ptr().cast());
                    let sx = _mm256_sign_epi8(qx, qw);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                    $acc[k] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), $acc[k]);
                }
            }};
        }
        let mut i = 0;
        while i + 2 <= w.len() {
            step!(i, acc0);
            step!(i + 1, acc1);
            i += 2;
        }
        if i < w.len() {
            step!(i, acc0);
        }
        let mut out = [0f32; N];
        for k in 0..N {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    /// Random Q4_1 and Q8_0 matrices: the SIMD and scalar kernels, and the products of
    /// one and many rows, agree with f32 arithmetic on the dequantised values.
    #[test]
    fn products_match_dequantised_arithmetic() {
        let mut seed = 7u64;
        let (rows, cols, n) = (37, 96, 6);
        let mut q41 = Vec::new();
        let mut q80 = Vec::new();
        for _ in 0..rows * cols / QK {
            let mut qs = [0u8; 16];
            for q in &mut qs {
                *q = ((lcg(&mut seed) + 1.0) * 127.9) as u8;
            }
            q41.extend_from_slice(&(half_bits(lcg(&mut seed) * 0.1)).to_le_bytes());
            q41.extend_from_slice(&(half_bits(lcg(&mut seed) * 0.5)).to_le_bytes());
            q41.extend_from_slice(&qs);
            q80.extend_from_slice(&(half_bits(lcg(&mut seed) * 0.02)).to_le_bytes());
            for _ in 0..32 {
                q80.push((lcg(&mut seed) * 127.0) as i8 as u8);
            }
        }
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        for (isa, (kind, bytes)) in Isa::all_here()
            .into_iter()
            .flat_map(|i| [(i, ("Q4_1", &q41)), (i, ("Q8_0", &q80))])
        {
            let m = QMatrix::from_gguf(kind, rows, cols, bytes).unwrap();
            let mut many = vec![0f32; n * rows];
            m.matmul_on(isa, &x, n, &mut many);
            let mut w = vec![0f32; cols];
            for i in 0..n {
                let xi = &x[i * cols..(i + 1) * cols];
                let mut one = vec![0f32; rows];
                m.matmul_on(isa, xi, 1, &mut one);
                let mut xq = vec![ZERO_Q8; cols / QK];
                quantize_q8(xi, &mut xq);
                let xd: Vec<f32> = xq
                    .iter()
                    .flat_map(|b| b.qs.map(|q| b.d * f32::from(q)))
                    .collect();
                for r in 0..rows {
                    m.row(r, &mut w);
                    let exact: f32 = w.iter().zip(&xd).map(|(a, b)| a * b).sum();
                    let scale: f32 = w.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
                    let tol = 1e-4 * scale.max(1.0);
                    assert!(
                        (many[i * rows + r] - exact).abs() < tol,
                        "{isa:?} {kind} batched r{r}"
                    );
                    assert!((one[r] - exact).abs() < tol, "{isa:?} {kind} single r{r}");
                    let nb = cols / QK;
                    let scalar = match &m.data {
                        Data::Q4_1(b) => dot_q4_1_scalar(&b[r * nb..(r + 1) * nb], &xq),
                        Data::Q8_0(b) => dot_q8_0_scalar(&b[r * nb..(r + 1) * nb], &xq),
                        Data::F32(_) => unreachable!(),
                    };
                    assert!((scalar - exact).abs() < tol, "{kind} scalar r{r}");
                }
            }
        }
    }

    /// f32 to the nearest half (normal range only; enough for test scales).
    fn half_bits(v: f32) -> u16 {
        let b = v.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        if exp <= 0 {
            return sign;
        }
        sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
    }

    #[test]
    fn bad_tensors_are_refused() {
        assert!(QMatrix::from_gguf("Q4_K", 1, 32, &[0; 20]).is_err());
        assert!(QMatrix::from_gguf("Q4_1", 1, 32, &[0; 19]).is_err());
        assert!(QMatrix::from_gguf("Q8_0", 1, 48, &[0; 34]).is_err());
        assert!(QMatrix::from_gguf("F32", 2, 2, &[0; 15]).is_err());
    }
}
