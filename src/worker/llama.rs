//! The CPU forward pass of a llama-family model from GGUF (SmolLM2 and its kind): token
//! embedding, per layer RMSNorm → grouped-query attention with rotary positions (GGUF's
//! interleaved pairs) and a KV cache → RMSNorm → SwiGLU feed-forward, final norm and the
//! output head (tied to the embedding when the file has no `output.weight`).
//!
//! One call runs any mix of rows: several tokens of one prompt (prefill), one new token
//! of each of several sequences (batched decoding), or a prompt and a claimed answer
//! together (teacher-forced checking, logits at every position). Every row of a call goes
//! through each weight matrix in one product ([`QMatrix::matmul`]), so weights are read
//! once per call however many sequences it serves. Each sequence has its own cache and
//! positions, so no padding or masks between sequences are needed.
//!
//! Owns: the llama math on the CPU. Reads the model file once at load; no other I/O.

use super::isa::Isa;
use super::quant::{matmul_each, QMatrix, QuantError};
use super::vmath::{dot8, exp_fast, max16, sum16};
use super::EngineError;
use candle_core::quantized::gguf_file;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::io::{Read, Seek, SeekFrom};

#[derive(Debug, Clone)]
pub struct Config {
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

pub struct Llama {
    pub cfg: Config,
    embd: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `None`: the output head is the embedding matrix.
    output: Option<QMatrix>,
}

/// One sequence's keys and values, per layer `len` × kv width.
pub struct Cache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub len: usize,
}

impl Cache {
    pub fn new(cfg: &Config, capacity: usize) -> Cache {
        let w = cfg.kv_heads * cfg.head_dim;
        Cache {
            k: (0..cfg.layers)
                .map(|_| Vec::with_capacity(capacity * w))
                .collect(),
            v: (0..cfg.layers)
                .map(|_| Vec::with_capacity(capacity * w))
                .collect(),
            len: 0,
        }
    }
}

fn model_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(e.to_string())
}

fn meta_u(ct: &gguf_file::Content, key: &str) -> Result<usize, EngineError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| EngineError::Model(format!("GGUF metadata has no {key}")))?;
    Ok(v.to_u32().map_err(model_err)? as usize)
}

fn meta_f(ct: &gguf_file::Content, key: &str, default: f32) -> f32 {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = sum16(x, |v| v * v) / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * s * g;
    }
}

/// Rows of work below which a row-wise step runs on the calling thread (a generation
/// step's one row is not worth a parallel region).
const PAR_ROWS: usize = 8;

/// [`rms_norm`] of each `w.len()`-wide row of `x` into `out`, rows in parallel when there
/// are many (a prompt, a check).
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rows_each(out, x, w.len(), |o, xi| rms_norm(xi, w, eps, o));
}

/// The gated feed-forward's activation: `g ← silu(g) · u` element-wise over rows of
/// `width`, rows in parallel when there are many, vectorised in AVX2 where chosen.
fn silu_rows(avx2: bool, g: &mut [f32], u: &[f32], width: usize) {
    rows_each(g, u, width, |g, u| silu_mul(avx2, g, u));
}

/// `f(row of a, row of b)` for each pair of `width`-long rows: on this thread for a few
/// rows, across the rayon threads for [`PAR_ROWS`] or more.
fn rows_each(a: &mut [f32], b: &[f32], width: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if a.len() < PAR_ROWS * width {
        for (x, y) in a.chunks_exact_mut(width).zip(b.chunks_exact(width)) {
            f(x, y);
        }
    } else {
        a.par_chunks_exact_mut(width)
            .zip(b.par_chunks_exact(width))
            .for_each(|(x, y)| f(x, y));
    }
}

fn silu_mul(avx2: bool, g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && Isa::Avx2.available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { silu_mul_avx2(g, u) };
    }
    let _ = avx2;
    silu_mul_body(g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    silu_mul_body(g, u)
}

#[inline(always)]
fn silu_mul_body(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + exp_fast(-*a)) * b;
    }
}

