#!/usr/bin/env python3
"""Reference throughput on this CPU, to put beside Mycelium's own engines in the same run.

* all-MiniLM-L6-v2 (PyTorch CPU + transformers BertModel, the full embed path: tokenise,
  forward, mean pooling, L2 normalise), torch.set_num_threads(cores), inference mode:
  sentences/s at batch 1 and batch 32, inputs of exactly 16 and 128 tokens ([CLS] and [SEP]
  included).
* SmolLM2-135M-Instruct Q4_1 (llama.cpp via llama-cpp-python, n_threads = cores), greedy,
  64 new tokens per sequence (EOS ignored, so every run makes exactly 64):
    - batch 1: one chat prompt;
    - batch 8: 8 different chat prompts decoded together in one llama.cpp context
      (llama_batch with 8 sequence ids: one llama_decode per step for all 8), through
      llama-cpp-python's low-level bindings, since its high-level API has no batched
      generation;
    - for comparison, the same 8 prompts generated one after the other (8 sequential
      high-level generations), aggregate tokens/s.
  Reported: decode tokens/s (new tokens / time after the prompt is in), and end-to-end
  tokens/s (new tokens / time including the prompt's prefill).

Each figure is the median of several timed runs after warm-up runs. The share of CPU time
that other processes took during the run is printed too (from /proc/stat): another process
using the cores (a cargo build) skews everything, llama.cpp's spinning thread pool most of
all.

Usage: bench_reference.py [--json] [--models DIR] [--quick]
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

# everything is loaded from local files; never reach for a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_MODELS = Path(os.environ.get("MYCELIUM_MODELS", Path.home() / ".cache/mycelium/models"))
MINILM_DIR = "all-minilm-l6-v2"
SMOL_GGUF = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 64

WORDS = (
    "the of and to in is was for on with as by at from that this it be are or an which have "
    "not had one were all their but there can more when out some time so what up about into "
    "other than only new may its over also many first these people would two like such been "
    "water tree root forest soil fungus network light sun rain river stone field city road "
    "house book music story night day year world life hand part place case week company "
    "system program question work government number point home group problem fact"
).split()

PROMPTS8 = [
    "Tell me a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle for a ten year old.",
    "What are three tips for learning a new language?",
    "Write a short poem about mushrooms in the forest.",
    "Why do leaves change colour in autumn?",
    "Give me a recipe idea for a quick vegetarian dinner.",
    "How does a computer store numbers in memory?",
]


def median_time(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def _busy_and_own():
    """(CPU seconds all processes spent busy so far, CPU seconds this process spent)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
def bench_minilm(models, cores, quick, log):
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(cores)
    d = models / MINILM_DIR
    tok = AutoTokenizer.from_pretrained(str(d))
    model = BertModel.from_pretrained(str(d), add_pooling_layer=False).eval()

    def sentence(rng, n_tokens):
        """A random sentence of common words that tokenises to exactly n_tokens."""
        words = []
        while True:
            n = len(tok(" ".join(words))["input_ids"]) if words else 2
            if n == n_tokens:
                return " ".join(words)
            if n < n_tokens:
                words.append(rng.choice(WORDS))
            else:
                words.pop()
                # the popped word may have been several pieces: refill with a one-piece word
                words.append("the")
                if len(tok(" ".join(words))["input_ids"]) > n_tokens:
                    words.pop()

    def embed(batch):
        enc = tok(batch, max_length=256, truncation=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=1)

    rows = []
    rng = random.Random(0)
    for n_tokens in (16, 128):
        texts = [sentence(rng, n_tokens) for _ in range(32)]
        assert all(len(tok(t)["input_ids"]) == n_tokens for t in texts)
        for batch in (1, 32):
            inputs = texts[:batch]
            if batch == 1:
                warm, runs = (2, 5) if quick else (5, 20)
            else:
                warm, runs = (1, 3) if quick else (2, 7)
            med, ts = median_time(lambda: embed(inputs), warm, runs)
            rows.append({
                "engine": "pytorch-cpu",
                "model": "all-MiniLM-L6-v2",
                "workload": "embed",
                "batch": batch,
                "tokens_per_input": n_tokens,
                "metric": "sentences/s",
                "value": batch / med,
                "median_s_per_batch": med,
                "runs": len(ts),
            })
            log(f"  minilm batch {batch:2d} x {n_tokens:3d} tokens: {batch / med:9.1f} sentences/s")
    return rows, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------
