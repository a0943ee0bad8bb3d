//! A BERT encoder for the CPU over plain `f32` buffers: the embedder's fast path on
//! `Device::Cpu` (other devices keep candle's `BertModel`). Same maths as candle's and
//! transformers' BERT (absolute positions, token type 0, post-layer-norm, GELU), but:
//!
//! - padded positions are never computed: each sequence keeps only the tokens its mask
//!   marks, so a padded batch costs what its real tokens cost (masked keys and padded
//!   rows do not change the real rows' outputs, so results are the same);
//! - the matrix products are our own: weights packed once at load into panels of
//!   [`NR`] columns, an AVX-512 microkernel (8 × 48) or an AVX2 one (6 × 16, three per
//!   tile) picked at run time ([`super::isa`]), with a portable kernel on other CPUs; bias, residual and GELU are fused into them; Q, K and V are
//!   one product;
//! - attention, softmax, GELU (erf, rational approximation, error < 1e-7) and layer norm
//!   are vectorisable loops, and everything large is split over rayon's threads.
//!
//! Owns: the CPU BERT forward pass and its weights' packed layout.

use super::isa::Isa;
use super::vmath::{erf_fast, exp_fast, max16, sum16};
use candle_core::DType;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of the microkernel's tile.
const MR: usize = 8;
/// Columns of the microkernel's tile and of a packed weight panel (three 16-lane vectors).
const NR: usize = 48;
/// Depth of one pass over A and B (a 256 × 48 panel of B is 48 KiB).
const KC: usize = 256;
/// Rows of C one task computes (at most).
const MC: usize = 64;
/// Rows of the AVX2 microkernel's tile (16 vector registers: 6 × 16 is twelve
/// accumulators, two of B and one broadcast of A).
const MR_AVX2: usize = 6;

/// Rows per kernel call and rows per task for `isa`'s kernel.
fn tile_rows(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx2 => (MR_AVX2, 10 * MR_AVX2),
        _ => (MR, MC),
    }
}

/// A raw pointer that tasks on other threads may write through: each writes rows or
/// columns no other task touches.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used for disjoint writes inside one parallel call, which outlives none of
// the buffers it points into.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the whole `Shared`, which is `Send`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Right-hand side of a product: weights packed in panels of `NR` columns (`k × NR` each,
/// zero-padded), or a plain row-major `k × n` matrix with row stride `ldb`, each row
/// readable to its panels' full width (`NR` past the start of the last).
#[derive(Clone, Copy)]
enum Rhs {
    Packed(*const f32),
    Plain(*const f32, usize),
}
// SAFETY: read-only.
unsafe impl Send for Rhs {}
unsafe impl Sync for Rhs {}

/// 64 bytes of floats on a cache line of their own.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A linear layer `y = x Wᵀ + b`, `W` (n, k) packed for [`gemm`]: panels of `NR`
/// columns, each either `k` rows of `NR` (AVX-512 and portable kernels) or, for the AVX2
/// kernel, three strips of 16 columns one after the other (`k` × 16 each), so the
/// kernel's pass over a strip reads consecutive cache lines.
struct Linear {
    packed: Vec<Line>,
    bias: Vec<f32>,
    n: usize,
    k: usize,
}

/// Whether `isa`'s kernel reads panels as strips of 16 columns.
fn strips(isa: Isa) -> bool {
    isa == Isa::Avx2
}

impl Linear {
    /// From row-major `w` (n, k), the concatenation of one or more layers' weights, for
    /// `isa`'s kernel.
    fn new(w: &[f32], bias: Vec<f32>, n: usize, k: usize, isa: Isa) -> Linear {
        let panels = n.div_ceil(NR);
        let mut flat = vec![0f32; panels * k * NR];
        for p in 0..panels {
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, v) in row.iter().enumerate() {
                    let at = if strips(isa) {
                        (p * NR + j / 16 * 16) * k + kk * 16 + j % 16
                    } else {
                        (p * k + kk) * NR + j
                    };
                    flat[at] = *v;
                }
            }
        }
        let packed = flat
            .chunks_exact(16)
            .map(|c| Line(std::array::from_fn(|i| c[i])))
            .collect();
        Linear { packed, bias, n, k }
    }

    fn as_ptr(&self) -> *const f32 {
        self.packed.as_ptr().cast()
    }
}

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    out: Linear,
    ln1: Norm,
    up: Linear,
    down: Linear,
    ln2: Norm,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    None,
    GeluErf,
    GeluTanh,
    Relu,
}