/// Rotate interleaved pairs of each `head_dim` slice of `x` by `pos`.
fn rope(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
    for h in x.chunks_exact_mut(head_dim) {
        for (p, &(c, s)) in h.chunks_exact_mut(2).zip(cos_sin) {
            let (a, b) = (p[0], p[1]);
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
}

/// The shape of grouped-query attention.
struct Heads {
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    hd: usize,
    /// Width of a key (or value) row: kv heads × head size.
    kvw: usize,
    scale: f32,
}

/// One row's attention: for each query head, softmax(q · kᵀ · scale) · v over the `keys`
/// and `vals` rows it sees; `w` holds one weight per row. With AVX2 the same code is
/// compiled for it (the dots and sums vectorise to 8 lanes).
fn attend(
    avx2: bool,
    s: &Heads,
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    w: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && Isa::Avx2.available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { attend_avx2(s, q, keys, vals, w, out) };
    }
    let _ = avx2;
    attend_body(s, q, keys, vals, w, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    s: &Heads,
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    w: &mut [f32],
    out: &mut [f32],
) {
    if s.hd != HD64 {
        return attend_body(s, q, keys, vals, w, out);
    }
    let n = w.len();
    assert!(keys.len() >= n * s.kvw && vals.len() >= n * s.kvw);
    assert!(q.len() >= s.heads * HD64 && out.len() >= s.heads * HD64);
    assert!((s.heads - 1) / s.group * HD64 + HD64 <= s.kvw);
    for hq in 0..s.heads {
        let off = hq / s.group * HD64;
        let qh = &q[hq * HD64..(hq + 1) * HD64];
        // Scores eight keys at a time ([`scores8`]), the rest as `attend_body` does.
        let mut t = 0;
        while t + 8 <= n {
            // SAFETY: keys t..t + 8 lie in `keys` (asserted above), each `off + 64` wide.
            let sc = scores8(qh, keys.as_ptr().add(t * s.kvw + off), s.kvw, s.scale);
            w[t..t + 8].copy_from_slice(&sc);
            t += 8;
        }
        for (wt, kt) in w[t..].iter_mut().zip(keys[t * s.kvw..].chunks_exact(s.kvw)) {
            *wt = dot8(qh, &kt[off..off + HD64]) * s.scale;
        }
        let max = max16(w);
        for wt in w.iter_mut() {
            *wt = (*wt - max).exp();
        }
        let inv = 1.0 / sum16(w, |v| v);
        // The weighted values in eight registers, each element summed over the keys in
        // order (as `attend_body`'s loop, without storing them back after every key).
        // Key t's values and this head's output lie in `vals` and `out` (asserted above).
        let mut o = [_mm256_setzero_ps(); 8];
        for (t, wt) in w.iter().enumerate() {
            let f = _mm256_set1_ps(wt * inv);
            let v = vals.as_ptr().add(t * s.kvw + off);
            for (c, o) in o.iter_mut().enumerate() {
                *o = _mm256_add_ps(*o, _mm256_mul_ps(f, _mm256_loadu_ps(v.add(8 * c))));
            }
        }
        for (c, o) in o.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(hq * HD64 + 8 * c), *o);
        }
    }
}

/// The head size [`attend_avx2`] has registers for (SmolLM2's); other sizes take
/// `attend_body`.
#[cfg(target_arch = "x86_64")]
const HD64: usize = 64;

/// `dot8(q, key) · scale` for eight keys (64 values each, `stride` apart from `k`), with
/// [`dot8`]'s arithmetic to the bit: per key, eight lanes each summing their products in
/// order, then the lanes added one after another onto an empty sum's value, then the
/// (empty) tail's. The eight keys' chains run side by side, and their lanes are
/// transposed so that the eight sums are added together, a key a lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores8(q: &[f32], k: *const f32, stride: usize, scale: f32) -> [f32; 8] {
    let mut acc = [_mm256_setzero_ps(); 8];
    for c in 0..8 {
        let qc = _mm256_loadu_ps(q.as_ptr().add(8 * c));
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(
                *a,
                _mm256_mul_ps(qc, _mm256_loadu_ps(k.add(j * stride + 8 * c))),
            );
        }
    }
    // Transpose: lane j of `l[i]` is lane i of key j's accumulator.
    let t0 = _mm256_unpacklo_ps(acc[0], acc[1]);
    let t1 = _mm256_unpackhi_ps(acc[0], acc[1]);
    let t2 = _mm256_unpacklo_ps(acc[2], acc[3]);
    let t3 = _mm256_unpackhi_ps(acc[2], acc[3]);
    let t4 = _mm256_unpacklo_ps(acc[4], acc[5]);
    let t5 = _mm256_unpackhi_ps(acc[4], acc[5]);
    let t6 = _mm256_unpacklo_ps(acc[6], acc[7]);
    let t7 = _mm256_unpackhi_ps(acc[6], acc[7]);
    let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
    let l = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    // What `dot8` starts its sums from (`Sum` of no f32s).
    let empty = _mm256_set1_ps(std::iter::empty::<f32>().sum());
    let mut sum = empty;
    for li in l {
        sum = _mm256_add_ps(sum, li);
    }
    let sum = _mm256_mul_ps(_mm256_add_ps(sum, empty), _mm256_set1_ps(scale));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out
}