def bench_smollm2(models, cores, quick, log):
    import ctypes

    import llama_cpp
    import numpy as np

    path = models / SMOL_GGUF
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=cores,
                          n_threads_batch=cores, verbose=False)
    n_vocab = llm.n_vocab()

    def chat(text):
        return llm.tokenize(
            f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True
        )

    prompts = [chat(p) for p in PROMPTS8]
    rows = []

    # ---- batch 1 and "8 sequential": the high-level API, greedy via top_k=1 / temp 0
    def gen_one(ids):
        llm.reset()
        t0 = time.perf_counter()
        t_first = None
        n = 0
        for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            n += 1
            if n == 1:
                t_first = time.perf_counter()
            if n == NEW_TOKENS:
                break
        t_end = time.perf_counter()
        return t_end - t0, t_end - t_first

    warm, runs = (1, 2) if quick else (2, 5)
    for _ in range(warm):
        gen_one(prompts[0])
    tot, dec = zip(*[gen_one(prompts[0]) for _ in range(runs)])
    # decode excludes the prompt's prefill and the first token it yields
    rows.append(_gen_row("batch 1", 1, len(prompts[0]), statistics.median(tot), statistics.median(dec), runs))
    log(f"  smollm2 batch 1: {rows[-1]['decode_tokens_per_s']:.1f} tok/s decode, {rows[-1]['value']:.1f} end-to-end")

    def seq8():
        return [gen_one(p) for p in prompts]

    seq_runs = 1 if quick else 3
    res = [seq8() for _ in range(seq_runs)]
    tot = statistics.median(sum(r[0] for r in rr) for rr in res)
    dec = statistics.median(sum(r[1] for r in rr) for rr in res)
    rows.append(_gen_row("8 prompts one after another", 8, sum(map(len, prompts)) / 8, tot, dec, seq_runs))
    log(f"  smollm2 8 sequential: {rows[-1]['decode_tokens_per_s']:.1f} tok/s decode, {rows[-1]['value']:.1f} end-to-end")

    # ---- real batch 8: one context, 8 sequences, one llama_decode per step
    n_seq = len(prompts)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 8 * 256
    cparams.n_batch = 512
    cparams.n_ubatch = 512
    cparams.n_seq_max = n_seq
    cparams.n_threads = cores
    cparams.n_threads_batch = cores
    cparams.no_perf = True
    # as the high-level Llama(flash_attn=False) above; the low-level default (AUTO) turns
    # flash attention on, which moves logits by up to ~1 and flips greedy near-ties
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(llm._model.model, cparams)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    total_prompt = sum(map(len, prompts))
    batch = llama_cpp.llama_batch_init(max(total_prompt, n_seq), 0, 1)

    def fill(entries):
        """entries: (token, pos, seq, want_logits)"""
        batch.n_tokens = len(entries)
        for i, (t, p, s, want) in enumerate(entries):
            batch.token[i] = t
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = want

    def argmax_at(i):
        ptr = llama_cpp.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def gen_batch8():
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        entries, last_idx = [], []
        for s, ids in enumerate(prompts):
            for p, t in enumerate(ids):
                entries.append((t, p, s, p == len(ids) - 1))
            last_idx.append(len(entries) - 1)
        fill(entries)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode (prefill) failed")
        nxt = [argmax_at(i) for i in last_idx]
        out = [[t] for t in nxt]
        t_first = time.perf_counter()
        pos = [len(p) for p in prompts]
        for _ in range(NEW_TOKENS - 1):
            fill([(nxt[s], pos[s], s, True) for s in range(n_seq)])
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            nxt = [argmax_at(s) for s in range(n_seq)]
            for s in range(n_seq):
                out[s].append(nxt[s])
                pos[s] += 1
        t_end = time.perf_counter()
        return t_end - t0, t_end - t_first, out

    for _ in range(1 if quick else 2):
        _, _, out_b = gen_batch8()
    res = [gen_batch8() for _ in range(2 if quick else 5)]
    rows.append(_gen_row("batch 8 (8 sequences, batched llama_decode)", 8, total_prompt / 8,
                         statistics.median(r[0] for r in res), statistics.median(r[1] for r in res), len(res)))
    log(f"  smollm2 batch 8: {rows[-1]['decode_tokens_per_s']:.1f} tok/s decode, {rows[-1]['value']:.1f} end-to-end")

    # sanity: batched greedy should reproduce the sequential greedy tokens (mostly; the
    # batched matmuls may flip a near-tie)
    llm.reset()
    same = 0
    diverge = []
    for s, ids in enumerate(prompts):
        seq = []
        for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            seq.append(t)
            if len(seq) == NEW_TOKENS:
                break
        same += seq == out_b[s]
        diverge.append(next((i for i, (x, y) in enumerate(zip(seq, out_b[s])) if x != y), None))
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    info = {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "n_threads": cores,
        "batch8_sequences_identical_to_sequential": f"{same}/{n_seq}",
        "batch8_first_divergence_from_sequential": diverge,
    }
    return rows, info


