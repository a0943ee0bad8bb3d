//! Our fused CUDA kernels ([`super::kernels`]) on candle's CUDA tensors (`cuda` feature):
//! the embedder's masked mean pooling + L2 normalisation and greedy decoding's argmax, each
//! one kernel launch on the stream candle uses for the device, through candle custom ops.
//!
//! The PTX is compiled once per process by NVRTC and loaded once per candle device (its
//! custom-module cache, under [`kernels::MODULE`]).
//!
//! Owns: launching our kernels on candle's CUDA devices.

use super::kernels;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, DType, Error, Layout, Result, Shape,
    Tensor,
};
use std::sync::OnceLock;

/// Our kernels' PTX, compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    match PTX.get_or_init(kernels::compile_ptx) {
        Ok(p) => Ok(p.as_str()),
        Err(e) => Err(Error::Msg(e.clone())),
    }
}

fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Msg(format!("{what} {v} is too large for our kernels")))
}

/// The contiguous part of a tensor's storage that `layout` covers.
fn offsets(what: &str, layout: &Layout) -> Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{what}: our CUDA kernels need a contiguous tensor")))
}

/// Masked mean pooling + L2 normalisation: `hidden` (n, t, d) f32 and `mask` (n, t) u32
/// or f32, both contiguous, to (n, d) f32, n, t, d > 0.
struct MeanPoolL2;

impl MeanPoolL2 {
    fn launch<M: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        entry: &str,
        hidden: (&CudaStorage, &Layout),
        mask: (&CudaStorage, &Layout),
        (n, t, d): (usize, usize, usize),
    ) -> Result<CudaStorage> {
        let (h0, h1) = offsets("hidden", hidden.1)?;
        let (m0, m1) = offsets("mask", mask.1)?;
        if h1 - h0 != n * t * d || m1 - m0 != n * t {
            return Err(Error::Msg(
                "mean pooling: storage does not match the shapes".into(),
            ));
        }
        let h = hidden.0.as_cuda_slice::<f32>()?;
        let h = h
            .try_slice(h0..h1)
            .ok_or_else(|| Error::Msg("hidden: layout outside its storage".into()))?;
        let m = mask.0.as_cuda_slice::<M>()?;
        let m = m
            .try_slice(m0..m1)
            .ok_or_else(|| Error::Msg("mask: layout outside its storage".into()))?;
        let (t32, d32) = (to_u32("sequence length", t)?, to_u32("hidden size", d)?);
        let cfg = LaunchConfig {
            grid_dim: (to_u32("batch size", n)?, 1, 1),
            block_dim: (kernels::block_threads(d), 1, 1),
            shared_mem_bytes: 0,
        };
        let func = dev.get_or_load_custom_func(entry, kernels::MODULE, ptx()?)?;
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<f32>(n * d)? };
        let mut b = func.builder();
        b.arg(&h);
        b.arg(&m);
        b.arg(&mut out);
        b.arg(&t32);
        b.arg(&d32);
        // SAFETY: the arguments match the kernel's signature (kernels::MEAN_POOL_L2_*): the
        // input views hold n*t*d and n*t elements, the output n*d, and blocks are a
        // multiple of 32 threads, at most 1024, one per row.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp2 for MeanPoolL2 {
    fn name(&self) -> &'static str {
        "mycelium-mean-pool-l2"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(Error::Msg(
            "mean_pool_normalise_cuda runs on CUDA tensors only (embed::mean_pool_normalise \
             on the CPU)"
                .into(),
        ))
    }

    fn cuda_fwd(
        &self,
        hs: &CudaStorage,
        hl: &Layout,
        ms: &CudaStorage,
        ml: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, t, d) = hl.shape().dims3()?;
        if ml.shape().dims2()? != (n, t) {
            return Err(Error::Msg(format!(
                "mean pooling: mask {:?} does not match hidden states {:?}",
                ml.shape(),
                hl.shape()
            )));
        }
        let dev = hs.device();
        let dims = (n, t, d);
        let out = match ms.dtype() {
            DType::U32 => Self::launch::<u32>(
                dev,
                kernels::MEAN_POOL_L2_U32_MASK,
                (hs, hl),
                (ms, ml),
                dims,
            )?,
            DType::F32 => Self::launch::<f32>(
                dev,
                kernels::MEAN_POOL_L2_F32_MASK,
                (hs, hl),
                (ms, ml),
                dims,
            )?,
            other => {
                return Err(Error::Msg(format!(
                    "mean pooling: a {other:?} mask (u32 or f32 only)"
                )))
            }
        };
        Ok((out, Shape::from((n, d))))
    }
}

