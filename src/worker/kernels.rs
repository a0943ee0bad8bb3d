//! Our own CUDA kernels, as CUDA C source compiled to PTX at run time by NVRTC: the two
//! steps of the engines that candle has no fused GPU kernel for.
//!
//! - `mean_pool_l2_{u32,f32}_mask`: the embedder's pooling, [`super::embed::mean_pool_normalise`]
//!   in one pass: hidden states (n, t, d) f32 and a mask (n, t) (u32 or f32 weights) to
//!   unit vectors (n, d). One block per row.
//! - `argmax_rows_f32`: greedy decoding's choice over logits (rows, cols) f32: the index of
//!   each row's largest value, ties to the lowest index, as candle's CPU `argmax` (NaN
//!   never wins, except that a row starting with NaN gives 0). One block per row.
//!
//! This module builds without the `cuda` feature and without CUDA: NVRTC is loaded at run
//! time (cudarc's dynamic loading), so CI compiles every kernel here to PTX
//! (`tests/cuda_kernels.rs`) on machines with no GPU, given `libnvrtc.so.13` on
//! `LD_LIBRARY_PATH`. Running them needs the `cuda` feature ([`super::cuda`]).
//!
//! Owns: the CUDA C source of our kernels and its compilation to PTX.

/// The module name our kernels are loaded under in a candle CUDA device.
pub const MODULE: &str = "mycelium_kernels";

/// Entry point: masked mean pooling + L2 normalisation, mask as u32.
/// Arguments: `(const float* hidden, const unsigned int* mask, float* out, unsigned int t,
/// unsigned int d)`; grid `(n, 1, 1)`, block `(threads, 1, 1)` with `threads` a multiple of
/// 32, at most 1024.
pub const MEAN_POOL_L2_U32_MASK: &str = "mean_pool_l2_u32_mask";
/// As [`MEAN_POOL_L2_U32_MASK`], mask as f32 weights.
pub const MEAN_POOL_L2_F32_MASK: &str = "mean_pool_l2_f32_mask";
/// Entry point: per-row argmax. Arguments: `(const float* x, unsigned int* out, unsigned int
/// cols)`; grid `(rows, 1, 1)`, block `(threads, 1, 1)` with `threads` a multiple of 32, at
/// most 1024.
pub const ARGMAX_ROWS_F32: &str = "argmax_rows_f32";

/// Every entry point [`SOURCE`] defines.
pub const ENTRIES: &[&str] = &[
    MEAN_POOL_L2_U32_MASK,
    MEAN_POOL_L2_F32_MASK,
    ARGMAX_ROWS_F32,
];

/// Threads per block for a row of `len` elements: a multiple of 32, 32..=1024.
pub fn block_threads(len: usize) -> u32 {
    (len.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// The CUDA C source (no headers: NVRTC alone compiles it).
pub const SOURCE: &str = r#"
// Mycelium's kernels. Row-major, contiguous f32 inputs; 64-bit offsets throughout.

#define MYC_FULL_MASK 0xffffffffu
#define MYC_NONE 0xffffffffu

__device__ __forceinline__ float myc_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MYC_FULL_MASK, v, o);
    return v;
}

// The sum of `v` over the block, returned to every thread. blockDim.x is a multiple of 32
// and at most 1024; `scratch` holds 32 floats. Called once per kernel.
__device__ float myc_block_sum(float v, float* scratch) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int warps = blockDim.x >> 5;
    v = myc_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : 0.0f;
        v = myc_warp_sum(v);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

// Row `blockIdx.x`: out[j] = mean over k of hidden[k][j] weighted by mask[k] (the weight sum
// at least 1e-9), then the row divided by its L2 norm (at least 1e-12). The same arithmetic,
// in the same order over k, as the CPU path; only the norm's sum is ordered differently.
template <typename M>
__device__ void myc_mean_pool_l2(const float* __restrict__ hidden, const M* __restrict__ mask,
                                 float* __restrict__ out, unsigned int t, unsigned int d) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const float* h = hidden + row * (size_t)t * (size_t)d;
    const M* m = mask + row * (size_t)t;
    float* o = out + row * (size_t)d;

    float count = 0.0f;
    for (unsigned int k = 0; k < t; ++k) count += (float)m[k];
    count = fmaxf(count, 1e-9f);

    float sq = 0.0f;
    for (unsigned int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        const float* hj = h + j;
#pragma unroll 4
        for (unsigned int k = 0; k < t; ++k) {
            acc = __fadd_rn(acc, __fmul_rn(hj[(size_t)k * d], (float)m[k]));
        }
        const float mean = acc / count;
        o[j] = mean;
        sq = __fadd_rn(sq, __fmul_rn(mean, mean));
    }
    const float norm = fmaxf(sqrtf(myc_block_sum(sq, scratch)), 1e-12f);
    // Each thread rescales the columns it wrote itself.
    for (unsigned int j = threadIdx.x; j < d; j += blockDim.x) o[j] = o[j] / norm;
}

