//! The inference engines against reference outputs from independent implementations:
//! all-MiniLM-L6-v2 embeddings from PyTorch + transformers, SmolLM2-135M-Instruct Q4_1
//! tokenisation and greedy generations from llama.cpp (`llama-cpp-python`). Fixtures and
//! the script that made them: `tests/fixtures/models/`, `scripts/reference/`. The model
//! files come from `scripts/fetch-models.sh` (run by `.ci/run`), into
//! `$MYCELIUM_MODELS` or `~/.cache/mycelium/models`.

use candle_core::Device;
use mycelium::worker::embed::{cosine, Embedder};
use mycelium::worker::generate::{Decode, Generator};
use mycelium::worker::isa::Isa;
use serde_json::Value;
use std::path::PathBuf;

mod common;

fn models() -> PathBuf {
    match std::env::var_os("MYCELIUM_MODELS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/mycelium/models"),
    }
}

fn model(rel: &str) -> PathBuf {
    let p = models().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn messages(p: &Value) -> Vec<(&str, &str)> {
    p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn minilm_embeddings_match_pytorch_batched_and_alone() {
    // On every kernel path this CPU has (candle's BERT on the portable one).
    for isa in Isa::all_here() {
        minilm_matches_pytorch_on(isa);
    }
}

fn minilm_matches_pytorch_on(isa: Isa) {
    let fx = fixture("minilm_reference.json");
    let emb = Embedder::load_on(&model("all-minilm-l6-v2"), &Device::Cpu, isa).unwrap();
    assert_eq!(emb.dim, 384);
    let sentences = fx["sentences"].as_array().unwrap();
    let texts: Vec<String> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect();
    // Token IDs exactly as the reference tokenised them (truncation at 256 included).
    for (s, t) in sentences.iter().zip(&texts) {
        let want: Vec<u32> = s["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(emb.token_ids(t).unwrap(), want, "token ids of {t:?}");
    }
    // All at once (padded batch) and one by one: both within 1e-4 of PyTorch.
    let batched = emb.embed(&texts, 32).unwrap();
    let alone = emb.embed(&texts, 1).unwrap();
    let mut worst = 0f32;
    for ((s, b), a) in sentences.iter().zip(&batched).zip(&alone) {
        let want = floats(&s["embedding"]);
        assert_eq!(b.len(), want.len());
        for ((x, y), z) in b.iter().zip(&want).zip(a) {
            worst = worst.max((x - y).abs()).max((z - y).abs());
        }
        assert!(cosine(b, &want) > 0.9999, "{isa:?} {:?}", s["text"]);
        let norm: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    assert!(
        worst < 1e-4,
        "{isa:?}: largest difference from PyTorch: {worst}"
    );
    // And they are not all alike: different sentences point different ways.
    assert!(cosine(&batched[0], &batched[1]) < 0.9);
}

#[test]
fn smollm_tokenizer_from_gguf_matches_llama_cpp() {
    let fx = fixture("smollm2_reference.json");
    let g = Generator::load(
        &model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Device::Cpu,
    )
    .unwrap();
    for case in fx["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids_parse_special"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(g.encode(text).unwrap(), want, "{text:?}");
    }
    for p in fx["prompts"].as_array().unwrap() {
        let user = g.chat(&messages(p));
        assert_eq!(user, p["prompt_string"].as_str().unwrap());
        let want: Vec<u32> = p["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(g.encode(&user).unwrap(), want);
    }
}

/// Our CPU llama forward pass against candle's quantized llama on the same file: the
/// logits of every prompt position agree closely and pick the same tokens.
#[test]
fn our_llama_forward_matches_candles_quantized_llama() {
    use candle_core::quantized::gguf_file;
    use candle_core::Tensor;
    use candle_transformers::models::quantized_llama::ModelWeights;
    use mycelium::worker::llama::{Cache, Llama};
    let path = model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = Generator::load(&path, &Device::Cpu).unwrap();
    let ids = g
        .encode(&g.prompt("Name three rivers in Africa and one fact about each."))
        .unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let ours = Llama::load(&ct, &mut f).unwrap();
    let mut theirs = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    // Ours: all positions in one pass.
    let mut caches = vec![Cache::new(&ours.cfg, ids.len())];
    let rows: Vec<(usize, u32)> = ids.iter().map(|&t| (0, t)).collect();
    let all = ours
        .forward(&mut caches, &rows, &vec![true; ids.len()])
        .unwrap();
    assert_eq!(all.len(), ids.len());
    let mut agree = 0;
    for (i, l) in all.iter().enumerate() {
        // candle returns the last position's logits only: feed it one token at a time.
        let input = Tensor::new(&ids[i..=i], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = theirs
            .forward(&input, i)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = l
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Two Q4_1 implementations: candle rounds activation scales to f16, we keep f32.
        assert!(diff < 2.5, "position {i}: logits differ by up to {diff}");
        if mycelium::worker::generate::argmax(l) == mycelium::worker::generate::argmax(&want) {
            agree += 1;
        }
    }
    assert!(
        agree * 10 >= ids.len() * 9,
        "only {agree} of {} positions pick the same token",
        ids.len()
    );
    // A token outside the vocabulary is refused, and the cache is left as it was.
    let len = caches[0].len;
    assert!(ours
        .forward(&mut caches, &[(0, ours.cfg.vocab as u32)], &[true])
        .is_err());
    assert_eq!(caches[0].len, len);
}

/// Prompts generated together give exactly what each gives alone, greedy and seeded.
#[test]
fn smollm_batched_generation_equals_one_at_a_time() {
    let mut g = Generator::load(
        &model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Device::Cpu,
    )
    .unwrap();
    let prompts: Vec<String> = [
        "What is the capital of France?",
        "Write one sentence about mushrooms.",
        "Count from one to five.",
        "Why is the sky blue? Answer briefly, in simple words for a child.",
        "Say hello.",
    ]
    .iter()
    .map(|u| g.prompt(u))
    .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    for decode in [
        Decode::Greedy,
        Decode::Sample {
            seed: 11,
            temperature: 0.9,
        },
    ] {
        let together = g.complete_batch(&refs, 24, decode).unwrap();
        assert_eq!(together.len(), prompts.len());
        for (p, t) in refs.iter().zip(&together) {
            let alone = g.complete(p, 24, decode).unwrap();
            assert_eq!(&alone, t, "{p:?} {decode:?}");
            assert!(!t.ids.is_empty() && t.ids.len() <= 24);
        }
    }
    // A prompt too long for the context is refused before anything runs.
    let long = "word ".repeat(g.context);
    assert!(g
        .complete_batch(&[refs[0], &long], 4, Decode::Greedy)
        .is_err());
}

#[test]
fn smollm_greedy_generation_agrees_with_llama_cpp() {
    let fx = fixture("smollm2_reference.json");
    let mut g = Generator::load(
        &model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut identical = 0;
    for p in fx["prompts"].as_array().unwrap() {
        let text = g.chat(&messages(p));
        let want = ids(&p["generated_token_ids"]);
        let got = g.complete(&text, want.len(), Decode::Greedy).unwrap();
        let same = got
            .ids
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!("{text:?}: first {same} of {} tokens identical", want.len());
        // Two Q4_1 implementations round differently, so a near tie can go the other way
        // and the texts part there; but every token llama.cpp chose must pass our
        // teacher-forced check within 0.5 logits of our own choice.
        assert_eq!(g.check(&text, &want, 0.5).unwrap(), None, "{text:?}");
        if same == want.len() {
            identical += 1;
            assert_eq!(got.text, p["generated_text"].as_str().unwrap());
        }
    }
    assert!(
        identical >= 2,
        "only {identical} generations identical to llama.cpp's"
    );
    // The check refuses an answer that is not the model's.
    let p = &fx["prompts"][0];
    let text = g.chat(&messages(p));
    let mut forged = ids(&p["generated_token_ids"]);
    forged[3] = g.encode(" purple").unwrap()[0];
    assert_eq!(g.check(&text, &forged, 0.5).unwrap(), Some(3));
    // Seeded sampling repeats itself.
    let user = p["messages"][0]["content"].as_str().unwrap();
    let sample = Decode::Sample {
        seed: 7,
        temperature: 0.8,
    };
    let a = g.generate(user, 12, sample).unwrap();
    let b = g.generate(user, 12, sample).unwrap();
    assert_eq!(a.ids, b.ids);
}

#[test]
fn a_worker_runs_embed_and_generate_tasks_with_models_it_holds() {
    use mycelium::adu::market::{Eligibility, JobKind, Limits, Offer, Task};
    use mycelium::market::{service, Event};
    use mycelium::node::Node;
    use mycelium::time::DtnTime;
    use mycelium::{wallet, worker};
    let t = tempfile::tempdir().unwrap();
    let (m, a, w) = (
        Node::init(&t.path().join("m")).unwrap(),
        Node::init(&t.path().join("a")).unwrap(),
        Node::init(&t.path().join("w")).unwrap(),
    );
    let now = DtnTime::now();
    for n in [&m, &a, &w] {
        n.set_market(&m.node_id()).unwrap();
    }
    let carry = |from: &Node, to: &Node| common::market::carry(from, to, now);
    let a_id = a.node_id().to_string();
    service::with_engine(&m, now, false, |e| e.grant(&a_id, 100, "g")).unwrap();
    carry(&m, &a);
    let bert = worker::models::add(&w.home, &model("all-minilm-l6-v2"), Some("minilm")).unwrap();
    let llm = worker::models::add(
        &w.home,
        &model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        None,
    )
    .unwrap();
    assert_eq!(worker::models::list(&w.home).unwrap().len(), 2);
    let offer = Offer {
        kinds: vec![JobKind::Embed, JobKind::Generate],
        models: vec![
            serde_bytes::ByteBuf::from(bert.hash.to_vec()),
            serde_bytes::ByteBuf::from(llm.hash.to_vec()),
        ],
        capacity: 4,
    };
    worker::offer(&w, &offer, now, false).unwrap();
    carry(&w, &m);
    let task = |job, model: [u8; 32], input: &str| Task {
        job,
        model,
        input: input.as_bytes().to_vec(),
        limits: Limits {
            max_tokens: 8,
            max_ms: 600_000,
        },
        reward: 1,
        deadline: now.0 + 3_600_000,
        redundancy: 1,
        who: Eligibility::Anyone,
    };
    let fx = fixture("minilm_reference.json");
    let texts: Vec<&str> = fx["sentences"].as_array().unwrap()[..3]
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let e1 = wallet::submit_task(
        &a,
        &task(JobKind::Embed, bert.hash, &texts.join("\n")),
        now,
        false,
    )
    .unwrap();
    let e2 =
        wallet::submit_task(&a, &task(JobKind::Embed, bert.hash, texts[0]), now, false).unwrap();
    let g1 = wallet::submit_task(
        &a,
        &task(
            JobKind::Generate,
            llm.hash,
            "What is the capital of France?",
        ),
        now,
        false,
    )
    .unwrap();
    let missing = wallet::submit_task(&a, &task(JobKind::Embed, [7; 32], "x"), now, false).unwrap();
    carry(&a, &m);
    service::process(&m, now, false, &mut mycelium::worker::judge(&m.home)).unwrap();
    carry(&m, &w);
    let r = worker::run_once(&w, now, false).unwrap();
    assert_eq!(r.ran.len(), 3, "{:?}", r.ran);
    assert!(r.ran.iter().all(|x| x.failed.is_none()), "{:?}", r.ran);
    carry(&w, &m);
    let ev = service::process(&m, now, false, &mut mycelium::worker::judge(&m.home))
        .unwrap()
        .events;
    for t in [e1, e2, g1] {
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Accepted { task, .. } if *task == t)),
            "{ev:?}"
        );
    }
    // The task for a model nobody offered is never assigned.
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::Assigned { task, .. } if *task == missing)));
    carry(&m, &a);
    let verdict = |id: [u8; 32]| {
        a.store
            .of_kind("verdict")
            .unwrap()
            .into_iter()
            .map(|k| a.store.get(&k).unwrap().unwrap())
            .map(|vb| mycelium::adu::market::decode_verdict(vb.bundle().payload()).unwrap())
            .find(|v| v.task == id)
            .unwrap()
    };
    let vectors = worker::decode_vectors(&verdict(e1).output).unwrap();
    assert_eq!(vectors.len(), 3);
    for (v, s) in vectors.iter().zip(fx["sentences"].as_array().unwrap()) {
        assert!(cosine(v, &floats(&s["embedding"])) > 0.9999);
    }
    let gen = worker::decode_generation(&verdict(g1).output).unwrap();
    assert_eq!(gen.tokens.len(), 8);
    // The first 7 tokens are the ones llama.cpp chose for this prompt (a 135M model's
    // idea of France); at the 8th the two Q4_1 implementations part on a near tie.
    let want: Vec<u64> = fixture("smollm2_reference.json")["prompts"][1]["generated_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(7)
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        gen.tokens[..7]
            .iter()
            .map(|t| u64::from(*t))
            .collect::<Vec<_>>(),
        want
    );
}

#[test]
fn a_model_travels_as_bundles_and_is_put_together_at_the_other_end() {
    use mycelium::node::Node;
    use mycelium::time::DtnTime;
    use mycelium::worker::models;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (
        Node::init(&t.path().join("a")).unwrap(),
        Node::init(&t.path().join("b")).unwrap(),
    );
    let now = DtnTime::now();
    let held = models::add(&a.home, &model("all-minilm-l6-v2"), Some("minilm")).unwrap();
    let n = models::publish(&a, &held, now).unwrap();
    // A manifest and the 87 MiB of weights in 4 MiB chunks, plus the small files.
    assert!(n > 20, "{n} bundles");
    let keys: Vec<[u8; 32]> = a
        .store
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    let blob_keys: Vec<[u8; 32]> = a.store.of_kind("blob").unwrap();
    // Everything but one chunk arrives: the model waits, incomplete.
    for k in &keys {
        if *k != blob_keys[3] {
            b.receive(&a.store.get_raw(k).unwrap().unwrap(), now)
                .unwrap();
        }
    }
    let a1 = models::assemble(&b).unwrap();
    assert!(a1.added.is_empty() && a1.failed.is_empty());
    assert_eq!(a1.waiting.len(), 1);
    assert_eq!(a1.waiting[0].have + 1, a1.waiting[0].need);
    // Someone else's chunk under the same coordinates does not count.
    let c = Node::init(&t.path().join("c")).unwrap();
    let missing = a.store.get(&blob_keys[3]).unwrap().unwrap();
    let mut blob = mycelium::adu::model::decode_blob(missing.bundle().payload()).unwrap();
    blob.data = vec![0; blob.data.len()];
    let forged = c
        .compose(
            &[(None, mycelium::adu::model::encode_blob(&blob), 3_600_000)],
            now,
            false,
        )
        .unwrap();
    b.receive(forged.bundles[0].raw(), now).unwrap();
    assert!(models::assemble(&b).unwrap().added.is_empty());
    // The last chunk arrives: the model is put together, checked, and held by hash.
    b.receive(missing.raw(), now).unwrap();
    let a2 = models::assemble(&b).unwrap();
    assert!(a2.waiting.is_empty() && a2.failed.is_empty());
    assert_eq!(a2.added.len(), 1);
    assert_eq!(a2.added[0].hash, held.hash);
    let found = models::find(&b.home, &held.hash).unwrap().unwrap();
    let emb = Embedder::load(&found.dir, &Device::Cpu).unwrap();
    assert_eq!(emb.dim, 384);
}

/// A marketplace that holds the model re-scores `generate` answers: an answer that parts
/// from ours on a near tie (llama.cpp's greedy tokens) is paid with ours, a forged one is
/// refused, though all three outputs differ.
#[test]
fn a_marketplace_holding_the_model_pays_valid_generations_and_refuses_a_forged_one() {
    use mycelium::adu::market::{Eligibility, JobKind, Limits, Offer, Task};
    use mycelium::market::{service, Event};
    use mycelium::node::Node;
    use mycelium::time::DtnTime;
    use mycelium::{wallet, worker};
    let t = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = ["m", "a", "w1", "w2", "w3"]
        .iter()
        .map(|n| Node::init(&t.path().join(n)).unwrap())
        .collect();
    let (mk, a, ws) = (&nodes[0], &nodes[1], &nodes[2..]);
    let now = DtnTime::now();
    for n in &nodes {
        n.set_market(&mk.node_id()).unwrap();
    }
    let carry = |from: &Node, to: &Node| common::market::carry(from, to, now);
    let gguf = model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let llm = worker::models::add(&ws[0].home, &gguf, None).unwrap();
    worker::models::add(&mk.home, &gguf, None).unwrap();
    let a_id = a.node_id().to_string();
    service::with_engine(mk, now, false, |e| e.grant(&a_id, 100, "g")).unwrap();
    carry(mk, a);
    for w in ws {
        let offer = Offer {
            kinds: vec![JobKind::Generate],
            models: vec![serde_bytes::ByteBuf::from(llm.hash.to_vec())],
            capacity: 1,
        };
        worker::offer(w, &offer, now, false).unwrap();
        carry(w, mk);
    }
    let fx = fixture("smollm2_reference.json");
    let p = &fx["prompts"][1];
    let user = p["messages"][0]["content"].as_str().unwrap();
    let theirs: Vec<u32> = p["generated_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let task = Task {
        job: JobKind::Generate,
        model: llm.hash,
        input: user.as_bytes().to_vec(),
        limits: Limits {
            max_tokens: theirs.len() as u32,
            max_ms: 600_000,
        },
        reward: 5,
        deadline: now.0 + 3_600_000,
        redundancy: 3,
        who: Eligibility::Anyone,
    };
    let id = wallet::submit_task(a, &task, now, false).unwrap();
    carry(a, mk);
    service::process(mk, now, false, &mut mycelium::worker::judge(&mk.home)).unwrap();
    for w in ws {
        carry(mk, w);
    }
    // w1 runs the model; w2 answers with llama.cpp's tokens; w3 forges one token.
    let r = worker::run_once(&ws[0], now, false).unwrap();
    assert_eq!(r.ran.len(), 1);
    let g = Generator::load(&gguf, &Device::Cpu).unwrap();
    let answer = |tokens: Vec<u32>| {
        let text = g.text_of(&tokens).unwrap();
        let mut out = Vec::new();
        ciborium::into_writer(&worker::Generation { text, tokens }, &mut out).unwrap();
        out
    };
    let mut forged = theirs.clone();
    forged[3] = g.encode(" purple").unwrap()[0];
    for (w, out) in [(&ws[1], answer(theirs)), (&ws[2], answer(forged))] {
        common::market::answer_with(w, mk, &out, now);
    }
    for w in ws {
        carry(w, mk);
    }
    let ev = service::process(mk, now, false, &mut mycelium::worker::judge(&mk.home))
        .unwrap()
        .events;
    let ids: Vec<String> = ws.iter().map(|w| w.node_id().to_string()).collect();
    let agreeing = ev
        .iter()
        .find_map(|e| match e {
            Event::Accepted { task, agreeing, .. } if *task == id => Some(agreeing.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no verdict: {ev:?}"));
    assert!(
        agreeing.contains(&ids[0]) && agreeing.contains(&ids[1]),
        "{ev:?}"
    );
    assert!(!agreeing.contains(&ids[2]));
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Disagreed { task, worker } if *task == id && *worker == ids[2])
        ),
        "{ev:?}"
    );
}