#[inline(always)]
fn attend_body(s: &Heads, q: &[f32], keys: &[f32], vals: &[f32], w: &mut [f32], out: &mut [f32]) {
    let hd = s.hd;
    for hq in 0..s.heads {
        let off = hq / s.group * hd;
        let qh = &q[hq * hd..(hq + 1) * hd];
        for (wt, kt) in w.iter_mut().zip(keys.chunks_exact(s.kvw)) {
            *wt = dot8(qh, &kt[off..off + hd]) * s.scale;
        }
        let max = max16(w);
        // libm's exp here, not the polynomial: greedy choices at near ties follow
        // llama.cpp's more often with it (the fixture test counts them).
        for wt in w.iter_mut() {
            *wt = (*wt - max).exp();
        }
        let oh = &mut out[hq * hd..(hq + 1) * hd];
        oh.fill(0.0);
        let inv = 1.0 / sum16(w, |v| v);
        for (wt, vt) in w.iter().zip(vals.chunks_exact(s.kvw)) {
            let f = wt * inv;
            for (a, b) in oh.iter_mut().zip(&vt[off..off + hd]) {
                *a += f * b;
            }
        }
    }
}

impl Llama {
    /// Load the weights described by `ct` from `file`.
    pub fn load<R: Read + Seek>(
        ct: &gguf_file::Content,
        file: &mut R,
    ) -> Result<Llama, EngineError> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if arch != "llama" {
            return Err(EngineError::Model(format!(
                "architecture {arch:?} is not supported (llama is)"
            )));
        }
        let dim = meta_u(ct, "llama.embedding_length")?;
        let heads = meta_u(ct, "llama.attention.head_count")?;
        let kv_heads = meta_u(ct, "llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || dim % heads != 0 {
            return Err(EngineError::Model(format!(
                "{heads} heads over {kv_heads} key/value heads and width {dim} do not fit"
            )));
        }
        let head_dim = dim / heads;
        if head_dim % 2 != 0 {
            return Err(EngineError::Model("odd head width".into()));
        }
        let mut cfg = Config {
            layers: meta_u(ct, "llama.block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim,
            ffn: meta_u(ct, "llama.feed_forward_length")?,
            vocab: 0,
            eps: meta_f(ct, "llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: meta_f(ct, "llama.rope.freq_base", 10000.0),
        };
        let mut tensor = |name: &str, rows: usize, cols: usize| -> Result<QMatrix, EngineError> {
            let info = ct
                .tensor_infos
                .get(name)
                .ok_or_else(|| EngineError::Model(format!("GGUF has no tensor {name}")))?;
            let dims = info.shape.dims();
            let (r, c) = match dims {
                [c] => (1, *c),
                [r, c] => (*r, *c),
                _ => return Err(EngineError::Model(format!("{name}: shape {dims:?}"))),
            };
            if (rows != 0 && r != rows) || c != cols {
                return Err(EngineError::Model(format!(
                    "{name}: shape {r}×{c}, expected {rows}×{cols}"
                )));
            }
            let kind = format!("{:?}", info.ggml_dtype);
            let n = r * c;
            let bytes = match kind.as_str() {
                "F32" => n * 4,
                "Q4_1" => n / 32 * 20,
                "Q8_0" => n / 32 * 34,
                _ => return Err(model_err(QuantError::Type(kind))),
            };
            let mut buf = vec![0u8; bytes];
            file.seek(SeekFrom::Start(ct.tensor_data_offset + info.offset))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| EngineError::Model(format!("{name}: {e}")))?;
            QMatrix::from_gguf(&kind, r, c, &buf)
                .map_err(|e| EngineError::Model(format!("{name}: {e}")))
        };
        let vec = |m: QMatrix| -> Result<Vec<f32>, EngineError> {
            match m.data {
                super::quant::Data::F32(v) => Ok(v),
                _ => Err(EngineError::Model("a norm weight is not F32".into())),
            }
        };
        let embd = tensor("token_embd.weight", 0, dim)?;
        cfg.vocab = embd.rows;
        let kv = kv_heads * head_dim;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: vec(tensor(&format!("{p}.attn_norm.weight"), 1, dim)?)?,
                wq: tensor(&format!("{p}.attn_q.weight"), dim, dim)?,
                wk: tensor(&format!("{p}.attn_k.weight"), kv, dim)?,
                wv: tensor(&format!("{p}.attn_v.weight"), kv, dim)?,
                wo: tensor(&format!("{p}.attn_output.weight"), dim, dim)?,
                ffn_norm: vec(tensor(&format!("{p}.ffn_norm.weight"), 1, dim)?)?,
                gate: tensor(&format!("{p}.ffn_gate.weight"), cfg.ffn, dim)?,
                up: tensor(&format!("{p}.ffn_up.weight"), cfg.ffn, dim)?,
                down: tensor(&format!("{p}.ffn_down.weight"), dim, cfg.ffn)?,
            });
        }
        let out_norm = vec(tensor("output_norm.weight", 1, dim)?)?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            Some(tensor("output.weight", cfg.vocab, dim)?)
        } else {
            None
        };
        Ok(Llama {
            cfg,
            embd,
            layers,
            out_norm,
            output,
        })
    }

    /// Run `rows` of (sequence index into `caches`, token); the rows of one sequence in
    /// order, continuing from its cache. Returns the logits of the rows whose `want` is
    /// true, in row order. Token IDs must be below the vocabulary size.
    pub fn forward(
        &self,
        caches: &mut [Cache],
        rows: &[(usize, u32)],
        want: &[bool],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        // Run on a rayon worker, so the ~200 parallel products of a pass split cheaply
        // among threads already awake rather than each waking the pool from outside.
        rayon::scope(|_| self.pass(caches, rows, want))
    }

    fn pass(
        &self,
        caches: &mut [Cache],
        rows: &[(usize, u32)],
        want: &[bool],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let c = &self.cfg;
        let n = rows.len();
        let (dim, hd, kvw) = (c.dim, c.head_dim, c.kv_heads * c.head_dim);
        // Positions of each row.
        let mut next: Vec<usize> = caches.iter().map(|k| k.len).collect();
        let mut pos = Vec::with_capacity(n);
        for &(s, t) in rows {
            let p = next
                .get_mut(s)
                .ok_or_else(|| EngineError::Input(format!("no sequence {s}")))?;
            if t as usize >= c.vocab {
                return Err(EngineError::Input(format!(
                    "token {t} is outside the vocabulary"
                )));
            }
            pos.push(*p);
            *p += 1;
        }
        let half = hd / 2;
        let cos_sin: Vec<Vec<(f32, f32)>> = pos
            .iter()
            .map(|&p| {
                (0..half)
                    .map(|i| {
                        let theta = p as f32 * c.rope_base.powf(-2.0 * i as f32 / hd as f32);
                        (theta.cos(), theta.sin())
                    })
                    .collect()
            })
            .collect();
        let mut x = vec![0f32; n * dim];
        for (xi, &(_, t)) in x.chunks_exact_mut(dim).zip(rows) {
            self.embd.row(t as usize, xi);
        }
        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kvw];
        let mut v = vec![0f32; n * kvw];
        let mut att = vec![0f32; n * dim];
        let mut o = vec![0f32; n * dim];
        let mut g = vec![0f32; n * c.ffn];
        let mut u = vec![0f32; n * c.ffn];
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let isa = super::isa::chosen();
        let avx2 = isa >= Isa::Avx2;
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &l.attn_norm, c.eps, &mut h);
            matmul_each(
                isa,
                &mut [(&l.wq, &mut q), (&l.wk, &mut k), (&l.wv, &mut v)],
                &h,
                n,
            );
            for i in 0..n {
                rope(&mut q[i * dim..(i + 1) * dim], hd, &cos_sin[i]);
                rope(&mut k[i * kvw..(i + 1) * kvw], hd, &cos_sin[i]);
                let cache = &mut caches[rows[i].0];
                cache.k[li].extend_from_slice(&k[i * kvw..(i + 1) * kvw]);
                cache.v[li].extend_from_slice(&v[i * kvw..(i + 1) * kvw]);
            }
            // Attention: each row sees its own sequence up to its own position.
            let caches_ref: &[Cache] = caches;
            let shape = Heads {
                heads: c.heads,
                group,
                hd,
                kvw,
                scale,
            };
            att.par_chunks_mut(dim).enumerate().for_each(|(i, out)| {
                let cache = &caches_ref[rows[i].0];
                let upto = pos[i] + 1;
                let (keys, vals) = (&cache.k[li][..upto * kvw], &cache.v[li][..upto * kvw]);
                let mut w = vec![0f32; upto];
                let qi = &q[i * dim..(i + 1) * dim];
                attend(avx2, &shape, qi, keys, vals, &mut w, out);
            });
            l.wo.matmul(&att, n, &mut o);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            rms_norm_rows(&x, &l.ffn_norm, c.eps, &mut h);
            matmul_each(isa, &mut [(&l.gate, &mut g), (&l.up, &mut u)], &h, n);
            silu_rows(avx2, &mut g, &u, c.ffn);
            l.down.matmul(&g, n, &mut o);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
        }
        for (cache, n_new) in caches.iter_mut().zip(&next) {
            cache.len = *n_new;
        }
        // Output head for the wanted rows only.
        let picked: Vec<usize> = (0..n)
            .filter(|&i| want.get(i).copied().unwrap_or(false))
            .collect();
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let mut hn = vec![0f32; picked.len() * dim];
        for (hi, &i) in hn.chunks_exact_mut(dim).zip(&picked) {
            rms_norm(&x[i * dim..(i + 1) * dim], &self.out_norm, c.eps, hi);
        }
        let head = self.output.as_ref().unwrap_or(&self.embd);
        let mut logits = vec![0f32; picked.len() * c.vocab];
        head.matmul(&hn, picked.len(), &mut logits);
        Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::quant::tests::lcg;

    /// The AVX2 attention gives the portable loop's results to the bit, for any number of
    /// keys (eight at a time and the rest), grouped heads, and scores far apart or tied:
    /// greedy choices at near ties must not depend on the path.
    #[test]
    fn avx2_attention_equals_the_loop_to_the_bit() {
        if !Isa::Avx2.available() {
            // A CPU without AVX2 has only the loop: nothing to compare.
            return;
        }
        let mut seed = 9u64;
        let s = Heads {
            heads: 9,
            group: 3,
            hd: 64,
            kvw: 3 * 64,
            scale: 0.125,
        };
        for n in [1, 7, 8, 9, 16, 23, 64] {
            for spread in [0.0f32, 0.1, 4.0] {
                let q: Vec<f32> = (0..s.heads * s.hd).map(|_| lcg(&mut seed)).collect();
                let mut keys: Vec<f32> = (0..n * s.kvw).map(|_| lcg(&mut seed) * spread).collect();
                // A key that is -0.0 throughout, and values of mixed signs.
                keys[..s.hd].fill(-0.0);
                let vals: Vec<f32> = (0..n * s.kvw).map(|_| lcg(&mut seed) * 3.0).collect();
                let (mut w1, mut w2) = (vec![0f32; n], vec![0f32; n]);
                let (mut o1, mut o2) = (vec![0f32; s.heads * s.hd], vec![1f32; s.heads * s.hd]);
                attend_body(&s, &q, &keys, &vals, &mut w1, &mut o1);
                attend(true, &s, &q, &keys, &vals, &mut w2, &mut o2);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&w2), bits(&w1), "weights n={n} spread={spread}");
                assert_eq!(bits(&o2), bits(&o1), "n={n} spread={spread}");
                assert!(o1.iter().any(|v| *v != 0.0));
            }
        }
    }
}
