//! Inference throughput on this machine's CPU, beside the reference implementations
//! measured in the same run: all-MiniLM-L6-v2 sentences/s (batch 1 and 32, inputs of
//! exactly 16 and 128 tokens) against PyTorch, and SmolLM2-135M-Instruct Q4_1 tokens/s
//! (64 new tokens, greedy; one prompt, 8 prompts one after another, 8 prompts batched)
//! against llama.cpp, and the time of the marketplace's teacher-forced check of a
//! 64-token answer. Each figure is
//! the median of several timed runs after warm-up. The reference half runs
//! `scripts/reference/bench_reference.py --json` with `$REF_PYTHON` (default
//! `/work/venv-ref/bin/python`, else `python3`); see `scripts/reference/README.md`.
//! Models come from `scripts/fetch-models.sh`.
//! Run: `cargo bench --bench engines`. `ENGINES_ONLY=check` runs only generate batch 1 and
//! the check (for profiling the multi-row products), `ENGINES_ONLY=embed` only the embeds.

use candle_core::Device;
use mycelium::worker::embed::Embedder;
use mycelium::worker::generate::{Decode, Generator};
use mycelium::worker::models::fetched_dir;
#[path = "common/timing.rs"]
mod timing;
use timing::median;

const WORDS: &str = "the of and to in is was for on with as by at from that this it be are or an which have not had one were all their but there can more when out some time so what up about into other than only new may its over also many first these people would two like such been water tree root forest soil fungus network light sun rain river stone field city road house book music story night day year world life hand part place case week company system program question work government number point home group problem fact";

const PROMPTS8: [&str; 8] = [
    "Tell me a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle for a ten year old.",
    "What are three tips for learning a new language?",
    "Write a short poem about mushrooms in the forest.",
    "Why do leaves change colour in autumn?",
    "Give me a recipe idea for a quick vegetarian dinner.",
    "How does a computer store numbers in memory?",
];
const NEW_TOKENS: usize = 64;

