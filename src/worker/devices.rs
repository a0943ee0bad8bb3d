//! Which compute devices this node has: NVIDIA GPUs found through the CUDA driver (loaded
//! at run time by cudarc, so a binary without the `cuda` feature, or a machine without a
//! driver, still starts and says why), and the CPU. `pick` chooses where engines run.
//!
//! Owns: device discovery and choice.

/// One GPU the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub compute_capability: (i32, i32),
}

/// GPUs visible through the CUDA driver, or why none can be used.
pub fn gpus() -> Result<Vec<Gpu>, String> {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so was not found)".into());
        }
    }
    use cudarc::driver::{result, CudaContext};
    result::init().map_err(|e| format!("the CUDA driver did not start: {e}"))?;
    let n = result::device::get_count().map_err(|e| format!("counting GPUs: {e}"))?;
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        let ctx = CudaContext::new(i).map_err(|e| format!("GPU {i}: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let (free, total) = ctx.mem_get_info().map_err(|e| format!("GPU {i}: {e}"))?;
        let compute_capability = ctx.compute_capability().unwrap_or((0, 0));
        out.push(Gpu {
            ordinal: i,
            name,
            total_bytes: total as u64,
            free_bytes: free as u64,
            compute_capability,
        });
    }
    Ok(out)
}

/// Where the engines run: the first GPU when this build has the `cuda` feature and a
/// driver answers, else the CPU, with the reason when a GPU was wanted but not usable.
pub fn pick(want_gpu: bool) -> (candle_core::Device, Option<String>) {
    if !want_gpu {
        return (candle_core::Device::Cpu, None);
    }
    #[cfg(feature = "cuda")]
    let picked = match gpus() {
        Ok(g) if !g.is_empty() => match candle_core::Device::new_cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (
                candle_core::Device::Cpu,
                Some(format!("GPU 0 could not be used ({e}); running on the CPU")),
            ),
        },
        Ok(_) => (
            candle_core::Device::Cpu,
            Some("the CUDA driver reports no GPU; running on the CPU".into()),
        ),
        Err(e) => (
            candle_core::Device::Cpu,
            Some(format!("{e}; running on the CPU")),
        ),
    };
    #[cfg(not(feature = "cuda"))]
    let picked = (
        candle_core::Device::Cpu,
        Some("this build has no `cuda` feature; running on the CPU".into()),
    );
    picked
}

/// How many texts or prompts to run at once on `device`: bounded by free GPU memory
/// (about 64 MiB per item for the small models we run), and `max` on the CPU.
pub fn batch_size(device: &candle_core::Device, max: usize) -> usize {
    if device.is_cuda() {
        if let Ok(g) = gpus() {
            if let Some(first) = g.first() {
                let by_mem = (first.free_bytes / (64 << 20)) as usize;
                return by_mem.clamp(1, max.max(1));
            }
        }
    }
    max.max(1)
}