/// Mean of `hidden` (n, t, d) over the positions where `mask` (n, t) is 1 (or weighted by
/// it), then each row scaled to unit length: [`super::embed::mean_pool_normalise`] as one
/// CUDA kernel. Both tensors must be on the same CUDA device; `hidden` is used as f32, a
/// mask other than u32 or f32 is converted to f32.
pub fn mean_pool_normalise_cuda(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if !hidden.device().is_cuda() || !hidden.device().same_device(mask.device()) {
        return Err(Error::Msg(
            "mean_pool_normalise_cuda: both tensors must be on one CUDA device".into(),
        ));
    }
    let (n, t, d) = hidden.dims3()?;
    if mask.dims2()? != (n, t) {
        return Err(Error::Msg(format!(
            "mean_pool_normalise_cuda: mask {:?} does not match hidden states {:?}",
            mask.shape(),
            hidden.shape()
        )));
    }
    if n == 0 || t == 0 || d == 0 {
        // Nothing to launch: the CPU path gives zeros (an empty sum over a count of 1e-9,
        // then a zero norm clamped to 1e-12).
        return Tensor::zeros((n, d), DType::F32, hidden.device());
    }
    let hidden = hidden.to_dtype(DType::F32)?.contiguous()?;
    let mask = match mask.dtype() {
        DType::U32 | DType::F32 => mask.contiguous()?,
        _ => mask.to_dtype(DType::F32)?.contiguous()?,
    };
    hidden.apply_op2_no_bwd(&mask, &MeanPoolL2)
}

/// Per-row argmax of contiguous f32 `logits` (rows, cols), cols > 0, rows > 0: a (rows,)
/// u32 tensor.
struct ArgmaxRows;

impl CustomOp1 for ArgmaxRows {
    fn name(&self) -> &'static str {
        "mycelium-argmax-rows"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(Error::Msg(
            "argmax_rows_cuda runs on CUDA tensors only (Tensor::argmax on the CPU)".into(),
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let (o0, o1) = offsets("logits", l)?;
        if rows == 0 || cols == 0 || o1 - o0 != rows * cols {
            return Err(Error::Msg(format!(
                "argmax: bad logits shape {:?}",
                l.shape()
            )));
        }
        let dev = s.device();
        let x = s.as_cuda_slice::<f32>()?;
        let x = x
            .try_slice(o0..o1)
            .ok_or_else(|| Error::Msg("logits: layout outside its storage".into()))?;
        let cols32 = to_u32("vocabulary size", cols)?;
        let cfg = LaunchConfig {
            grid_dim: (to_u32("rows", rows)?, 1, 1),
            block_dim: (kernels::block_threads(cols), 1, 1),
            shared_mem_bytes: 0,
        };
        let func =
            dev.get_or_load_custom_func(kernels::ARGMAX_ROWS_F32, kernels::MODULE, ptx()?)?;
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<u32>(rows)? };
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&mut out);
        b.arg(&cols32);
        // SAFETY: the arguments match argmax_rows_f32's signature: the input view holds
        // rows*cols elements, the output rows, one block of a multiple of 32 threads (at
        // most 1024) per row.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(rows),
        ))
    }
}

/// Greedy choice per row of `logits` on a CUDA device: for (vocab,) one index, for
/// (.., vocab) one per row (all leading dimensions flattened). Ties go to the lowest index
/// and NaN never wins (0 when a row starts with NaN), as candle's `argmax` on the CPU.
/// Logits other than f32 are converted to f32 first.
pub fn argmax_rows_cuda(logits: &Tensor) -> Result<Vec<u32>> {
    if !logits.device().is_cuda() {
        return Err(Error::Msg(
            "argmax_rows_cuda: the logits must be on a CUDA device".into(),
        ));
    }
    let dims = logits.dims();
    let Some(&cols) = dims.last() else {
        return Err(Error::Msg("argmax_rows_cuda: scalar logits".into()));
    };
    if cols == 0 {
        return Err(Error::Msg("argmax_rows_cuda: empty rows".into()));
    }
    let rows = logits.elem_count() / cols;
    if rows == 0 {
        return Ok(Vec::new());
    }
    let x = logits
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape((rows, cols))?;
    x.apply_op1_no_bwd(&ArgmaxRows)?.to_vec1::<u32>()
}
