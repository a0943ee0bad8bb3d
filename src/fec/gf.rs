//! GF(2^8) for the Reed–Solomon codec: the same field as `reed_solomon_erasure::galois_8`
//! (polynomial 0x11D, the same tables, so shards are byte-identical to that crate's), with
//! the slice products that dominate encoding and rebuilding done 32 or 64 bytes at a time
//! (split-nibble table lookups with AVX2 or AVX-512BW shuffles), picked at run time. CPUs
//! with neither use the crate's portable code. Pure: no I/O.

use reed_solomon_erasure::galois_8 as g8;

/// The field, for `reed_solomon_erasure::ReedSolomon<Gf8>`.
pub struct Gf8;

/// Reed–Solomon over [`Gf8`].
pub type ReedSolomon = reed_solomon_erasure::ReedSolomon<Gf8>;

impl reed_solomon_erasure::Field for Gf8 {
    const ORDER: usize = 256;
    type Elem = u8;

    fn add(a: u8, b: u8) -> u8 {
        g8::add(a, b)
    }
    fn mul(a: u8, b: u8) -> u8 {
        g8::mul(a, b)
    }
    fn div(a: u8, b: u8) -> u8 {
        g8::div(a, b)
    }
    fn exp(a: u8, n: usize) -> u8 {
        g8::exp(a, n)
    }
    fn zero() -> u8 {
        0
    }
    fn one() -> u8 {
        1
    }
    fn nth_internal(n: usize) -> u8 {
        n as u8
    }
    fn mul_slice(c: u8, input: &[u8], out: &mut [u8]) {
        assert_eq!(input.len(), out.len());
        mul_slice(c, input, out, false);
    }
    fn mul_slice_add(c: u8, input: &[u8], out: &mut [u8]) {
        assert_eq!(input.len(), out.len());
        mul_slice(c, input, out, true);
    }
}

/// Which slice kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Avx512,
    Avx2,
    Portable,
}

/// The fastest kernel this CPU has (`MYCELIUM_GF=portable|avx2|avx512` forces a slower
/// one, for measuring and testing each).
pub fn path() -> Path {
    static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let best = best_path();
        match std::env::var("MYCELIUM_GF").as_deref() {
            Ok("portable") => Path::Portable,
            Ok("avx2") if best != Path::Portable => Path::Avx2,
            _ => best,
        }
    })
}

fn best_path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            return Path::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Path::Avx2;
        }
    }
    Path::Portable
}