/// The encoder's weights, ready for [`CpuBert::forward`].
pub struct CpuBert {
    word: Vec<f32>,
    pos: Vec<f32>,
    type0: Vec<f32>,
    emb_ln: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    inter: usize,
    eps: f32,
    act: Act,
    vocab: usize,
    max_pos: usize,
    isa: Isa,
}

fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(shape, name)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn norm(vb: &VarBuilder, d: usize) -> candle_core::Result<Norm> {
    Ok(Norm {
        w: get(vb, &[d], "weight")?,
        b: get(vb, &[d], "bias")?,
    })
}

fn linear(vb: &VarBuilder, n: usize, k: usize, isa: Isa) -> candle_core::Result<Linear> {
    Ok(Linear::new(
        &get(vb, &[n, k], "weight")?,
        get(vb, &[n], "bias")?,
        n,
        k,
        isa,
    ))
}

impl CpuBert {
    /// Load from the same weights candle's `BertModel` reads (with or without a
    /// `bert.`-style prefix).
    /// The weights in `vb`, for the kernels of `isa` (one this CPU runs; portable
    /// otherwise).
    pub fn load(vb: VarBuilder, c: &Config, isa: Isa) -> candle_core::Result<CpuBert> {
        let isa = if isa.available() { isa } else { Isa::Portable };
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp(c.model_type.as_deref().unwrap_or("bert"))
        };
        let (d, f) = (c.hidden_size, c.intermediate_size);
        if c.num_attention_heads == 0 || d % c.num_attention_heads != 0 {
            candle_core::bail!(
                "hidden size {d} not divisible into {} heads",
                c.num_attention_heads
            );
        }
        let e = vb.pp("embeddings");
        let word = get(&e, &[c.vocab_size, d], "word_embeddings.weight")?;
        let pos = get(
            &e,
            &[c.max_position_embeddings, d],
            "position_embeddings.weight",
        )?;
        let types = get(&e, &[c.type_vocab_size, d], "token_type_embeddings.weight")?;
        let type0 = types[..d].to_vec();
        let emb_ln = norm(&e.pp("LayerNorm"), d)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let s = l.pp("attention.self");
            let mut w = get(&s.pp("query"), &[d, d], "weight")?;
            w.extend(get(&s.pp("key"), &[d, d], "weight")?);
            w.extend(get(&s.pp("value"), &[d, d], "weight")?);
            let mut b = get(&s.pp("query"), &[d], "bias")?;
            b.extend(get(&s.pp("key"), &[d], "bias")?);
            b.extend(get(&s.pp("value"), &[d], "bias")?);
            layers.push(Layer {
                qkv: Linear::new(&w, b, 3 * d, d, isa),
                out: linear(&l.pp("attention.output.dense"), d, d, isa)?,
                ln1: norm(&l.pp("attention.output.LayerNorm"), d)?,
                up: linear(&l.pp("intermediate.dense"), f, d, isa)?,
                down: linear(&l.pp("output.dense"), d, f, isa)?,
                ln2: norm(&l.pp("output.LayerNorm"), d)?,
            });
        }
        Ok(CpuBert {
            word,
            pos,
            type0,
            emb_ln,
            layers,
            hidden: d,
            heads: c.num_attention_heads,
            inter: f,
            eps: c.layer_norm_eps as f32,
            act: match c.hidden_act {
                HiddenAct::Gelu => Act::GeluErf,
                HiddenAct::GeluApproximate => Act::GeluTanh,
                HiddenAct::Relu => Act::Relu,
            },
            vocab: c.vocab_size,
            max_pos: c.max_position_embeddings,
            isa,
        })
    }

    /// Mean-pooled, L2-normalised embeddings of `seqs`, each the `(token id, position)`
    /// pairs of one text's unmasked tokens. A sequence with no tokens gives zeros.
    pub fn embed(&self, seqs: &[Vec<(u32, usize)>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let d = self.hidden;
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        let mut total = 0;
        for s in seqs {
            starts.push(total);
            total += s.len();
        }
        starts.push(total);
        let mut x = vec![0f32; total * d];
        for (row, &(id, p)) in x.chunks_exact_mut(d).zip(seqs.iter().flatten()) {
            let (id, p) = (id as usize, p);
            if id >= self.vocab || p >= self.max_pos {
                candle_core::bail!("token {id} at {p} outside the model's tables");
            }
            let w = &self.word[id * d..(id + 1) * d];
            let q = &self.pos[p * d..(p + 1) * d];
            for (((o, a), b), c) in row.iter_mut().zip(w).zip(q).zip(&self.type0) {
                *o = a + c + b;
            }
        }
        self.layer_norm(&mut x, &self.emb_ln);
        // Slack after the last row: the kernel reads `NR` columns of V rows.
        let mut qkv = vec![0f32; total * 3 * d + NR];
        let mut ctx = vec![0f32; total * d];
        let mut h = vec![0f32; total * d];
        let mut f = vec![0f32; total * self.inter];
        for l in &self.layers {
            self.linear(&x, total, &l.qkv, &mut qkv, false, Act::None);
            self.attention(&qkv, &starts, &mut ctx);
            h.copy_from_slice(&x);
            self.linear(&ctx, total, &l.out, &mut h, true, Act::None);
            self.layer_norm(&mut h, &l.ln1);
            self.linear(&h, total, &l.up, &mut f, false, self.act);
            x.copy_from_slice(&h);
            self.linear(&f, total, &l.down, &mut x, true, Act::None);
            self.layer_norm(&mut x, &l.ln2);
        }
        Ok(starts
            .windows(2)
            .map(|w| {
                let mut m = vec![0f32; d];
                for row in x[w[0] * d..w[1] * d].chunks_exact(d) {
                    for (a, b) in m.iter_mut().zip(row) {
                        *a += b;
                    }
                }
                let count = ((w[1] - w[0]) as f32).max(1e-9);
                m.iter_mut().for_each(|v| *v /= count);
                let n = m.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                m.iter_mut().for_each(|v| *v /= n);
                m
            })
            .collect())
    }

    /// `y = x Wᵀ + b` (+ `y` when `add`), then `act`; `x` (m, k), `y` (m, n).
    fn linear(&self, x: &[f32], m: usize, l: &Linear, y: &mut [f32], add: bool, act: Act) {
        assert!(x.len() >= m * l.k && y.len() >= m * l.n && l.bias.len() == l.n);
        // SAFETY: the sizes are checked above; `packed` holds ceil(n / NR) panels of k × NR.
        unsafe {
            gemm(
                self.isa,
                m,
                l.n,
                l.k,
                x.as_ptr(),
                l.k,
                Rhs::Packed(l.as_ptr()),
                y.as_mut_ptr(),
                l.n,
                add,
                Some(&l.bias),
                act,
            )
        }
    }

    fn layer_norm(&self, x: &mut [f32], n: &Norm) {
        let d = self.hidden;
        let eps = self.eps;
        let rows = (x.len() / d / (4 * rayon::current_num_threads())).max(16);
        x.par_chunks_mut(rows * d).for_each(|c| {
            for row in c.chunks_exact_mut(d) {
                norm_row(row, &n.w, &n.b, eps);
            }
        });
    }

    /// Self-attention of every sequence and head: `qkv` (tokens, 3d) to `ctx` (tokens, d).
    fn attention(&self, qkv: &[f32], starts: &[usize], ctx: &mut [f32]) {
        let d = self.hidden;
        let hd = d / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let seqs = starts.len() - 1;
        let out = Shared(ctx.as_mut_ptr());
        let isa = self.isa;
        assert!(qkv.len() >= starts[seqs] * 3 * d && ctx.len() >= starts[seqs] * d);
        (0..seqs * self.heads).into_par_iter().for_each(|task| {
            let (s, h) = (task / self.heads, task % self.heads);
            let (o, len) = (starts[s], starts[s + 1] - starts[s]);
            if len == 0 {
                return;
            }
            SCRATCH.with(|sc| {
                let mut sc = sc.borrow_mut();
                let (kt, scores) = &mut *sc;
                kt.clear();
                // Rows padded to whole panels: the kernel reads `NR` columns.
                let lp = len.div_ceil(NR) * NR;
                kt.resize(hd * lp, 0.0);
                scores.clear();
                scores.resize(len * len, 0.0);
                for j in 0..len {
                    let k = &qkv[(o + j) * 3 * d + d + h * hd..][..hd];
                    for (c, v) in k.iter().enumerate() {
                        kt[c * lp + j] = *v;
                    }
                }
                // SAFETY: Q rows (len × hd, stride 3d) and V rows lie inside `qkv`, checked
                // above; this task writes only its own sequence's rows of its head's
                // columns of `ctx`.
                unsafe {
                    gemm_st(
                        isa,
                        len,
                        len,
                        hd,
                        qkv.as_ptr().add(o * 3 * d + h * hd),
                        3 * d,
                        Rhs::Plain(kt.as_ptr(), lp),
                        scores.as_mut_ptr(),
                        len,
                        false,
                        None,
                        Act::None,
                    );
                    for row in scores.chunks_exact_mut(len) {
                        softmax_row(isa, row, scale);
                    }
                    gemm_st(
                        isa,
                        len,
                        hd,
                        len,
                        scores.as_ptr(),
                        len,
                        Rhs::Plain(qkv.as_ptr().add(o * 3 * d + 2 * d + h * hd), 3 * d),
                        out.get().add(o * d + h * hd),
                        d,
                        false,
                        None,
                        Act::None,
                    );
                }
            });
        });
    }
}