def _gen_row(workload, batch, prompt_tokens, total_s, decode_s, runs):
    new = NEW_TOKENS * batch
    return {
        "engine": "llama.cpp (llama-cpp-python)",
        "model": "SmolLM2-135M-Instruct-Q4_1",
        "workload": f"generate greedy {NEW_TOKENS} new tokens: {workload}",
        "batch": batch,
        "prompt_tokens_avg": prompt_tokens,
        "new_tokens_total": new,
        "metric": "tokens/s (end-to-end, incl. prefill)",
        "value": new / total_s,
        "decode_tokens_per_s": (new - batch) / decode_s,
        "median_total_s": total_s,
        "runs": runs,
    }


def main():
    ap = argparse.ArgumentParser(description="Reference embedding/generation throughput on this CPU")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    ap.add_argument("--only", choices=["minilm", "smollm2"])
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    log = (lambda s: print(s, file=sys.stderr)) if a.json else (lambda s: None)
    for f in (a.models / MINILM_DIR / "model.safetensors", a.models / SMOL_GGUF):
        if not f.is_file():
            sys.exit(f"missing {f}: run scripts/fetch-models.sh first")

    load_before = os.getloadavg()
    busy0, own0 = _busy_and_own()
    wall0 = time.perf_counter()
    rows, info = [], {}
    for name, fn in (("minilm", bench_minilm), ("smollm2", bench_smollm2)):
        if a.only not in (None, name):
            continue
        b0, o0 = _busy_and_own()
        w0 = time.perf_counter()
        r, i = fn(a.models, cores, a.quick, log)
        b1, o1 = _busy_and_own()
        share = max(0.0, (b1 - b0) - (o1 - o0)) / ((time.perf_counter() - w0) * cores)
        for row in r:
            row["other_processes_cpu_share"] = round(share, 3)
        rows += r
        info.update(i)
    load_after = os.getloadavg()
    busy1, own1 = _busy_and_own()
    wall = time.perf_counter() - wall0
    # CPU time other processes took while this ran, as a share of the machine
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * cores)

    env = {
        "cpu": cpu_name(),
        "cores": cores,
        "python": platform.python_version(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "other_processes_cpu_share": round(others, 3),
        "wall_s": round(wall, 1),
        **info,
    }
    if a.json:
        print(json.dumps({"env": env, "results": rows}, indent=2))
        return

    print(f"# reference throughput: {env['cpu']}, {cores} cores, threads={cores}, "
          f"load avg (1m) before/after {env['loadavg_1m_before_after']}, "
          f"other processes used {100 * others:.1f}% of the CPU during the run")
    for k in ("torch", "llama_cpp_python"):
        if k in env:
            print(f"# {k} {env[k]}")
    if "llama_cpp_system_info" in env:
        print(f"# llama.cpp: {env['llama_cpp_system_info']}")
    print()
    print(f"{'model':<27} {'workload':<44} {'batch':>5} {'tokens':>6}  {'throughput':<40} {'others':>6}")
    for r in rows:
        if r["workload"] == "embed":
            t = f"{r['value']:.1f} sentences/s"
            print(f"{r['model']:<27} {'embed (tokenise+BERT+pool+norm)':<44} {r['batch']:>5} "
                  f"{r['tokens_per_input']:>6}  {t:<40} {100 * r['other_processes_cpu_share']:>5.1f}%")
    for r in rows:
        if r["workload"] != "embed":
            w = r["workload"].split(": ", 1)[1]
            t = f"{r['value']:.1f} tok/s e2e, {r['decode_tokens_per_s']:.1f} tok/s decode"
            print(f"{r['model']:<27} {w:<44} {r['batch']:>5} {NEW_TOKENS:>6}  {t:<40} "
                  f"{100 * r['other_processes_cpu_share']:>5.1f}%")
    if "batch8_sequences_identical_to_sequential" in env:
        print()
        print("# others = CPU share other processes took while that model's rows ran")
        print(f"# generation: 'tokens' = new tokens per sequence; e2e includes prompt prefill; "
              f"batch 8 = real batched decode (llama_batch, 8 sequence ids) via low-level bindings; "
              f"its greedy outputs equal the sequential ones for "
              f"{env['batch8_sequences_identical_to_sequential']} prompts")
    if others > 0.05:
        print(f"# WARNING: other processes took {100 * others:.0f}% of the {cores} cores during the run: "
              f"numbers are low; rerun on a quiet machine")


if __name__ == "__main__":
    main()