/// `out = c·input` (or `out ^= c·input` with `add`), on the given path.
pub fn mul_slice_on(p: Path, c: u8, input: &[u8], out: &mut [u8], add: bool) {
    let n = input.len().min(out.len());
    let (input, out) = (&input[..n], &mut out[..n]);
    let done = match p {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if best_path() == Path::Avx512 => {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (checked just above).
            unsafe { x86::mul_avx512(&tables(c), input, out, add) }
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 | Path::Avx512 if best_path() != Path::Portable => {
            // SAFETY: the CPU has AVX2 (best_path found at least that).
            unsafe { x86::mul_avx2(&tables(c), input, out, add) }
        }
        _ => 0,
    };
    if add {
        g8::mul_slice_xor(c, &input[done..], &mut out[done..]);
    } else {
        g8::mul_slice(c, &input[done..], &mut out[done..]);
    }
}

fn mul_slice(c: u8, input: &[u8], out: &mut [u8], add: bool) {
    mul_slice_on(path(), c, input, out, add)
}

/// The products of `c` with every low nibble and every high nibble.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn tables(c: u8) -> [[u8; 16]; 2] {
    let mut t = [[0u8; 16]; 2];
    for i in 0..16u8 {
        t[0][i as usize] = g8::mul(c, i);
        t[1][i as usize] = g8::mul(c, i << 4);
    }
    t
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Bytes done (a multiple of 32); the caller does the rest.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mul_avx2(
        t: &[[u8; 16]; 2],
        input: &[u8],
        out: &mut [u8],
        add: bool,
    ) -> usize {
        let lo_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(t[0].as_ptr().cast()));
        let hi_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(t[1].as_ptr().cast()));
        let mask = _mm256_set1_epi8(0x0f);
        let n = input.len() / 32 * 32;
        let mut i = 0;
        while i < n {
            // SAFETY: i + 32 <= n <= input.len() == out.len().
            let x = _mm256_loadu_si256(input.as_ptr().add(i).cast());
            let lo = _mm256_and_si256(x, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), mask);
            let mut p =
                _mm256_xor_si256(_mm256_shuffle_epi8(lo_t, lo), _mm256_shuffle_epi8(hi_t, hi));
            let dst = out.as_mut_ptr().add(i).cast::<__m256i>();
            if add {
                p = _mm256_xor_si256(p, _mm256_loadu_si256(dst));
            }
            _mm256_storeu_si256(dst, p);
            i += 32;
        }
        n
    }

    /// Bytes done (a multiple of 64); the caller does the rest.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn mul_avx512(
        t: &[[u8; 16]; 2],
        input: &[u8],
        out: &mut [u8],
        add: bool,
    ) -> usize {
        let lo_t = _mm512_broadcast_i32x4(_mm_loadu_si128(t[0].as_ptr().cast()));
        let hi_t = _mm512_broadcast_i32x4(_mm_loadu_si128(t[1].as_ptr().cast()));
        let mask = _mm512_set1_epi8(0x0f);
        let n = input.len() / 64 * 64;
        let mut i = 0;
        while i < n {
            // SAFETY: i + 64 <= n <= input.len() == out.len().
            let x = _mm512_loadu_si512(input.as_ptr().add(i).cast());
            let lo = _mm512_and_si512(x, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi64(x, 4), mask);
            let mut p =
                _mm512_xor_si512(_mm512_shuffle_epi8(lo_t, lo), _mm512_shuffle_epi8(hi_t, hi));
            let dst = out.as_mut_ptr().add(i).cast::<__m512i>();
            if add {
                p = _mm512_xor_si512(p, _mm512_loadu_si512(dst.cast_const()));
            }
            _mm512_storeu_si512(dst, p);
            i += 64;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path gives the portable answer, for every constant and odd lengths.
    #[test]
    fn every_path_matches_the_portable_products() {
        let input: Vec<u8> = (0..1000u32).map(|i| (i * 151 + 7) as u8).collect();
        let base: Vec<u8> = (0..1000u32).map(|i| (i * 37 + 3) as u8).collect();
        let paths: Vec<Path> = [Path::Avx512, Path::Avx2]
            .into_iter()
            .filter(|p| match (p, best_path()) {
                (_, Path::Portable) => false,
                (Path::Avx512, b) => b == Path::Avx512,
                _ => true,
            })
            .collect();
        for c in 0..=255u8 {
            for len in [0, 1, 31, 32, 63, 64, 65, 200, 1000] {
                for add in [false, true] {
                    let mut want = base[..len].to_vec();
                    mul_slice_on(Path::Portable, c, &input[..len], &mut want, add);
                    for ((&w, &x), &b) in want.iter().zip(&input[..len]).zip(&base[..len]) {
                        let m = g8::mul(c, x);
                        assert_eq!(w, if add { b ^ m } else { m });
                    }
                    for &p in &paths {
                        let mut got = base[..len].to_vec();
                        mul_slice_on(p, c, &input[..len], &mut got, add);
                        assert_eq!(got, want, "{p:?} c={c} len={len} add={add}");
                    }
                }
            }
        }
    }

    /// Shards made with this field are the crate's own, byte for byte.
    #[test]
    fn parity_is_the_crates_own() {
        let data: Vec<Vec<u8>> = (0..5u8)
            .map(|s| {
                (0..777u32)
                    .map(|i| (i as u8) ^ s.wrapping_mul(29))
                    .collect()
            })
            .collect();
        let mut ours: Vec<Vec<u8>> = data.clone();
        ours.extend((0..3).map(|_| vec![0u8; 777]));
        let mut theirs = ours.clone();
        ReedSolomon::new(5, 3).unwrap().encode(&mut ours).unwrap();
        g8::ReedSolomon::new(5, 3)
            .unwrap()
            .encode(&mut theirs)
            .unwrap();
        assert_eq!(ours, theirs);
    }
}