extern "C" __global__ void mean_pool_l2_u32_mask(const float* __restrict__ hidden,
                                                 const unsigned int* __restrict__ mask,
                                                 float* __restrict__ out, unsigned int t,
                                                 unsigned int d) {
    myc_mean_pool_l2<unsigned int>(hidden, mask, out, t, d);
}

extern "C" __global__ void mean_pool_l2_f32_mask(const float* __restrict__ hidden,
                                                 const float* __restrict__ mask,
                                                 float* __restrict__ out, unsigned int t,
                                                 unsigned int d) {
    myc_mean_pool_l2<float>(hidden, mask, out, t, d);
}

// Does candidate (av, ai) beat (bv, bi)? MYC_NONE marks "no candidate" (NaN is never one).
__device__ __forceinline__ bool myc_beats(float av, unsigned int ai, float bv, unsigned int bi) {
    if (ai == MYC_NONE) return false;
    if (bi == MYC_NONE) return true;
    return av > bv || (av == bv && ai < bi);
}

__device__ __forceinline__ void myc_warp_argmax(float& v, unsigned int& i) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(MYC_FULL_MASK, v, o);
        const unsigned int oi = __shfl_xor_sync(MYC_FULL_MASK, i, o);
        if (myc_beats(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// out[row] = the index of the largest value of row `blockIdx.x`, ties to the lowest index,
// NaN skipped; 0 when the row starts with NaN (what candle's CPU argmax gives).
extern "C" __global__ void argmax_rows_f32(const float* __restrict__ x,
                                           unsigned int* __restrict__ out, unsigned int cols) {
    __shared__ float best_v[32];
    __shared__ unsigned int best_i[32];
    const float* r = x + (size_t)blockIdx.x * (size_t)cols;
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int warps = blockDim.x >> 5;

    float v = 0.0f;
    unsigned int i = MYC_NONE;
    // Each thread visits its indices in increasing order: strictly greater keeps the first.
    for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float y = r[j];
        if (y == y && (i == MYC_NONE || y > v)) {
            v = y;
            i = j;
        }
    }
    myc_warp_argmax(v, i);
    if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? best_v[lane] : 0.0f;
        i = lane < warps ? best_i[lane] : MYC_NONE;
        myc_warp_argmax(v, i);
        if (lane == 0) {
            const float first = r[0];
            out[blockIdx.x] = (first != first || i == MYC_NONE) ? 0u : i;
        }
    }
}
"#;

/// Whether NVRTC can be loaded here, and if not, why (with what to do about it).
pub fn nvrtc_available() -> Result<(), String> {
    // With the `cuda` feature candle links NVRTC (cudarc's dynamic linking): nothing to
    // probe. Without it cudarc loads it at run time and would panic if it is missing.
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only tries to dlopen the library under its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(format!(
                "NVRTC (libnvrtc.so.13, the CUDA run-time compiler) could not be loaded, so our \
                 CUDA kernels cannot be compiled to PTX. Put the directory that holds it on \
                 LD_LIBRARY_PATH (it comes with a CUDA 13 toolkit, or PyPI's \
                 nvidia-cuda-nvrtc==13.0.88 wheel under nvidia/cu13/lib, which .ci/run \
                 fetches; `source ../shared/tools/cuda-toolchain.sh` sets up a whole \
                 toolkit). LD_LIBRARY_PATH is {:?}",
                std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Compile `source` to PTX with NVRTC (default architecture, the oldest the NVRTC supports,
/// so the driver JIT-compiles it for whatever GPU runs it; IEEE division and square root).
pub fn compile_source(source: &str) -> Result<String, String> {
    nvrtc_available()?;
    let opts = cudarc::nvrtc::CompileOptions {
        name: Some(format!("{MODULE}.cu")),
        ..Default::default()
    };
    // cudarc panics when a symbol it needs is missing from the loaded library: an error here.
    let compiled = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, opts))
        .map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            format!("NVRTC failed to run: {why}")
        })?;
    match compiled {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. }) => Err(format!(
            "NVRTC could not compile {MODULE}: {nvrtc:?}\n{}",
            log.to_string_lossy()
        )),
        Err(e) => Err(format!("NVRTC could not compile {MODULE}: {e}")),
    }
}

/// Our kernels ([`SOURCE`]) as PTX text, with every entry of [`ENTRIES`].
pub fn compile_ptx() -> Result<String, String> {
    compile_source(SOURCE)
}
