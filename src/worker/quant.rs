//! Quantised matrices for the CPU llama engine ([`super::llama`]): GGUF weight blocks
//! (Q4_1 and Q8_0 with their half scales, as the file has them; F32), activations
//! quantised to 8 bits per 32-value block (llama.cpp's Q8_1: scale and scaled sum), and
//! the product of a weight matrix with many activation rows at once.
//!
//! Quantised rows are kept in groups of eight, interleaved four values at a time
//! ([`BlockQ4_1x8`], [`BlockQ8_0x8`]; repacked once at load): one 32-byte load holds the
//! same four columns of eight rows, so a kernel multiplies it by four broadcast activation
//! values and each lane of its accumulator is one output row. The scales of eight rows
//! are one vector, no horizontal sums are needed, and unpacking a group's weights is
//! shared by every activation row of the product (a prompt, a teacher-forced check, a
//! batch), so many-row products are matrix-matrix work rather than repeated dots. The
//! last `rows % 8` rows stay plain blocks with per-row dot kernels.
//!
//! The kernels use AVX-512 with VNNI when the CPU has it (one `vpdpbusd` multiplies 64
//! weight bytes by activation bytes and sums them four at a time into 32-bit lanes), else
//! AVX2, else portable loops: picked at run time by [`super::isa`], so one binary runs
//! everywhere (`MYCELIUM_KERNELS=avx2|portable` forces a lesser path); the row groups of
//! the output are split across the rayon threads.
//!
//! Owns: quantised weight storage and the products over it. No I/O.

use super::isa::Isa;
use rayon::prelude::*;

/// Values per block.
pub const QK: usize = 32;

/// Rows per interleaved group.
pub const GROUP: usize = 8;

/// A Q4_1 weight block as GGUF stores it (20 bytes): value = d · q + m, q in 0..16, `d`
/// and `m` IEEE halves; `qs[j]` holds element j in its low nibble and element j + 16 in
/// its high nibble. Halves, as in the file: 17% less memory than with f32 scales (24-byte
/// blocks), and that much less for decoding to read, which reads every weight per token.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

/// The same block of eight consecutive rows (160 bytes, as eight [`BlockQ4_1`]): their
/// scales side by side, and `qs[32·g + 4·r + t]` = byte `4·g + t` of row r's block, so
/// its low nibble is element 4g + t and its high nibble element 16 + 4g + t (g < 4).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1x8 {
    pub d: [u16; GROUP],
    pub m: [u16; GROUP],
    pub qs: [u8; 128],
}

/// A Q8_0 weight block as GGUF stores it (34 bytes): value = d · q, `d` an IEEE half.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

/// The same block of eight consecutive rows (272 bytes): `qs[32·g + 4·r + t]` = element
/// `4·g + t` of row r (g < 8).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0x8 {
    pub d: [u16; GROUP],
    pub qs: [i8; 256],
}

/// Where element `j` of row `r` sits in a group's interleaved values: four columns of the
/// eight rows per 32 bytes.
const fn lane_at(r: usize, j: usize) -> usize {
    32 * (j / 4) + 4 * r + j % 4
}

/// Eight rows' values (`L` each) interleaved into one group's `P = 8 · L`.
fn interleave<T: Copy + Default, const L: usize, const P: usize>(rows: [&[T; L]; GROUP]) -> [T; P] {
    let mut out = [T::default(); P];
    for (r, x) in rows.iter().enumerate() {
        for (j, q) in x.iter().enumerate() {
            out[lane_at(r, j)] = *q;
        }
    }
    out
}

/// Row `r`'s `L` values back out of a group's interleaved ones.
fn deinterleave<T: Copy, const L: usize>(qs: &[T], r: usize) -> [T; L] {
    std::array::from_fn(|j| qs[lane_at(r, j)])
}

impl BlockQ4_1x8 {
    fn pack(b: [&BlockQ4_1; GROUP]) -> Self {
        BlockQ4_1x8 {
            d: b.map(|x| x.d),
            m: b.map(|x| x.m),
            qs: interleave(b.map(|x| &x.qs)),
        }
    }

