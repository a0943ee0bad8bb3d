//! The quantised products of the CPU llama engine on every kernel path this CPU has, over
//! random weights in SmolLM2-135M-Instruct's shapes (30 layers of Q4_1 q, k, v, o, gate,
//! up and down; the 49,152-row Q8_0 output head), so no model file is needed and any
//! machine a worker may have can be measured: all of one forward pass's products for one
//! activation row (decoding a token) and for 64 (a prompt, or the marketplace's
//! teacher-forced check of a 64-token answer). Each figure is the median of several timed
//! runs after warm-up; each path's speed is also given relative to AVX2 in the same run.
//! Run: `cargo bench --bench kernels` (`RAYON_NUM_THREADS=2` to match two cores;
//! `KERNELS_PORTABLE=1` adds the portable loops, which take seconds a pass).

use mycelium::worker::isa::Isa;
use mycelium::worker::quant::{matmul_each, Kern, QMatrix};
#[path = "common/timing.rs"]
mod timing;
use timing::median;

const DIM: usize = 576;
const KV: usize = 192;
const FF: usize = 1536;
const LAYERS: usize = 30;
const VOCAB: usize = 49_152;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// A random matrix of GGUF blocks: halves near 0.01 for the scales, -0.1 for Q4_1's
/// offsets, random quants.
fn matrix(kind: &str, rows: usize, cols: usize, seed: &mut u64) -> QMatrix {
    let size = if kind == "Q4_1" { 20 } else { 34 };
    let bytes: Vec<u8> = (0..rows * cols / 32 * size)
        .map(|i| match (i % size, size) {
            (0, _) => (lcg(seed) & 0xff) as u8,
            (1, _) => 0x21,
            (2, 20) => (lcg(seed) & 0xff) as u8,
            (3, 20) => 0xae,
            _ => (lcg(seed) & 0xff) as u8,
        })
        .collect();
    QMatrix::from_gguf(kind, rows, cols, &bytes).expect("random matrix")
}

struct Layer {
    q: QMatrix,
    k: QMatrix,
    v: QMatrix,
    o: QMatrix,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// Every product of one forward pass over `n` rows, grouped as the engine groups them.
fn forward(isa: Isa, layers: &[Layer], head: &QMatrix, x: &[f32], n: usize, buf: &mut Bufs) {
    for l in layers {
        matmul_each(
            isa,
            &mut [(&l.q, &mut buf.q), (&l.k, &mut buf.k), (&l.v, &mut buf.v)],
            x,
            n,
        );
        l.o.matmul_on(isa, &buf.q, n, &mut buf.o);
        matmul_each(isa, &mut [(&l.gate, &mut buf.g), (&l.up, &mut buf.u)], x, n);
        l.down.matmul_on(isa, &buf.g, n, &mut buf.o);
    }
    head.matmul_on(isa, &x[(n - 1) * DIM..], 1, &mut buf.logits);
}

struct Bufs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    logits: Vec<f32>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut seed = 5u64;
    let layers: Vec<Layer> = (0..LAYERS)
        .map(|_| Layer {
            q: matrix("Q4_1", DIM, DIM, &mut seed),
            k: matrix("Q4_1", KV, DIM, &mut seed),
            v: matrix("Q4_1", KV, DIM, &mut seed),
            o: matrix("Q4_1", DIM, DIM, &mut seed),
            gate: matrix("Q4_1", FF, DIM, &mut seed),
            up: matrix("Q4_1", FF, DIM, &mut seed),
            down: matrix("Q4_1", DIM, FF, &mut seed),
        })
        .collect();
    let head = matrix("Q8_0", VOCAB, DIM, &mut seed);
    let threads = rayon::current_num_threads();
    println!(
        "# quantised products of a SmolLM2-135M forward pass (random weights), {threads} threads"
    );
    println!(
        "# paths here: {:?}",
        Isa::all_here()
            .iter()
            .map(|i| Kern::on(*i).name())
            .collect::<Vec<_>>()
    );
    println!("| rows | kernels | ms per pass | rows/s | vs avx2 |");
    println!("|---:|---|---:|---:|---:|");
    // The portable loops take seconds a pass: only when asked for.
    let portable = std::env::var_os("KERNELS_PORTABLE").is_some();
    for n in [1usize, 64] {
        let x: Vec<f32> = (0..n * DIM)
            .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut buf = Bufs {
            q: vec![0.0; n * DIM],
            k: vec![0.0; n * KV],
            v: vec![0.0; n * KV],
            o: vec![0.0; n * DIM],
            g: vec![0.0; n * FF],
            u: vec![0.0; n * FF],
            logits: vec![0.0; VOCAB],
        };
        let (warm, runs) = if n == 1 { (5, 31) } else { (2, 9) };
        let mut avx2 = None;
        let mut seen = Vec::new();
        for isa in Isa::all_here() {
            let kern = Kern::on(isa);
            if seen.contains(&kern) || (kern == Kern::Portable && !portable) {
                continue;
            }
            seen.push(kern);
            let s = median(warm, runs, || forward(isa, &layers, &head, &x, n, &mut buf));
            if kern == Kern::Avx2 {
                avx2 = Some(s);
            }
            let rel = avx2.map_or("".to_string(), |a| format!("{:.2}×", a / s));
            println!(
                "| {n} | {} | {:.2} | {:.0} | {rel} |",
                kern.name(),
                s * 1e3,
                n as f64 / s
            );
        }
    }
}