thread_local! {
    /// Per thread: Kᵀ of one head, and its attention scores.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn norm_row(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum16(row, |v| v) / n;
    let var = sum16(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * w + b;
    }
}

#[inline(always)]
fn act1(act: Act, x: f32) -> f32 {
    match act {
        Act::None => x,
        Act::GeluErf => 0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::GeluTanh => {
            // tanh(u) = 1 - 2 / (exp(2u) + 1)
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            0.5 * x * (2.0 - 2.0 / (exp_fast(2.0 * u) + 1.0))
        }
        Act::Relu => x.max(0.0),
    }
}

#[inline(always)]
fn act_slice(act: Act, xs: &mut [f32]) {
    for v in xs {
        *v = act1(act, *v);
    }
}

#[inline(always)]
fn softmax_body(row: &mut [f32], scale: f32) {
    let max = max16(row);
    for v in row.iter_mut() {
        *v = exp_fast((*v - max) * scale);
    }
    let inv = 1.0 / sum16(row, |v| v);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn softmax_avx512(row: &mut [f32], scale: f32) {
    softmax_body(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn act_avx512(act: Act, xs: &mut [f32]) {
    act_slice(act, xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(row: &mut [f32], scale: f32) {
    softmax_body(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn act_avx2(act: Act, xs: &mut [f32]) {
    act_slice(act, xs)
}

fn softmax_row(isa: Isa, row: &mut [f32], scale: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` names a path only where the CPU has it (`super::isa`).
        Isa::Avx512 => unsafe { softmax_avx512(row, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { softmax_avx2(row, scale) },
        _ => softmax_body(row, scale),
    }
}

fn act_run(isa: Isa, act: Act, xs: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` names a path only where the CPU has it (`super::isa`).
        Isa::Avx512 => unsafe { act_avx512(act, xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { act_avx2(act, xs) },
        _ => act_slice(act, xs),
    }
}

/// `C = A·B (+ C when add) (+ bias) → act`, split over rayon's threads by tiles of C.
/// A (m, k) row stride `lda`; C (m, n) row stride `ldc`.
///
/// # Safety
/// The pointers must cover those extents (B: see [`Rhs`]); nothing else may touch C.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: Rhs,
    c: *mut f32,
    ldc: usize,
    add: bool,
    bias: Option<&[f32]>,
    act: Act,
) {
    let threads = rayon::current_num_threads().max(1);
    let (_, mc) = tile_rows(isa);
    let row_tiles = m.div_ceil(mc);
    let panels = n.div_ceil(NR);
    let want = 4 * threads;
    let col_tiles = if row_tiles >= want {
        1
    } else {
        want.div_ceil(row_tiles).min(panels)
    };
    let per = panels.div_ceil(col_tiles) * NR;
    let col_tiles = n.div_ceil(per);
    let (a, c) = (Shared(a as *mut f32), Shared(c));
    let flops = m * n * k;
    let task = move |t: usize| {
        let (r, q) = (t / col_tiles, t % col_tiles);
        let (i0, j0) = (r * mc, q * per);
        let (mi, nj) = (mc.min(m - i0), per.min(n - j0));
        let b = match b {
            Rhs::Packed(p) => Rhs::Packed(p.add(j0 / NR * k * NR)),
            Rhs::Plain(p, ldb) => Rhs::Plain(p.add(j0), ldb),
        };
        gemm_st(
            isa,
            mi,
            nj,
            k,
            a.get().add(i0 * lda),
            lda,
            b,
            c.get().add(i0 * ldc + j0),
            ldc,
            add,
            bias.map(|v| &v[j0..j0 + nj]),
            act,
        );
    };
    let tasks = row_tiles * col_tiles;
    if threads == 1 || tasks == 1 || flops < 1 << 18 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// [`gemm`] on this thread.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_st(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: Rhs,
    c: *mut f32,
    ldc: usize,
    add: bool,
    bias: Option<&[f32]>,
    act: Act,
) {
    let (step, _) = tile_rows(isa);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let mut j0 = 0;
        while j0 < n {
            let nr = NR.min(n - j0);
            // B at (k0, j0), its row stride, and (for the AVX2 kernel) how far the next
            // 16-column strip starts.
            let (bp, ldb, sstride) = match b {
                Rhs::Packed(p) if strips(isa) => (p.add(j0 * k + k0 * 16), 16, 16 * k),
                Rhs::Packed(p) => (p.add(j0 / NR * k * NR + k0 * NR), NR, 16),
                Rhs::Plain(p, ldb) => (p.add(k0 * ldb + j0), ldb, 16),
            };
            let bias_p = match bias {
                Some(v) if first => v.as_ptr().add(j0),
                _ => std::ptr::null(),
            };
            let mut i0 = 0;
            while i0 < m {
                let mr = step.min(m - i0);
                let cp = c.add(i0 * ldc + j0);
                let ab = a.add(i0 * lda + k0);
                let load_c = add || !first;
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => {
                        kernel_avx512(kc, ab, lda, bp, ldb, cp, ldc, mr, nr, load_c, bias_p)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => kernel_avx2(
                        kc, ab, lda, bp, ldb, sstride, cp, ldc, mr, nr, load_c, bias_p,
                    ),
                    _ => kernel_portable(kc, ab, lda, bp, ldb, cp, ldc, mr, nr, load_c, bias_p),
                }
                i0 += step;
            }
            j0 += NR;
        }
        k0 += kc;
    }
    if act != Act::None {
        for i in 0..m {
            act_run(isa, act, std::slice::from_raw_parts_mut(c.add(i * ldc), n));
        }
    }
}

/// `C[mr × nr] = (C if load_c) + (bias if non-null) + A·B` over depth `kc`; A rows at
/// stride `lda`, B rows of `nr` at stride `ldb`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load_c: bool,
    bias: *const f32,
) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let bs = std::slice::from_raw_parts(b.add(p * ldb), nr);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = *a.add(i.min(mr - 1) * lda + p);
            for (o, bv) in row.iter_mut().zip(bs) {
                *o += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        for (j, v) in row.iter().enumerate().take(nr) {
            let mut s = *v;
            if !bias.is_null() {
                s += *bias.add(j);
            }
            let o = c.add(i * ldc + j);
            if load_c {
                s += *o;
            }
            *o = s;
        }
    }
}

/// [`kernel_portable`] for AVX-512 CPUs: a fixed width of 48 columns, which LLVM keeps in
/// 24 vector registers (no intrinsics: they need Rust 1.89; narrower fixed widths made
/// LLVM vectorise over rows, with gathers). B rows must hold `NR` readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load_c: bool,
    bias: *const f32,
) {
    // Rows past `mr` repeat the last row; their results are not stored.
    let ar: [*const f32; MR] = std::array::from_fn(|i| a.add(i.min(mr - 1) * lda));
    let acc = kernel_fma::<NR>(kc, &ar, b, ldb);
    store(&acc, c, ldc, mr, nr, load_c, bias);
}

/// [`kernel_portable`] for AVX2 CPUs (16 vector registers), for up to [`MR_AVX2`] rows:
/// the 6 × 48 tile as three 6 × 16 ones, each twelve accumulators, two loads of B and six
/// broadcasts of A per step (4 × 16 had eight accumulators, too few to hide the latency
/// of the FMAs on two pipes; 4 × 24 needed more than 16 registers). Strip `s` of B
/// starts `s · sstride` floats after `b`, its rows `ldb` apart, each 16 readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    sstride: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load_c: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    const R: usize = MR_AVX2;
    const W: usize = 16;
    // Each 16-column strip of B (`kc` × 64 bytes) is one pass; A's rows stay in L1.
    let mut j0 = 0;
    while j0 < nr {
        let mut r0 = 0;
        while r0 < mr {
            let rows = R.min(mr - r0);
            // Rows past `rows` repeat the last row; their results are not stored.
            let ar: [*const f32; R] = std::array::from_fn(|i| a.add((r0 + i.min(rows - 1)) * lda));
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let bj = b.add(j0 / W * sstride);
            for p in 0..kc {
                let bp = bj.add(p * ldb);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (acc_i, ap) in acc.iter_mut().zip(&ar) {
                    let av = _mm256_broadcast_ss(&*ap.add(p));
                    acc_i[0] = _mm256_fmadd_ps(av, b0, acc_i[0]);
                    acc_i[1] = _mm256_fmadd_ps(av, b1, acc_i[1]);
                }
            }
            let mut out = [[0f32; W]; R];
            for (o, v) in out.iter_mut().zip(&acc) {
                _mm256_storeu_ps(o.as_mut_ptr(), v[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), v[1]);
            }
            let bias_j = if bias.is_null() { bias } else { bias.add(j0) };
            store(
                &out,
                c.add(r0 * ldc + j0),
                ldc,
                rows,
                W.min(nr - j0),
                load_c,
                bias_j,
            );
            r0 += R;
        }
        j0 += W;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_fma<const W: usize>(
    kc: usize,
    ar: &[*const f32; MR],
    b: *const f32,
    ldb: usize,
) -> [[f32; W]; MR] {
    let mut acc = [[0f32; W]; MR];
    for p in 0..kc {
        let bs = &*(b.add(p * ldb) as *const [f32; W]);
        for (r, ap) in acc.iter_mut().zip(ar) {
            let av = *ap.add(p);
            for (o, bv) in r.iter_mut().zip(bs) {
                *o = av.mul_add(*bv, *o);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store<const R: usize, const W: usize>(
    acc: &[[f32; W]; R],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    load_c: bool,
    bias: *const f32,
) {
    for (i, r) in acc.iter().enumerate().take(mr) {
        let o = c.add(i * ldc);
        if nr == W {
            let o = &mut *(o as *mut [f32; W]);
            let mut s = *r;
            if !bias.is_null() {
                let bv = &*(bias as *const [f32; W]);
                s.iter_mut().zip(bv).for_each(|(x, y)| *x += y);
            }
            if load_c {
                s.iter_mut().zip(o.iter()).for_each(|(x, y)| *x += y);
            }
            *o = s;
        } else {
            for (j, v) in r.iter().enumerate().take(nr) {
                let mut x = *v;
                if !bias.is_null() {
                    x += *bias.add(j);
                }
                if load_c {
                    x += *o.add(j);
                }
                *o.add(j) = x;
            }
        }
    }
}

/// `A·B` the slow and simple way, for tests.
#[cfg(test)]
fn naive_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn products_match_naive_on_every_kernel_and_edge() {
        let mut seed = 7;
        for isa in Isa::all_here() {
            for (m, n, k) in [
                (1, 1, 1),
                (5, 17, 3),
                (16, 384, 384),
                (70, 100, 300),
                (9, 33, 520),
            ] {
                let a = rand(m * k, &mut seed);
                let w = rand(n * k, &mut seed); // (n, k)
                let bias = rand(n, &mut seed);
                let mut bt = vec![0f32; k * n + NR];
                for j in 0..n {
                    for p in 0..k {
                        bt[p * n + j] = w[j * k + p];
                    }
                }
                let want = naive_matmul(&a, &bt, m, n, k);
                let l = Linear::new(&w, bias.clone(), n, k, isa);
                let resid = rand(m * n, &mut seed);
                let mut got = resid.clone();
                let mut plain = vec![0f32; m * n];
                // SAFETY: sizes as declared.
                unsafe {
                    gemm(
                        isa,
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        k,
                        Rhs::Packed(l.as_ptr()),
                        got.as_mut_ptr(),
                        n,
                        true,
                        Some(&l.bias),
                        Act::None,
                    );
                    gemm(
                        isa,
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        k,
                        Rhs::Plain(bt.as_ptr(), n),
                        plain.as_mut_ptr(),
                        n,
                        false,
                        None,
                        Act::None,
                    );
                }
                for i in 0..m * n {
                    let e = want[i] + bias[i % n] + resid[i];
                    assert!(
                        (got[i] - e).abs() < 1e-4,
                        "{isa:?} {m}x{n}x{k} packed at {i}"
                    );
                    assert!(
                        (plain[i] - want[i]).abs() < 1e-4,
                        "{isa:?} {m}x{n}x{k} plain"
                    );
                }
            }
        }
    }
}