    /// Row `r`'s block.
    pub fn get(&self, r: usize) -> BlockQ4_1 {
        BlockQ4_1 {
            d: self.d[r],
            m: self.m[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

impl BlockQ8_0x8 {
    fn pack(b: [&BlockQ8_0; GROUP]) -> Self {
        BlockQ8_0x8 {
            d: b.map(|x| x.d),
            qs: interleave(b.map(|x| &x.qs)),
        }
    }

    /// Row `r`'s block.
    pub fn get(&self, r: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: self.d[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

/// A [`BlockQ4_1x8`] spread for a product of many activation rows on AVX2: each 32-byte
/// load's low nibbles (`q[64·g..64·g + 32]`) and high nibbles (`q[64·g + 32..64·g + 64]`)
/// one value a byte, and the scales as f32. Made once per row group and product
/// ([`x86::spread_q4_1x8`]) and then read by every four activation rows, so the kernel
/// spends no instructions unpacking (`benches/kernels`, 64 rows, 2 Zen 3 cores: about
/// 1.1× the packed kernel's products per second). Never stored: it is twice the size of
/// the packed block, and generation, which reads every weight once per token, keeps the
/// packed one.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ4_1x8Spread {
    pub q: [u8; 256],
    pub d: [f32; GROUP],
    pub m: [f32; GROUP],
}

const ZERO_SPREAD: BlockQ4_1x8Spread = BlockQ4_1x8Spread {
    q: [0; 256],
    d: [0.0; GROUP],
    m: [0.0; GROUP],
};

/// Activation rows from which a Q4_1 product on AVX2 spreads each row group's weights
/// first ([`BlockQ4_1x8Spread`]): below it (one token of generation) the spreading would
/// not be repaid.
const SPREAD_ROWS: usize = 4;

/// An activation block: value ≈ d · q, with s = d · Σq (for Q4_1's offset term) and
/// `sum` = Σq itself (to take the offset of Q8_0's AVX-512 weights off exactly).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub sum: i32,
    pub qs: [i8; 32],
}

const ZERO_Q8: BlockQ8 = BlockQ8 {
    d: 0.0,
    s: 0.0,
    sum: 0,
    qs: [0; 32],
};

/// Two activation rows' blocks side by side, for the AVX-512 VNNI kernels: `qs[8t..8t + 4]`
/// is the first row's quad t (values 4t..4t + 4) and `qs[8t + 4..8t + 8]` the second's, so
/// one 64-bit broadcast feeds lane pairs (weight row r, first row) and (r, second row).
/// Made once per product from the quantised rows ([`pair_rows`]) and read by every row
/// group: a row's whole block then sums in one lane, with no step across lanes.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct BlockQ8x2 {
    pub qs: [i8; 64],
    pub d: [f32; 2],
    pub s: [f32; 2],
    /// 128 · Σq of each row (Q8_0's weight offset, taken off in integers).
    pub off: [i32; 2],
}

const ZERO_Q8X2: BlockQ8x2 = BlockQ8x2 {
    qs: [0; 64],
    d: [0.0; 2],
    s: [0.0; 2],
    off: [0; 2],
};

/// Rows 2p and 2p + 1 of `xq` (`nb` blocks a row) as pairs ([`BlockQ8x2`]), into `out`
/// (`n / 2 · nb` blocks); an odd last row is left to the one-row kernels.
fn pair_rows(xq: &[BlockQ8], nb: usize, out: &mut [BlockQ8x2]) {
    for (p, o) in out.chunks_exact_mut(nb).enumerate() {
        let (a, b) = (&xq[2 * p * nb..][..nb], &xq[(2 * p + 1) * nb..][..nb]);
        for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
            for t in 0..8 {
                o.qs[8 * t..8 * t + 4].copy_from_slice(&a.qs[4 * t..4 * t + 4]);
                o.qs[8 * t + 4..8 * t + 8].copy_from_slice(&b.qs[4 * t..4 * t + 4]);
            }
            o.d = [a.d, b.d];
            o.s = [a.s, b.s];
            o.off = [128 * a.sum, 128 * b.sum];
        }
    }
}

/// Which kernels a product runs: the instruction-set path narrowed to what these blocks
/// have kernels for (an AVX-512 CPU without VNNI runs the AVX2 ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kern {
    Portable,
    Avx2,
    Avx512Vnni,
}

impl Kern {
    /// The kernels the path `isa` runs on this CPU.
    pub fn on(isa: Isa) -> Kern {
        match isa {
            Isa::Avx512 if super::isa::vnni_here() => Kern::Avx512Vnni,
            Isa::Avx512 | Isa::Avx2 if Isa::Avx2.available() => Kern::Avx2,
            _ => Kern::Portable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kern::Portable => "portable",
            Kern::Avx2 => "avx2",
            Kern::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether the per-row dot kernels (tail rows) take their AVX2 form.
    fn avx2(self) -> bool {
        self != Kern::Portable
    }
}

/// Quantised rows: the first `rows / 8 · 8` in interleaved groups (group-major, then
/// block), the last `rows % 8` as plain row-major blocks.
#[derive(Debug, Clone)]
pub struct Packed<G, B> {
    pub groups: Vec<G>,
    pub tail: Vec<B>,
}

/// The storage of a matrix of `rows` × `cols` (row-major, `cols` a multiple of 32 for the
/// quantised kinds).
#[derive(Debug, Clone)]
pub enum Data {
    Q4_1(Packed<BlockQ4_1x8, BlockQ4_1>),
    Q8_0(Packed<BlockQ8_0x8, BlockQ8_0>),
    F32(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Data,
}

/// Row-major blocks (`nb` per row) into groups of eight rows and a plain tail.
fn pack<B, G>(blocks: &[B], nb: usize, pack: impl Fn([&B; GROUP]) -> G) -> Packed<G, B>
where
    B: Clone,
{
    let rows = blocks.len() / nb.max(1);
    let full = rows / GROUP * GROUP;
    let mut groups = Vec::with_capacity(full / GROUP * nb);
    for g in 0..full / GROUP {
        for l in 0..nb {
            groups.push(pack(std::array::from_fn(|r| {
                &blocks[(g * GROUP + r) * nb + l]
            })));
        }
    }
    Packed {
        groups,
        tail: blocks[full * nb..].to_vec(),
    }
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
                let nb = cols / QK;
                if kind == "Q4_1" {
                    let blocks: Vec<BlockQ4_1> = bytes
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
                        .collect();
                    Data::Q4_1(pack(&blocks, nb, BlockQ4_1x8::pack))
                } else {
                    let blocks: Vec<BlockQ8_0> = bytes
                        .chunks_exact(34)
                        .map(|c| {
                            let mut qs = [0i8; 32];
                            for (q, b) in qs.iter_mut().zip(&c[2..34]) {
                                *q = *b as i8;
                            }
                            BlockQ8_0 { d: le16(c, 0), qs }
                        })
                        .collect();
                    Data::Q8_0(pack(&blocks, nb, BlockQ8_0x8::pack))
                }
            }
            other => return Err(QuantError::Type(other.to_string())),
        };
        Ok(QMatrix { rows, cols, data })
    }

    /// Row `r`'s `l`-th Q4_1 block (`None` for other kinds).
    pub fn q4_1_block(&self, r: usize, l: usize) -> Option<BlockQ4_1> {
        let nb = self.cols / QK;
        let Data::Q4_1(p) = &self.data else {
            return None;
        };
        let full = p.groups.len() / nb.max(1) * GROUP;
        Some(if r < full {
            p.groups[r / GROUP * nb + l].get(r % GROUP)
        } else {
            p.tail[(r - full) * nb + l]
        })
    }

    /// Row `r`'s `l`-th Q8_0 block (`None` for other kinds).
    pub fn q8_0_block(&self, r: usize, l: usize) -> Option<BlockQ8_0> {
        let nb = self.cols / QK;
        let Data::Q8_0(p) = &self.data else {
            return None;
        };
        let full = p.groups.len() / nb.max(1) * GROUP;
        Some(if r < full {
            p.groups[r / GROUP * nb + l].get(r % GROUP)
        } else {
            p.tail[(r - full) * nb + l]
        })
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        if let Data::F32(v) = &self.data {
            out.copy_from_slice(&v[r * c..(r + 1) * c]);
            return;
        }
        for (l, o) in out.chunks_exact_mut(QK).enumerate() {
            if let Some(b) = self.q8_0_block(r, l) {
                let d = f16_to_f32(b.d);
                for (x, q) in o.iter_mut().zip(b.qs) {
                    *x = d * f32::from(q);
                }
            } else if let Some(b) = self.q4_1_block(r, l) {
                let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                for j in 0..16 {
                    o[j] = d * f32::from(b.qs[j] & 0xf) + m;
                    o[j + 16] = d * f32::from(b.qs[j] >> 4) + m;
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

    /// [`QMatrix::matmul`] on the given path ([`Kern::on`] says which kernels that is).
    /// `isa` must be one this CPU runs.
    pub fn matmul_on(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        matmul_each(isa, &mut [(self, out)], x, n);
    }

    fn matmul_f32(&self, w: &[f32], x: &[f32], out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
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
    }

    /// Group `g` (rows 8g..8g + 8) times all `n` activation rows, four per kernel call
    /// (eight, as four pairs `xp`, on AVX-512 VNNI); `put(i, v)` takes the eight results
    /// of activation row `i`. `spread` is room for the group's Q4_1 weights spread to
    /// bytes, reused from group to group.
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn group(
        &self,
        kern: Kern,
        g: usize,
        xq: &[BlockQ8],
        nb: usize,
        n: usize,
        xp: &[BlockQ8x2],
        spread: &mut Vec<BlockQ4_1x8Spread>,
        mut put: impl FnMut(usize, &[f32; GROUP]),
    ) {
        let spreading = cfg!(target_arch = "x86_64")
            && kern == Kern::Avx2
            && n >= SPREAD_ROWS
            && matches!(self.data, Data::Q4_1(_));
        #[cfg(target_arch = "x86_64")]
        if let (true, Data::Q4_1(p)) = (spreading, &self.data) {
            // Every one of the `nb` blocks is overwritten: the buffer is only sized here
            // (zeroed once, when it first grows), not cleared per group.
            spread.resize(nb, ZERO_SPREAD);
            // SAFETY: `Kern::Avx2` is picked only where the CPU has AVX2, FMA and F16C.
            unsafe { x86::spread_q4_1x8(&p.groups[g * nb..(g + 1) * nb], spread) };
        }
        // `$call!(4, i)` for i in `$from..$to` by fours, then `$call!(3 | 2 | 1, i)` once
        // for what is left.
        macro_rules! by_fours {
            ($call:ident, $from:expr, $to:expr) => {{
                let (mut i, to) = ($from, $to);
                while i + 4 <= to {
                    $call!(4, i);
                    i += 4;
                }
                match to - i {
                    3 => $call!(3, i),
                    2 => $call!(2, i),
                    1 => $call!(1, i),
                    _ => {}
                }
            }};
        }
        macro_rules! run {
            ($n:literal, $j:expr) => {{
                let j = $j;
                let xs: [&[BlockQ8]; $n] =
                    std::array::from_fn(|k| &xq[(j + k) * nb..(j + k + 1) * nb]);
                let r: [[f32; GROUP]; $n] = match &self.data {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above; `spread` holds this group's `nb` blocks.
                    Data::Q4_1(_) if spreading => unsafe { x86::q4_1x8_spread::<$n>(spread, xs) },
                    Data::Q4_1(p) => q4_1x8_on(kern, &p.groups[g * nb..(g + 1) * nb], xs),
                    Data::Q8_0(p) => q8_0x8_on(kern, &p.groups[g * nb..(g + 1) * nb], xs),
                    Data::F32(_) => [[0.0; GROUP]; $n],
                };
                for (k, v) in r.iter().enumerate() {
                    put(j + k, v);
                }
            }};
        }
        // AVX-512 VNNI: rows in pairs ([`BlockQ8x2`]), four pairs a call (the registers
        // hold eight rows' accumulators, which share each block's unpacked weights); an
        // odd last row, or a single one, takes the one-row kernels below.
        #[cfg(not(target_arch = "x86_64"))]
        let paired = 0;
        #[cfg(target_arch = "x86_64")]
        let paired = if kern == Kern::Avx512Vnni && !xp.is_empty() {
            macro_rules! pairs {
                ($p:literal, $at:expr) => {{
                    let at = $at;
                    let xs: [&[BlockQ8x2]; $p] =
                        std::array::from_fn(|k| &xp[(at + k) * nb..(at + k + 1) * nb]);
                    // SAFETY: `Kern::Avx512Vnni` is picked only where the CPU has
                    // AVX-512F, BW and VNNI, AVX2, FMA and F16C.
                    let r: [[[f32; GROUP]; 2]; $p] = match &self.data {
                        Data::Q4_1(p) => unsafe {
                            x86::q4_1x8_vnni_pairs::<$p>(&p.groups[g * nb..(g + 1) * nb], xs)
                        },
                        Data::Q8_0(p) => unsafe {
                            x86::q8_0x8_vnni_pairs::<$p>(&p.groups[g * nb..(g + 1) * nb], xs)
                        },
                        Data::F32(_) => [[[0.0; GROUP]; 2]; $p],
                    };
                    for (k, v) in r.iter().enumerate() {
                        put(2 * (at + k), &v[0]);
                        put(2 * (at + k) + 1, &v[1]);
                    }
                }};
            }
            by_fours!(pairs, 0, n / 2);
            n / 2 * 2
        } else {
            0
        };
        by_fours!(run, paired, n);
    }

    /// Tail row `t` (row `rows / 8 · 8 + t`) · one activation row.
    fn dot(&self, avx2: bool, t: usize, x: &[BlockQ8]) -> f32 {
        let nb = x.len();
        match &self.data {
            Data::Q4_1(p) => {
                let w = &p.tail[t * nb..(t + 1) * nb];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
                    return unsafe { x86::dot_q4_1(w, x) };
                }
                let _ = avx2;
                dot_q4_1_scalar(w, x)
            }
            Data::Q8_0(p) => {
                let w = &p.tail[t * nb..(t + 1) * nb];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: as above.
                    return unsafe { x86::dot_q8_0(w, x) };
                }
                let _ = avx2;
                dot_q8_0_scalar(w, x)
            }
            Data::F32(_) => 0.0,
        }
    }
}

/// A matrix product's output, written by several tasks at once: each writes columns
/// (row groups) no other task touches.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used for disjoint writes inside one parallel call, which the buffer
// outlives.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `OutPtr`, which is `Send`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Several products of the same `n` input rows, `m.matmul_on(isa, x, n, out)` for each
/// `(m, out)`, in one parallel region and with `x` quantised once (the q, k and v
/// projections of a layer; its gate and up). Every matrix must have `x`'s row length.
pub fn matmul_each(isa: Isa, mats: &mut [(&QMatrix, &mut [f32])], x: &[f32], n: usize) {
    let Some(cols) = mats.first().map(|(m, _)| m.cols) else {
        return;
    };
    assert_eq!(x.len(), n * cols, "matmul input length");
    for (m, out) in mats.iter_mut() {
        assert_eq!(m.cols, cols, "matmul row lengths");
        assert_eq!(out.len(), n * m.rows, "matmul output length");
        if let Data::F32(w) = &m.data {
            m.matmul_f32(w, x, out);
        }
    }
    let nb = cols / QK;
    let mut xq = vec![ZERO_Q8; n * nb];
    let kern = Kern::on(isa);
    if mats.iter().any(|(m, _)| !matches!(m.data, Data::F32(_))) {
        // Rows in parallel only when there are enough to pay for it.
        let per = n.div_ceil(rayon::current_num_threads()).max(8);
        x.par_chunks(per * cols)
            .zip(xq.par_chunks_mut(per * nb))
            .for_each(|(xc, qc)| {
                for (xi, qi) in xc.chunks_exact(cols).zip(qc.chunks_exact_mut(nb)) {
                    quantize_q8_on(kern, xi, qi);
                }
            });
    }
    // Rows in pairs for the AVX-512 VNNI kernels.
    let mut xp = Vec::new();
    if kern == Kern::Avx512Vnni && n >= 2 {
        xp = vec![ZERO_Q8X2; n / 2 * nb];
        pair_rows(&xq, nb, &mut xp);
    }
    let avx2 = kern.avx2();
    {
        // Chunks of groups big enough to be worth a task, small enough to balance.
        let total: usize = mats.iter().map(|(m, _)| m.rows / GROUP).sum();
        let chunk = (total / (rayon::current_num_threads() * 8)).clamp(1, 32);
        let mut tasks: Vec<(&QMatrix, usize, usize, OutPtr)> = Vec::new();
        for (m, out) in mats.iter_mut() {
            if matches!(m.data, Data::F32(_)) {
                continue;
            }
            let groups = m.rows / GROUP;
            let ptr = OutPtr(out.as_mut_ptr());
            for g0 in (0..groups).step_by(chunk) {
                tasks.push((m, g0, groups.min(g0 + chunk), ptr));
            }
        }
        tasks
            .into_par_iter()
            .for_each_init(Vec::new, |spread, (m, g0, g1, ptr)| {
                for g in g0..g1 {
                    m.group(kern, g, &xq, nb, n, &xp, spread, |i, v| {
                        // SAFETY: `out` is n × rows (asserted above) and i < n, (g + 1)·8 ≤
                        // rows; each task writes only its own groups' columns, so no two
                        // tasks write the same element, and `out` outlives this call.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                v.as_ptr(),
                                ptr.get().add(i * m.rows + g * GROUP),
                                GROUP,
                            )
                        }
                    });
                }
            });
    }
    for (m, out) in mats.iter_mut() {
        if matches!(m.data, Data::F32(_)) {
            continue;
        }
        let rows = m.rows;
        let full = rows / GROUP * GROUP;
        // The last rows % 8 rows, one dot each.
        for r in full..rows {
            for i in 0..n {
                out[i * rows + r] = m.dot(avx2, r - full, &xq[i * nb..(i + 1) * nb]);
            }
        }
    }
}

/// [`quantize_q8`] on the given kernels: the same blocks, eight lanes at a time on AVX2.
fn quantize_q8_on(kern: Kern, x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if kern.avx2() {
        // SAFETY: `Kern::Avx2` and `Kern::Avx512Vnni` are picked only where the CPU has
        // AVX2, FMA and F16C.
        return unsafe { x86::quantize_q8(x, out) };
    }
    let _ = kern;
    quantize_q8(x, out)
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
        b.sum = sum;
    }
}

/// Eight Q4_1 rows · N activation rows, on the given kernels.
fn q4_1x8_on<const N: usize>(
    kern: Kern,
    w: &[BlockQ4_1x8],
    xs: [&[BlockQ8]; N],
) -> [[f32; GROUP]; N] {
    match kern {
        // SAFETY: `Kern::on` picks these only where the CPU has AVX-512F, BW and VNNI
        // (with AVX2, FMA and F16C), or AVX2, FMA and F16C (checked at run time).
        #[cfg(target_arch = "x86_64")]
        Kern::Avx512Vnni => unsafe { x86::q4_1x8_vnni::<N>(w, xs) },
        #[cfg(target_arch = "x86_64")]
        Kern::Avx2 => unsafe { x86::q4_1x8::<N>(w, xs) },
        _ => xs.map(|x| q4_1x8_scalar(w, x)),
    }
}

/// Eight Q8_0 rows · N activation rows, on the given kernels.
fn q8_0x8_on<const N: usize>(
    kern: Kern,
    w: &[BlockQ8_0x8],
    xs: [&[BlockQ8]; N],
) -> [[f32; GROUP]; N] {
    match kern {
        // SAFETY: as in `q4_1x8_on`.
        #[cfg(target_arch = "x86_64")]
        Kern::Avx512Vnni => unsafe { x86::q8_0x8_vnni::<N>(w, xs) },
        #[cfg(target_arch = "x86_64")]
        Kern::Avx2 => unsafe { x86::q8_0x8::<N>(w, xs) },
        _ => xs.map(|x| q8_0x8_scalar(w, x)),
    }
}

/// Eight interleaved Q4_1 rows · one activation row.
pub fn q4_1x8_scalar(w: &[BlockQ4_1x8], x: &[BlockQ8]) -> [f32; GROUP] {
    let mut out = [0f32; GROUP];
    for (b, a) in w.iter().zip(x) {
        let mut sum = [0i32; GROUP];
        for (g, q) in b.qs.chunks_exact(4 * GROUP).enumerate() {
            for (s, q) in sum.iter_mut().zip(q.chunks_exact(4)) {
                for (t, &q) in q.iter().enumerate() {
                    *s += i32::from(q & 0xf) * i32::from(a.qs[4 * g + t])
                        + i32::from(q >> 4) * i32::from(a.qs[16 + 4 * g + t]);
                }
            }
        }
        for r in 0..GROUP {
            out[r] += f16_to_f32(b.d[r]) * a.d * sum[r] as f32 + f16_to_f32(b.m[r]) * a.s;
        }
    }
    out
}

/// Eight interleaved Q8_0 rows · one activation row.
pub fn q8_0x8_scalar(w: &[BlockQ8_0x8], x: &[BlockQ8]) -> [f32; GROUP] {
    let mut out = [0f32; GROUP];
    for (b, a) in w.iter().zip(x) {
        let mut sum = [0i32; GROUP];
        for (g, q) in b.qs.chunks_exact(4 * GROUP).enumerate() {
            for (s, q) in sum.iter_mut().zip(q.chunks_exact(4)) {
                for (t, &q) in q.iter().enumerate() {
                    *s += i32::from(q) * i32::from(a.qs[4 * g + t]);
                }
            }
        }
        for r in 0..GROUP {
            out[r] += f16_to_f32(b.d[r]) * a.d * sum[r] as f32;
        }
    }
    out
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
    use super::{
        BlockQ4_1, BlockQ4_1x8, BlockQ4_1x8Spread, BlockQ8, BlockQ8_0, BlockQ8_0x8, BlockQ8x2,
    };
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight interleaved Q4_1 rows · N activation rows: lane r of each accumulator is
    /// row r. Per block, the eight products of a 32-byte load (four columns of eight rows,
    /// low and high nibbles) are summed in 16 bits (at most 8 · 2 · 15 · 127 = 30,480, so
    /// no saturation), widened once, and scaled by the eight rows' `d` times the
    /// activation's; the offsets `m · s` are one more multiply-add.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1x8<const N: usize>(w: &[BlockQ4_1x8], xs: [&[BlockQ8]; N]) -> [[f32; 8]; N] {
        let low = _mm256_set1_epi8(0x0f);
        q4_1x8_by(
            w.len(),
            xs,
            |l, g| {
                let q = _mm256_loadu_si256(w.get_unchecked(l).qs.as_ptr().add(32 * g).cast());
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                (_mm256_and_si256(q, low), hi)
            },
            |l| {
                let b = w.get_unchecked(l);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast()));
                (d, _mm256_cvtph_ps(_mm_loadu_si128(b.m.as_ptr().cast())))
            },
        )
    }

    /// [`q4_1x8`] over spread blocks: the same products and sums in the same order (so
    /// the same results), without unpacking nibbles.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1x8_spread<const N: usize>(
        w: &[BlockQ4_1x8Spread],
        xs: [&[BlockQ8]; N],
    ) -> [[f32; 8]; N] {
        q4_1x8_by(
            w.len(),
            xs,
            |l, g| {
                let q = w.get_unchecked(l).q.as_ptr().add(64 * g);
                (
                    _mm256_loadu_si256(q.cast()),
                    _mm256_loadu_si256(q.add(32).cast()),
                )
            },
            |l| {
                let b = w.get_unchecked(l);
                (_mm256_loadu_ps(b.d.as_ptr()), _mm256_loadu_ps(b.m.as_ptr()))
            },
        )
    }

    /// The body of both Q4_1 group kernels over `nb` blocks: `weights(l, g)` gives block
    /// l's values of column quad g (low nibbles, high nibbles; a byte each) and
    /// `scales(l)` its eight rows' `d` and `m`. Inlined into each kernel, so it is
    /// compiled with its instruction set.
    #[inline(always)]
    unsafe fn q4_1x8_by<const N: usize>(
        nb: usize,
        xs: [&[BlockQ8]; N],
        weights: impl Fn(usize, usize) -> (__m256i, __m256i),
        scales: impl Fn(usize) -> (__m256, __m256),
    ) -> [[f32; 8]; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let ones = _mm256_set1_epi16(1);
        for l in 0..nb {
            let mut s16 = [_mm256_setzero_si256(); N];
            for g in 0..4 {
                let (lo, hi) = weights(l, g);
                for k in 0..N {
                    let a = xs[k].get_unchecked(l).qs.as_ptr();
                    let alo = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * g).cast()));
                    let ahi = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(16 + 4 * g).cast()));
                    s16[k] = _mm256_add_epi16(
                        s16[k],
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, alo),
                            _mm256_maddubs_epi16(hi, ahi),
                        ),
                    );
                }
            }
            let (d, m) = scales(l);
            for k in 0..N {
                let a = xs[k].get_unchecked(l);
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[k], ones));
                acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a.d)), p, acc[k]);
                acc[k] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), acc[k]);
            }
        }
        let mut out = [[0f32; 8]; N];
        for k in 0..N {
            _mm256_storeu_ps(out[k].as_mut_ptr(), acc[k]);
        }
        out
    }

    /// [`super::quantize_q8`] eight lanes at a time, with the same arithmetic (the same
    /// maximum, scale, products and ties-to-even rounding), so the same blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
        let sign = _mm256_set1_ps(-0.0);
        // Bytes of the packed lanes back into order: dwords 0, 4, 1, 5, ...
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (c, b) in x.chunks_exact(32).zip(out.iter_mut()) {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(c.as_ptr().add(8 * i)));
            let abs = |v| _mm256_andnot_ps(sign, v);
            let m = _mm256_max_ps(
                _mm256_max_ps(abs(v[0]), abs(v[1])),
                _mm256_max_ps(abs(v[2]), abs(v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let r = _mm256_round_ps(
                    _mm256_mul_ps(v[i], idv),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                _mm256_cvtps_epi32(r)
            });
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), packed);
            let sum = _mm_cvtsi128_si32(sum);
            b.d = d;
            b.s = d * sum as f32;
            b.sum = sum;
        }
    }

    /// Spread Q4_1 row-group blocks to bytes and f32 scales ([`BlockQ4_1x8Spread`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn spread_q4_1x8(w: &[BlockQ4_1x8], out: &mut [BlockQ4_1x8Spread]) {
        let low = _mm256_set1_epi8(0x0f);
        for (b, o) in w.iter().zip(out.iter_mut()) {
            for g in 0..4 {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * g).cast());
                let to = o.q.as_mut_ptr().add(64 * g);
                _mm256_storeu_si256(to.cast(), _mm256_and_si256(q, low));
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                _mm256_storeu_si256(to.add(32).cast(), hi);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast()));
            _mm256_storeu_ps(o.d.as_mut_ptr(), d);
            let m = _mm256_cvtph_ps(_mm_loadu_si128(b.m.as_ptr().cast()));
            _mm256_storeu_ps(o.m.as_mut_ptr(), m);
        }
    }

    /// Eight interleaved Q8_0 rows · N activation rows, lane r of each accumulator row
    /// r. Signed by signed with the sign trick (|w| · sign(a, w)): at most 2 · 128 · 127 per
    /// 16-bit pair, widened after each load.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0x8<const N: usize>(w: &[BlockQ8_0x8], xs: [&[BlockQ8]; N]) -> [[f32; 8]; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let ones = _mm256_set1_epi16(1);
        for (l, b) in w.iter().enumerate() {
            let mut s32 = [_mm256_setzero_si256(); N];
            for g in 0..8 {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * g).cast());
                let aq = _mm256_sign_epi8(q, q);
                for k in 0..N {
                    let a = xs[k].get_unchecked(l).qs.as_ptr();
                    let x = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * g).cast()));
                    let p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(x, q));
                    s32[k] = _mm256_add_epi32(s32[k], _mm256_madd_epi16(p, ones));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast()));
            for k in 0..N {
                let a = xs[k].get_unchecked(l);
                acc[k] = _mm256_fmadd_ps(
                    _mm256_mul_ps(d, _mm256_set1_ps(a.d)),
                    _mm256_cvtepi32_ps(s32[k]),
                    acc[k],
                );
            }
        }
        let mut out = [[0f32; 8]; N];
        for k in 0..N {
            _mm256_storeu_ps(out[k].as_mut_ptr(), acc[k]);
        }
        out
    }

    /// Lane `2r` of the result is lane `r` of the first 256 bits, lane `2r + 1` lane `r` of
    /// the second: a 64-byte load of two column quads (eight rows each) rearranged so that
    /// each row's two quads are adjacent, matching a broadcast of eight activation bytes.
    #[target_feature(enable = "avx512f")]
    unsafe fn pairs(q: *const u8) -> __m512i {
        let idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
        _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(q.cast()))
    }

    /// Eight halves widened, each repeated (lanes 2r and 2r + 1 hold row r's).
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn halves_paired(h: &[u16; 8]) -> __m512 {
        let v = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast())));
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        _mm512_permutexvar_ps(idx, v)
    }

    /// Each lane pair's two halves of a row's block summed into both lanes (exact, in
    /// 32 bits): the whole block's sum, as the AVX2 kernels hold it in one lane.
    #[target_feature(enable = "avx512f")]
    unsafe fn whole(s: __m512i) -> __m512i {
        _mm512_add_epi32(s, _mm512_shuffle_epi32::<0b1011_0001>(s))
    }

    /// Row r's result from lane 2r (lanes 2r and 2r + 1 hold the same).
    #[target_feature(enable = "avx512f")]
    unsafe fn even_lanes(v: __m512) -> [f32; 8] {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm512_castps512_ps256(_mm512_permutexvar_ps(even, v)),
        );
        out
    }

    /// Eight activation bytes from `at` in every 64-bit lane: in each lane pair of
    /// [`pairs`], the first quad meets bytes 0..4 and the second bytes 4..8.
    #[target_feature(enable = "avx512f")]
    unsafe fn eight(a: &BlockQ8, at: usize) -> __m512i {
        _mm512_set1_epi64(std::ptr::read_unaligned(a.qs.as_ptr().add(at).cast()))
    }

    /// Eight interleaved Q4_1 rows · N activation rows with AVX-512 VNNI, for single rows
    /// (generation, or an odd last row: pairs take [`q4_1x8_vnni_pairs`]): per block, two
    /// 64-byte loads (each two column quads of the eight rows, see [`pairs`]) split into
    /// nibbles, and per activation row four `vpdpbusd` (unsigned nibbles times signed
    /// activation bytes, summed four at a time into 32 bits: no 16-bit step, no
    /// saturation) take the whole block. Lanes 2r and 2r + 1 hold row r's two halves,
    /// summed into both ([`whole`]); from there the floating-point steps are
    /// [`q4_1x8`]'s, in its order, so the results are the AVX2 kernel's to the bit (near
    /// ties in greedy generation go the same way on both paths).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q4_1x8_vnni<const N: usize>(
        w: &[BlockQ4_1x8],
        xs: [&[BlockQ8]; N],
    ) -> [[f32; 8]; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        let low = _mm512_set1_epi8(0x0f);
        for (l, b) in w.iter().enumerate() {
            // Columns 0..8 and 16..24 (nibbles of quads 0, 1), 8..16 and 24..32 (2, 3).
            let q0 = pairs(b.qs.as_ptr());
            let q1 = pairs(b.qs.as_ptr().add(64));
            let lo0 = _mm512_and_si512(q0, low);
            let hi0 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), low);
            let lo1 = _mm512_and_si512(q1, low);
            let hi1 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), low);
            let d = halves_paired(&b.d);
            let m = halves_paired(&b.m);
            for k in 0..N {
                let a = xs[k].get_unchecked(l);
                // Two chains of two, not one of four.
                let z = _mm512_setzero_si512();
                let s0 = _mm512_dpbusd_epi32(z, lo0, eight(a, 0));
                let s1 = _mm512_dpbusd_epi32(z, lo1, eight(a, 8));
                let s0 = _mm512_dpbusd_epi32(s0, hi0, eight(a, 16));
                let s1 = _mm512_dpbusd_epi32(s1, hi1, eight(a, 24));
                let p = _mm512_cvtepi32_ps(whole(_mm512_add_epi32(s0, s1)));
                acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(a.d)), p, acc[k]);
                acc[k] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.s), acc[k]);
            }
        }
        acc.map(|v| even_lanes(v))
    }

    /// Eight interleaved Q8_0 rows · N activation rows with AVX-512 VNNI, for single rows
    /// (pairs take [`q8_0x8_vnni_pairs`]). `vpdpbusd`
    /// takes unsigned by signed bytes, so the weights go in offset by 128 (a sign-bit
    /// flip, once per load for every activation row): Σ (w + 128) · a = Σ w · a + 128 · Σ a,
    /// and 128 · Σ a comes off in 32-bit integers (the activation block's `sum`), so the
    /// block's sum is exact and the rest is [`q8_0x8`]'s arithmetic: the same results.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q8_0x8_vnni<const N: usize>(
        w: &[BlockQ8_0x8],
        xs: [&[BlockQ8]; N],
    ) -> [[f32; 8]; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        let flip = _mm512_set1_epi8(-128);
        for (l, b) in w.iter().enumerate() {
            let p = b.qs.as_ptr().cast::<u8>();
            let q = [
                _mm512_xor_si512(pairs(p), flip),
                _mm512_xor_si512(pairs(p.add(64)), flip),
                _mm512_xor_si512(pairs(p.add(128)), flip),
                _mm512_xor_si512(pairs(p.add(192)), flip),
            ];
            let d = halves_paired(&b.d);
            for k in 0..N {
                let a = xs[k].get_unchecked(l);
                let z = _mm512_setzero_si512();
                let s0 = _mm512_dpbusd_epi32(z, q[0], eight(a, 0));
                let s1 = _mm512_dpbusd_epi32(z, q[1], eight(a, 8));
                let s0 = _mm512_dpbusd_epi32(s0, q[2], eight(a, 16));
                let s1 = _mm512_dpbusd_epi32(s1, q[3], eight(a, 24));
                // |Σ (w + 128) · a| ≤ 32 · 255 · 128: no 32-bit overflow.
                let s = _mm512_sub_epi32(
                    whole(_mm512_add_epi32(s0, s1)),
                    _mm512_set1_epi32(128 * a.sum),
                );
                acc[k] = _mm512_fmadd_ps(
                    _mm512_mul_ps(d, _mm512_set1_ps(a.d)),
                    _mm512_cvtepi32_ps(s),
                    acc[k],
                );
            }
        }
        acc.map(|v| even_lanes(v))
    }

    /// A column quad of the eight rows (32 bytes), each row's dword in two adjacent lanes:
    /// lanes 2r and 2r + 1 meet the two rows of a [`BlockQ8x2`] broadcast.
    #[target_feature(enable = "avx512f")]
    unsafe fn quad_twice(q: *const u8) -> __m512i {
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        _mm512_permutexvar_epi32(idx, _mm512_castsi256_si512(_mm256_loadu_si256(q.cast())))
    }

    /// Quad t of both rows of a pair in every 64-bit lane.
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_quad(a: &BlockQ8x2, t: usize) -> __m512i {
        _mm512_set1_epi64(std::ptr::read_unaligned(a.qs.as_ptr().add(8 * t).cast()))
    }

    /// Two f32s (one per row of a pair) alternating across the lanes.
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_f32(v: &[f32; 2]) -> __m512 {
        _mm512_castsi512_ps(_mm512_set1_epi64(std::ptr::read_unaligned(
            v.as_ptr().cast(),
        )))
    }

    /// Lanes 2r (the pair's first row) and 2r + 1 (its second) as two rows of eight.
    #[target_feature(enable = "avx512f")]
    unsafe fn unpair(v: __m512) -> [[f32; 8]; 2] {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        let v = _mm512_permutexvar_ps(idx, v);
        let mut out = [[0f32; 8]; 2];
        _mm256_storeu_ps(out[0].as_mut_ptr(), _mm512_castps512_ps256(v));
        let upper = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
        _mm256_storeu_ps(out[1].as_mut_ptr(), _mm256_castpd_ps(upper));
        out
    }

    /// Eight interleaved Q4_1 rows · P pairs of activation rows with AVX-512 VNNI. Lane 2r
    /// holds weight row r times a pair's first row, lane 2r + 1 times its second: per
    /// block the four column quads are split into nibbles once (eight vectors, each row's
    /// dword twice, see [`quad_twice`]) and each pair takes eight `vpdpbusd`, after which
    /// every lane holds its whole block's sum. From there the floating-point steps are
    /// [`q4_1x8`]'s, in its order, so the results are the AVX2 kernel's to the bit.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q4_1x8_vnni_pairs<const P: usize>(
        w: &[BlockQ4_1x8],
        xs: [&[BlockQ8x2]; P],
    ) -> [[[f32; 8]; 2]; P] {
        let mut acc = [_mm512_setzero_ps(); P];
        let low = _mm512_set1_epi8(0x0f);
        for (l, b) in w.iter().enumerate() {
            let q: [__m512i; 4] = std::array::from_fn(|g| quad_twice(b.qs.as_ptr().add(32 * g)));
            let lo = q.map(|q| _mm512_and_si512(q, low));
            let hi = q.map(|q| _mm512_and_si512(_mm512_srli_epi16(q, 4), low));
            let d = halves_paired(&b.d);
            let m = halves_paired(&b.m);
            for k in 0..P {
                let a = xs[k].get_unchecked(l);
                // Two chains of four; low nibbles meet values 4g.., high ones 16 + 4g...
                let z = _mm512_setzero_si512();
                let mut s0 = _mm512_dpbusd_epi32(z, lo[0], pair_quad(a, 0));
                let mut s1 = _mm512_dpbusd_epi32(z, lo[1], pair_quad(a, 1));
                s0 = _mm512_dpbusd_epi32(s0, lo[2], pair_quad(a, 2));
                s1 = _mm512_dpbusd_epi32(s1, lo[3], pair_quad(a, 3));
                s0 = _mm512_dpbusd_epi32(s0, hi[0], pair_quad(a, 4));
                s1 = _mm512_dpbusd_epi32(s1, hi[1], pair_quad(a, 5));
                s0 = _mm512_dpbusd_epi32(s0, hi[2], pair_quad(a, 6));
                s1 = _mm512_dpbusd_epi32(s1, hi[3], pair_quad(a, 7));
                let p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(d, pair_f32(&a.d)), p, acc[k]);
                acc[k] = _mm512_fmadd_ps(m, pair_f32(&a.s), acc[k]);
            }
        }
        acc.map(|v| unpair(v))
    }

    /// Eight interleaved Q8_0 rows · P pairs of activation rows with AVX-512 VNNI, laid
    /// out as [`q4_1x8_vnni_pairs`]; the weights go in offset by 128 (unsigned for
    /// `vpdpbusd`) and each row's 128 · Σa comes off in integers, so every lane holds its
    /// block's exact sum and the rest is [`q8_0x8`]'s arithmetic: the same results.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q8_0x8_vnni_pairs<const P: usize>(
        w: &[BlockQ8_0x8],
        xs: [&[BlockQ8x2]; P],
    ) -> [[[f32; 8]; 2]; P] {
        let mut acc = [_mm512_setzero_ps(); P];
        let flip = _mm512_set1_epi8(-128);
        for (l, b) in w.iter().enumerate() {
            let q: [__m512i; 8] = std::array::from_fn(|g| {
                _mm512_xor_si512(quad_twice(b.qs.as_ptr().cast::<u8>().add(32 * g)), flip)
            });
            let d = halves_paired(&b.d);
            for k in 0..P {
                let a = xs[k].get_unchecked(l);
                let off = _mm512_set1_epi64(std::ptr::read_unaligned(a.off.as_ptr().cast()));
                let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], pair_quad(a, 0));
                let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], pair_quad(a, 1));
                for t in (2..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, q[t], pair_quad(a, t));
                    s1 = _mm512_dpbusd_epi32(s1, q[t + 1], pair_quad(a, t + 1));
                }
                // |Σ (w + 128) · a| ≤ 32 · 255 · 127: no 32-bit overflow.
                let s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), off);
                acc[k] = _mm512_fmadd_ps(
                    _mm512_mul_ps(d, pair_f32(&a.d)),
                    _mm512_cvtepi32_ps(s),
                    acc[k],
                );
            }
        }
        acc.map(|v| unpair(v))
    }

    /// Q4_1 weights · one activation row (the tail rows outside the groups of eight).
    /// Two accumulators (even and odd blocks), so the sum is two dependency chains, not one.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut off = [0f32; 2];
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for (i, (b, a)) in w.iter().zip(x).enumerate() {
            // d and m, two halves side by side, widened at once (F16C).
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                (b as *const BlockQ4_1).cast::<i32>(),
            )));
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let q = _mm_loadu_si128(b.qs.as_ptr().cast());
            let qw = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
            let qx = _mm256_loadu_si256(a.qs.as_ptr().cast());
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qx), ones);
            let c = i % 2;
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), acc[c]);
            off[c] = m.mul_add(a.s, off[c]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + (off[0] + off[1])
    }

    /// Q8_0 weights · one activation row (two chains, as [`dot_q4_1`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 2];
        let ones = _mm256_set1_epi16(1);
        for (i, (b, a)) in w.iter().zip(x).enumerate() {
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(b.d))));
            let qw = _mm256_loadu_si256(b.qs.as_ptr().cast());
            let aw = _mm256_sign_epi8(qw, qw);
            let qx = _mm256_loadu_si256(a.qs.as_ptr().cast());
            let sx = _mm256_sign_epi8(qx, qw);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
            let c = i % 2;
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(p), acc[c]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A number in [-1, 1) from a linear congruential generator (tests' random data).
    pub(crate) fn lcg(seed: &mut u64) -> f32 {
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
        // Groups of eight and a tail, groups only, a tail only; 6, 9, 3 and 13 activation
        // rows (4 + 2, 4 + 4 + 1 or 8 + 1 on AVX-512, 3, 8 + 4 + 1).
        for (rows, n) in [(37, 6), (16, 9), (5, 3), (24, 13)] {
            products_match(rows, 96, n);
        }
    }

    fn products_match(rows: usize, cols: usize, n: usize) {
        let mut seed = 7u64;
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
            // Packing keeps every block as the file has it.
            let size = if kind == "Q4_1" { 20 } else { 34 };
            for (i, c) in bytes.chunks_exact(size).enumerate() {
                let (r, l) = (i / (cols / QK), i % (cols / QK));
                if kind == "Q4_1" {
                    let b = m.q4_1_block(r, l).unwrap();
                    assert_eq!((b.d, b.m), (le16(c, 0), le16(c, 2)), "r{r} b{l}");
                    assert_eq!(b.qs[..], c[4..], "r{r} b{l}");
                } else {
                    let b = m.q8_0_block(r, l).unwrap();
                    assert_eq!(b.d, le16(c, 0), "r{r} b{l}");
                    assert_eq!(b.qs.map(|q| q as u8)[..], c[2..], "r{r} b{l}");
                }
            }
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
                    let scalar = if kind == "Q4_1" {
                        let b: Vec<_> = (0..nb).map(|l| m.q4_1_block(r, l).unwrap()).collect();
                        dot_q4_1_scalar(&b, &xq)
                    } else {
                        let b: Vec<_> = (0..nb).map(|l| m.q8_0_block(r, l).unwrap()).collect();
                        dot_q8_0_scalar(&b, &xq)
                    };
                    assert!((scalar - exact).abs() < tol, "{kind} scalar r{r}");
                }
            }
        }
    }

    /// Products of several matrices in one region (quantised once) are each exactly the
    /// product on its own, for one and many input rows, whatever the kinds.
    #[test]
    fn products_together_equal_products_alone() {
        let mut seed = 3u64;
        let cols = 64;
        let mut bytes = |rows: usize, size: usize| -> Vec<u8> {
            (0..rows * cols / QK * size)
                .map(|i| match i % size {
                    0 => 0x00,
                    1 => 0x2c, // a half near 0.06 for d
                    2 if size == 20 => 0x00,
                    3 if size == 20 => 0xb4, // m near -0.25
                    _ => ((lcg(&mut seed) + 1.0) * 127.9) as u8,
                })
                .collect()
        };
        let a = QMatrix::from_gguf("Q4_1", 24, cols, &bytes(24, 20)).unwrap();
        let b = QMatrix::from_gguf("Q8_0", 13, cols, &bytes(13, 34)).unwrap();
        let f: Vec<u8> = (0..5 * cols)
            .flat_map(|_| lcg(&mut seed).to_le_bytes())
            .collect();
        let c = QMatrix::from_gguf("F32", 5, cols, &f).unwrap();
        for isa in Isa::all_here() {
            for n in [1, 7] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                let alone: Vec<Vec<f32>> = [&a, &b, &c]
                    .iter()
                    .map(|m| {
                        let mut o = vec![0f32; n * m.rows];
                        m.matmul_on(isa, &x, n, &mut o);
                        o
                    })
                    .collect();
                let (mut oa, mut ob, mut oc) =
                    (vec![0f32; n * 24], vec![0f32; n * 13], vec![0f32; n * 5]);
                matmul_each(
                    isa,
                    &mut [(&a, &mut oa), (&b, &mut ob), (&c, &mut oc)],
                    &x,
                    n,
                );
                assert_eq!(alone, [oa, ob, oc], "{isa:?} n={n}");
                assert!(alone.iter().flatten().any(|v| *v != 0.0));
            }
        }
    }

    /// The extremes of each block type (Q8_0 weights of -128 and 127, Q4_1 nibbles of 0
    /// and 15, activations of ±127) give the same products on every path as on the
    /// scalar one: no lane saturates or wraps.
    #[test]
    fn extreme_values_agree_on_every_path() {
        let (rows, cols, n) = (16, 128, 5);
        let mut q41 = Vec::new();
        let mut q80 = Vec::new();
        for b in 0..rows * cols / QK {
            q41.extend_from_slice(&half_bits(0.5).to_le_bytes());
            q41.extend_from_slice(&half_bits(-1.0).to_le_bytes());
            q41.extend((0..16).map(|j| if (b + j) % 3 == 0 { 0x00 } else { 0xff }));
            q80.extend_from_slice(&half_bits(0.25).to_le_bytes());
            q80.extend((0..32).map(|j| if (b + j) % 5 == 0 { 0x7f } else { 0x80 }));
        }
        // ±1 quantises to ±127 exactly.
        let x: Vec<f32> = (0..n * cols)
            .map(|i| if i % 7 < 5 { 1.0 } else { -1.0 })
            .collect();
        for (kind, bytes) in [("Q4_1", &q41), ("Q8_0", &q80)] {
            let m = QMatrix::from_gguf(kind, rows, cols, bytes).unwrap();
            let mut want = vec![0f32; n * rows];
            m.matmul_on(Isa::Portable, &x, n, &mut want);
            assert!(want.iter().all(|v| v.abs() > 100.0), "{kind}: {want:?}");
            for isa in Isa::all_here() {
                let mut got = vec![0f32; n * rows];
                m.matmul_on(isa, &x, n, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{isa:?} {kind}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The AVX-512 VNNI kernels give the AVX2 kernels' results to the bit, for one row
    /// and many (packed and spread Q4_1 on AVX2, eight rows a call on AVX-512), random and
    /// extreme blocks: both sum each block exactly in integers and then take the same
    /// floating-point steps in the same order, so greedy generation chooses alike.
    #[test]
    fn vnni_kernels_equal_avx2_kernels_to_the_bit() {
        if !(Isa::Avx512.available() && super::super::isa::vnni_here()) {
            // A CPU without AVX-512 VNNI has only the AVX2 kernels: nothing to compare.
            return;
        }
        let mut seed = 17u64;
        let (rows, cols) = (24, 256);
        for extreme in [false, true] {
            let mut q41 = Vec::new();
            let mut q80 = Vec::new();
            for b in 0..rows * cols / QK {
                let d = 0.01 + 0.008 * lcg(&mut seed);
                q41.extend_from_slice(&half_bits(d).to_le_bytes());
                q41.extend_from_slice(&half_bits(-8.3 * d).to_le_bytes());
                q41.extend((0..16).map(|j| match extreme {
                    true if (b + j) % 3 == 0 => 0x00,
                    true => 0xff,
                    false => ((lcg(&mut seed) + 1.0) * 127.9) as u8,
                }));
                q80.extend_from_slice(&half_bits(d).to_le_bytes());
                q80.extend((0..32).map(|j| match extreme {
                    true if (b + j) % 5 == 0 => 0x7f,
                    true => 0x80,
                    false => ((lcg(&mut seed) + 1.0) * 127.9) as u8,
                }));
            }
            for (kind, bytes) in [("Q4_1", &q41), ("Q8_0", &q80)] {
                let m = QMatrix::from_gguf(kind, rows, cols, bytes).unwrap();
                for n in [1, 2, 3, 4, 8, 13, 16] {
                    let x: Vec<f32> = (0..n * cols)
                        .map(|i| match extreme {
                            true if i % 7 < 5 => 1.0,
                            true => -1.0,
                            false => lcg(&mut seed) * 4.0,
                        })
                        .collect();
                    let mut want = vec![0f32; n * rows];
                    m.matmul_on(Isa::Avx2, &x, n, &mut want);
                    let mut got = vec![0f32; n * rows];
                    m.matmul_on(Isa::Avx512, &x, n, &mut got);
                    assert!(want.iter().any(|v| *v != 0.0));
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{kind} n={n} extreme={extreme}");
                }
            }
        }
    }

    /// Activations quantise to the same blocks on every path: ties round to even, an
    /// all-zero block stays zero, the largest magnitude becomes ±127.
    #[test]
    fn activations_quantise_alike_on_every_path() {
        let mut seed = 11u64;
        let mut x: Vec<f32> = (0..32 * 40).map(|_| lcg(&mut seed) * 3.0).collect();
        x[32..64].fill(0.0);
        // A block of exact halves after scaling (amax 127: id = 1), ties both ways.
        for (j, v) in x[64..96].iter_mut().enumerate() {
            *v = if j == 0 { 127.0 } else { j as f32 - 16.5 };
        }
        x[96..128].iter_mut().for_each(|v| *v *= 1e-30);
        let mut want = vec![ZERO_Q8; 40];
        quantize_q8(&x, &mut want);
        assert_eq!(want[2].qs[1], -16, "-15.5 rounds to even");
        assert_eq!(want[2].qs[2], -14, "-14.5 rounds to even");
        assert_eq!(want[1].qs, [0; 32]);
        for isa in Isa::all_here() {
            let mut got = vec![ZERO_Q8; 40];
            quantize_q8_on(Kern::on(isa), &x, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    (g.d, g.s, g.sum, g.qs),
                    (w.d, w.s, w.sum, w.qs),
                    "{isa:?} block {i}"
                );
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