/// A sentence of common words that tokenises to exactly `n` tokens ([CLS], [SEP] included).
fn sentence(e: &Embedder, seed: &mut u64, n: usize) -> String {
    let words: Vec<&str> = WORDS.split(' ').collect();
    let mut pick = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        words[(*seed >> 33) as usize % words.len()]
    };
    let mut s: Vec<&str> = Vec::new();
    loop {
        let len = e.token_ids(&s.join(" ")).map(|v| v.len()).unwrap_or(0);
        if len == n {
            return s.join(" ");
        }
        if len < n {
            s.push(pick());
        } else {
            s.pop();
            s.push("the");
            if e.token_ids(&s.join(" ")).map(|v| v.len()).unwrap_or(0) > n {
                s.pop();
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let models = fetched_dir();
    let cpu = Device::Cpu;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let isa = mycelium::worker::isa::chosen();
    println!(
        "# Mycelium engines (CPU, {threads} threads, kernels: {}, quantised products: {}; MYCELIUM_KERNELS=avx512|avx2|portable forces one)",
        isa.name(),
        mycelium::worker::quant::Kern::on(isa).name()
    );
    let mut ours: Vec<(String, f64)> = Vec::new();
    let only = std::env::var("ENGINES_ONLY").ok();
    let emb = Embedder::load(&models.join("all-minilm-l6-v2"), &cpu)
        .expect("MiniLM: run scripts/fetch-models.sh");
    let mut seed = 1u64;
    for n in [16usize, 128] {
        if only.as_deref().is_some_and(|o| o != "embed") {
            break;
        }
        let texts: Vec<String> = (0..32).map(|_| sentence(&emb, &mut seed, n)).collect();
        for batch in [1usize, 32] {
            let inputs = texts[..batch].to_vec();
            let (warm, runs) = if batch == 1 { (5, 20) } else { (2, 7) };
            let s = median(warm, runs, || {
                emb.embed(&inputs, batch).expect("embed");
            });
            let v = batch as f64 / s;
            println!("  embed  MiniLM   batch {batch:2} × {n:3} tokens  {v:9.1} sentences/s");
            ours.push((format!("embed batch {batch} x {n} tokens"), v));
        }
    }
    if only.as_deref() == Some("embed") {
        return;
    }
    let mut gen = Generator::load(
        &models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &cpu,
    )
    .expect("SmolLM2: run scripts/fetch-models.sh");
    gen.stop_ids.clear(); // exactly NEW_TOKENS every time, as the reference
    let one = gen.prompt(PROMPTS8[0]);
    let s = median(1, 3, || {
        gen.complete(&one, NEW_TOKENS, Decode::Greedy)
            .expect("generate");
    });
    let v = NEW_TOKENS as f64 / s;
    println!("  generate SmolLM2 batch 1 ({NEW_TOKENS} new tokens)         {v:9.1} tokens/s");
    ours.push(("generate batch 1".into(), v));
    // The marketplace's check of a claimed answer: one teacher-forced pass.
    let claimed = gen
        .complete(&one, NEW_TOKENS, Decode::Greedy)
        .expect("generate")
        .ids;
    let c = median(1, 5, || {
        let r = gen.check(&one, &claimed, 0.5).expect("check");
        assert_eq!(r, None, "our own answer must pass");
    });
    println!(
        "  check SmolLM2 {NEW_TOKENS}-token answer, one pass           {:9.1} ms ({:.1}x faster than generating it)",
        c * 1e3,
        s / c
    );
    if only.is_some() {
        return;
    }
    let all: Vec<String> = PROMPTS8.iter().map(|p| gen.prompt(p)).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let s = median(0, 3, || {
        for p in &refs {
            gen.complete(p, NEW_TOKENS, Decode::Greedy)
                .expect("generate");
        }
    });
    let v = (8 * NEW_TOKENS) as f64 / s;
    println!("  generate SmolLM2 8 prompts, one after another          {v:9.1} tokens/s");
    ours.push(("generate 8 sequential".into(), v));
    let s = median(1, 3, || {
        gen.complete_batch(&refs, NEW_TOKENS, Decode::Greedy)
            .expect("generate");
    });
    let v = (8 * NEW_TOKENS) as f64 / s;
    println!("  generate SmolLM2 8 prompts, batched                    {v:9.1} tokens/s");
    ours.push(("generate batch 8".into(), v));

    // The reference, measured now, on the same machine.
    let py = std::env::var("REF_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new("/work/venv-ref/bin/python").exists() {
            "/work/venv-ref/bin/python".into()
        } else {
            "python3".into()
        }
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/reference/bench_reference.py"
    );
    let out = std::process::Command::new(&py)
        .arg(script)
        .arg("--json")
        .arg("--models")
        .arg(&models)
        .stderr(std::process::Stdio::inherit())
        .output();
    let reference: serde_json::Value = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_default(),
        Ok(o) => {
            println!("# reference not measured: {py} exited with {}", o.status);
            return;
        }
        Err(e) => {
            println!("# reference not measured: {py}: {e}");
            return;
        }
    };
    println!("# reference, same run: {}", reference["env"]);
    let rows = reference["results"].as_array().cloned().unwrap_or_default();
    let find = |workload: &str, batch: u64, tokens: Option<u64>| -> Option<f64> {
        rows.iter()
            .find(|r| {
                r["workload"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(workload))
                    && r["batch"].as_u64() == Some(batch)
                    && tokens.is_none_or(|t| r["tokens_per_input"].as_u64() == Some(t))
            })
            .and_then(|r| r["value"].as_f64())
    };
    let pairs = [
        (
            "embed batch 1 x 16 tokens",
            find("embed", 1, Some(16)),
            "PyTorch",
        ),
        (
            "embed batch 32 x 16 tokens",
            find("embed", 32, Some(16)),
            "PyTorch",
        ),
        (
            "embed batch 1 x 128 tokens",
            find("embed", 1, Some(128)),
            "PyTorch",
        ),
        (
            "embed batch 32 x 128 tokens",
            find("embed", 32, Some(128)),
            "PyTorch",
        ),
        (
            "generate batch 1",
            find("generate greedy 64 new tokens: batch 1", 1, None),
            "llama.cpp",
        ),
        (
            "generate 8 sequential",
            find(
                "generate greedy 64 new tokens: 8 prompts one after another",
                8,
                None,
            ),
            "llama.cpp, 8 sequential",
        ),
        (
            "generate batch 8",
            find("generate greedy 64 new tokens: batch 8", 8, None),
            "llama.cpp, batched",
        ),
    ];
    println!(
        "{:<30} {:>12} {:>12}  {:>6}  reference",
        "workload", "ours", "reference", "ratio"
    );
    for (name, theirs, who) in pairs {
        let mine = ours
            .iter()
            .find(|o| o.0 == name)
            .map(|o| o.1)
            .unwrap_or(0.0);
        match theirs {
            Some(t) => println!("{name:<30} {mine:12.1} {t:12.1}  {:6.2}  {who}", mine / t),
            None => println!("{name:<30} {mine:12.1} {:>12}  {:>6}  {who}", "-", "-"),
        }
    }
}
