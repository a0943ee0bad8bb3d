//! Our CUDA kernels (`mycelium::worker::kernels`).
//!
//! Every build, CI included (no GPU, no `cuda` feature): every kernel source compiles
//! through NVRTC to PTX with each entry point we launch. NVRTC is loaded at run time, so
//! `libnvrtc.so.13` must be on `LD_LIBRARY_PATH` (`.ci/run` fetches it; locally
//! `source ../shared/tools/cuda-toolchain.sh`); without it the test fails and says so.
//!
//! With `--features cuda` (needs a GPU, and fails without one): the kernels against the
//! CPU path on random data and edge cases.

use mycelium::worker::kernels;
use std::collections::BTreeSet;

/// The names of the `.entry` functions of a PTX text.
fn ptx_entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| {
            let rest = &l[l.find(".entry ")? + ".entry ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[test]
fn every_kernel_compiles_through_nvrtc() {
    let ptx = kernels::compile_ptx().unwrap_or_else(|e| panic!("{e}"));
    assert!(ptx.contains(".version "), "not PTX:\n{ptx}");
    assert!(ptx.contains(".target sm_"), "no .target in the PTX:\n{ptx}");
    let want: BTreeSet<String> = kernels::ENTRIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        want.len(),
        kernels::ENTRIES.len(),
        "an entry is listed twice"
    );
    for e in kernels::ENTRIES {
        assert!(
            ptx.contains(&format!(".visible .entry {e}(")),
            "the PTX has no entry {e}; it has {:?}",
            ptx_entries(&ptx)
        );
    }
    // Every kernel in the source is one we list (and so one the GPU test covers).
    assert_eq!(ptx_entries(&ptx), want);
}

#[test]
fn nvrtc_reports_errors_with_its_log() {
    let e = kernels::compile_source("extern \"C\" __global__ void broken() { undeclared = 1; }")
        .expect_err("a kernel that does not compile");
    assert!(e.contains("undeclared"), "no compiler log in: {e}");
}

#[test]
fn block_sizes_are_whole_warps_up_to_1024() {
    for (len, want) in [
        (0, 32),
        (1, 32),
        (32, 32),
        (33, 64),
        (384, 384),
        (1000, 1024),
        (1024, 1024),
        (49152, 1024),
    ] {
        assert_eq!(kernels::block_threads(len), want, "len {len}");
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::{DType, Device, Tensor, D};
    use mycelium::worker::cuda::{argmax_rows_cuda, mean_pool_normalise_cuda};
    use mycelium::worker::embed::mean_pool_normalise;

    /// Deterministic pseudo-random numbers (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        /// Uniform in [-s, s).
        fn sym(&mut self, s: f32) -> f32 {
            (self.unit() * 2.0 - 1.0) * s
        }
    }

    fn gpu() -> Device {
        Device::new_cuda(0).unwrap_or_else(|e| {
            panic!("built with the `cuda` feature, these tests need a CUDA GPU: {e}")
        })
    }

    fn assert_close(what: &str, want: &[Vec<f32>], got: &[Vec<f32>]) {
        assert_eq!(want.len(), got.len(), "{what}: rows");
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            assert_eq!(w.len(), g.len(), "{what}: row {i} length");
            for (j, (a, b)) in w.iter().zip(g).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 + 1e-5 * a.abs(),
                    "{what}: [{i}][{j}]: CPU {a}, GPU {b}"
                );
            }
        }
    }

    /// A padded batch's mask: row 0 full, the last row (of several) empty, the others a
    /// random prefix of ones, one with holes.
    fn mask_u32(r: &mut Rng, n: usize, t: usize) -> Vec<u32> {
        let mut m = vec![0u32; n * t];
        for i in 0..n {
            let len = match i {
                0 => t,
                _ if i == n - 1 => 0,
                _ => 1 + r.below(t),
            };
            m[i * t..i * t + len].fill(1);
            if i == 1 && len > 2 {
                m[i * t + r.below(len)] = 0;
            }
        }
        m
    }

    #[test]
    fn mean_pool_normalise_matches_the_cpu() -> candle_core::Result<()> {
        let gpu = gpu();
        let cpu = Device::Cpu;
        let mut r = Rng(7);
        for (n, t, d) in [
            (1, 1, 1),
            (2, 3, 31),
            (3, 7, 384),
            (5, 33, 1000),
            (2, 130, 2048),
            (32, 64, 384),
            (4, 256, 768),
        ] {
            let what = format!("(n, t, d) = ({n}, {t}, {d})");
            let hidden: Vec<f32> = (0..n * t * d).map(|_| r.sym(4.0)).collect();
            let h = Tensor::from_vec(hidden, (n, t, d), &cpu)?;
            let hg = h.to_device(&gpu)?;

            // u32 mask, as the embedder passes it.
            let m = Tensor::from_vec(mask_u32(&mut r, n, t), (n, t), &cpu)?;
            let want = mean_pool_normalise(&h, &m)?.to_vec2::<f32>()?;
            let got = mean_pool_normalise_cuda(&hg, &m.to_device(&gpu)?)?;
            assert_eq!(got.dims(), &[n, d]);
            assert_eq!(got.dtype(), DType::F32);
            assert_close(&format!("{what}, u32 mask"), &want, &got.to_vec2::<f32>()?);

            // f32 weights.
            let w: Vec<f32> = (0..n * t).map(|_| r.unit()).collect();
            let m = Tensor::from_vec(w, (n, t), &cpu)?;
            let want = mean_pool_normalise(&h, &m)?.to_vec2::<f32>()?;
            let got = mean_pool_normalise_cuda(&hg, &m.to_device(&gpu)?)?.to_vec2::<f32>()?;
            assert_close(&format!("{what}, f32 mask"), &want, &got);

            // A u8 mask (converted) and a non-contiguous hidden state (made contiguous).
            let m = Tensor::from_vec(mask_u32(&mut r, n, t), (n, t), &cpu)?.to_dtype(DType::U8)?;
            let ht = h.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
            assert!(!ht.is_contiguous() || t == 1 || d == 1);
            let want = mean_pool_normalise(&ht, &m)?.to_vec2::<f32>()?;
            let got = mean_pool_normalise_cuda(&ht.to_device(&gpu)?, &m.to_device(&gpu)?)?
                .to_vec2::<f32>()?;
            assert_close(&format!("{what}, u8 mask, strided"), &want, &got);
        }
        Ok(())
    }

    #[test]
    fn mean_pool_normalise_rows_are_unit_or_zero() -> candle_core::Result<()> {
        let gpu = gpu();
        let mut r = Rng(11);
        let (n, t, d) = (6, 20, 384);
        let h: Vec<f32> = (0..n * t * d).map(|_| r.sym(1.0)).collect();
        let h = Tensor::from_vec(h, (n, t, d), &gpu)?;
        let m = Tensor::from_vec(mask_u32(&mut r, n, t), (n, t), &gpu)?;
        let out = mean_pool_normalise_cuda(&h, &m)?.to_vec2::<f32>()?;
        for (i, row) in out.iter().enumerate() {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            let want = if i == n - 1 { 0.0 } else { 1.0 };
            assert!((norm - want).abs() < 1e-5, "row {i}: norm {norm}");
        }
        // Empty shapes launch nothing.
        let e = mean_pool_normalise_cuda(&h.narrow(1, 0, 0)?, &m.narrow(1, 0, 0)?)?;
        assert_eq!(e.to_vec2::<f32>()?, vec![vec![0.0f32; d]; n]);
        Ok(())
    }

    fn cpu_argmax(rows: &[Vec<f32>]) -> candle_core::Result<Vec<u32>> {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.concat();
        Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()
    }

    #[test]
    fn argmax_rows_matches_the_cpu() -> candle_core::Result<()> {
        let gpu = gpu();
        let mut r = Rng(3);
        for cols in [1usize, 2, 31, 32, 33, 1000, 1024, 1025, 32000, 49152] {
            let mut rows: Vec<Vec<f32>> = (0..9)
                .map(|_| (0..cols).map(|_| r.sym(20.0)).collect())
                .collect();
            // Ties: all equal; the maximum twice (and at the end); -0.0 vs 0.0.
            rows[1].fill(1.5);
            let (a, b) = (r.below(cols), r.below(cols));
            rows[2][a] = 100.0;
            rows[2][b] = 100.0;
            rows[2][cols - 1] = 100.0;
            rows[3].fill(-0.0);
            rows[3][cols - 1] = 0.0;
            // NaN: first (gives 0), elsewhere (skipped), everywhere (gives 0).
            rows[4][0] = f32::NAN;
            rows[5][r.below(cols)] = f32::NAN;
            rows[5][cols - 1] = f32::NAN;
            rows[6].fill(f32::NAN);
            // Infinities.
            rows[7].fill(f32::NEG_INFINITY);
            rows[8][r.below(cols)] = f32::INFINITY;
            rows[8][r.below(cols)] = f32::INFINITY;

            let want = cpu_argmax(&rows)?;
            let x = Tensor::from_vec(rows.concat(), (rows.len(), cols), &gpu)?;
            let got = argmax_rows_cuda(&x)?;
            assert_eq!(got, want, "cols {cols}");
            assert_eq!(got[1], 0, "cols {cols}: all equal");
            assert_eq!(got[2] as usize, a.min(b).min(cols - 1), "cols {cols}: ties");
            assert_eq!(got[6], 0, "cols {cols}: all NaN");

            // One row as a vector, and leading dimensions flattened.
            assert_eq!(argmax_rows_cuda(&x.get(0)?)?, vec![want[0]]);
            let x3 = x.narrow(0, 0, 8)?.reshape((2, 4, cols))?;
            assert_eq!(argmax_rows_cuda(&x3)?, want[..8].to_vec());
            // A strided view (made contiguous) and other dtypes (converted).
            let xt = x.t()?.contiguous()?.t()?;
            assert_eq!(argmax_rows_cuda(&xt)?, want);
            let xb = x.to_dtype(DType::BF16)?;
            let want_b = xb
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?;
            assert_eq!(argmax_rows_cuda(&xb)?, want_b, "cols {cols}, bf16");
        }
        Ok(())
    }

    #[test]
    fn argmax_rows_agrees_with_greedy_sampling() -> candle_core::Result<()> {
        use candle_transformers::generation::{LogitsProcessor, Sampling};
        let gpu = gpu();
        let mut r = Rng(5);
        let mut greedy = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        for _ in 0..20 {
            let v: Vec<f32> = (0..49152).map(|_| r.sym(10.0)).collect();
            let cpu = Tensor::from_vec(v, 49152, &Device::Cpu)?;
            let want = greedy.sample(&cpu)?;
            assert_eq!(argmax_rows_cuda(&cpu.to_device(&gpu)?)?, vec![want]);
        }
        Ok(())
    }
}
