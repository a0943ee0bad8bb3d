#!/usr/bin/env python3
"""Make the reference fixtures for Mycelium's `embed` and `generate` engines.

Reads the model files that scripts/fetch-models.sh put under
$MYCELIUM_MODELS (default ~/.cache/mycelium/models) and writes

  tests/fixtures/models/minilm_reference.json   all-MiniLM-L6-v2 sentence embeddings
  tests/fixtures/models/smollm2_reference.json  SmolLM2-135M-Instruct Q4_1 greedy generations

from implementations independent of ours:

* MiniLM: PyTorch + transformers `BertModel` on the extracted safetensors, tokenised with the
  extracted tokenizer.json (max length 256 = sentence_bert_config.json's max_seq_length,
  truncation on, no padding), mean pooling over the attention mask, L2 normalisation; checked
  against sentence-transformers' own pipeline (modules.json) and against a padded batch.
* SmolLM2: llama.cpp through llama-cpp-python; the prompt is the GGUF's own chat template
  rendered with llama-cpp-python's Jinja2ChatFormatter (what create_chat_completion uses),
  tokenised by llama.cpp with special tokens parsed; greedy decoding (argmax of the logits,
  the same as temperature 0 / top_k 1) of 32 new tokens, stopping early only at EOS;
  checked against llama-cpp-python's create_chat_completion(temperature=0, top_k=1), and
  compared (recorded, not asserted) with transformers running the GGUF de-quantised to f32.

Usage: make_fixtures.py [--models DIR] [--out DIR] [--only minilm|smollm2]
Run from anywhere; needs the venv described in scripts/reference/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import sys
from pathlib import Path

# everything is loaded from local files; never reach for a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = Path(os.environ.get("MYCELIUM_MODELS", Path.home() / ".cache/mycelium/models"))

MINILM_DIR = "all-minilm-l6-v2"
MINILM_FILES = [
    "model.safetensors",
    "tokenizer.json",
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
    "vocab.txt",
]
MINILM_MAX_LEN = 256  # sentence_bert_config.json max_seq_length

SMOL_DIR = "smollm2-135m-instruct"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_NEW_TOKENS = 32
SMOL_TOPK = 5
SMOL_TOPK_POSITIONS = 8

_LONG = (
    "Mycelium is the vegetative part of a fungus, a mass of branching, thread-like hyphae that "
    "grows through soil, wood and leaf litter. In a forest, the mycelia of many fungi form "
    "mycorrhizal associations with the roots of trees: the fungus supplies water, nitrogen and "
    "phosphorus gathered from a volume of soil far larger than the roots could reach, and the "
    "tree pays for this service with sugars made by photosynthesis. Because one fungal network "
    "can be connected to several trees at once, and one tree to several fungi, researchers have "
    "described the result as a common mycorrhizal network, sometimes popularly called the "
    "'wood wide web'. How much carbon, water and chemical signalling really passes between trees "
    "through these networks, and whether older trees deliberately nurse their seedlings, is "
    "still debated; careful field experiments in 2019-2023 gave mixed results."
)

SENTENCES = [
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Mycelium networks connect the roots of trees across an entire forest.",
    # Persian, with zero-width non-joiners (U+200C), which BERT's normaliser drops
    "شبکه\u200cهای قارچی ریشه\u200cهای درختان را در سراسر جنگل به هم وصل می\u200cکنند.",
    # CJK characters are split one per token by handle_chinese_chars
    "東京は日本の首都です。",
    "  Mixed CASE, accents (café, naïve, résumé), numbers 3.14159 and 2024, emoji 🍄!  ",
    # longer than 128 tokens, shorter than 256: catches a tokenizer left at tokenizer.json's
    # own truncation of 128
    _LONG,
    # longer than 256 tokens: truncated to 256 (254 word pieces + [CLS] + [SEP])
    _LONG + " " + _LONG,
]

SMOL_PROMPTS = [
    [{"role": "user", "content": "Explain in two sentences why the sky is blue."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that returns the sum of a list of numbers."}],
    [
        {"role": "system", "content": "You are a cheerful pirate who answers briefly."},
        {"role": "user", "content": "Tell me about your ship."},
    ],
]

# Extra strings for checking a GGUF-built tokenizer against llama.cpp's (no special parsing,
# no BOS): digits, spaces, punctuation, non-ASCII, a literal special-token text.
SMOL_TOKENIZER_CASES = [
    "Hello world",
    " Hello  world \n\n",
    "In 2024, 1234567 people paid $3.50 each.",
    "naïve café — “quoted” 東京 🍄",
    "def f(x):\n    return x ** 2\n",
    "<|im_start|>user",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def g8(x):
    """float32 value -> JSON float with 8 significant digits (round-trips float32 to ~1 ulp)."""
    return float(f"{float(x):.8g}")


def dump(obj, path):
    """JSON with 2-space indentation but every list of plain numbers on one line."""
    placeholders = {}

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            if o and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in o):
                key = f"@@{len(placeholders)}@@"
                placeholders[key] = json.dumps(o, separators=(",", ":"))
                return key
            if o and all(isinstance(v, list) and len(v) == 2 and all(isinstance(w, (int, float)) for w in v) for v in o):
                key = f"@@{len(placeholders)}@@"
                placeholders[key] = json.dumps(o, separators=(",", ":"))
                return key
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj), indent=2, ensure_ascii=False)
    text = re.sub(r'"(@@\d+@@)"', lambda m: placeholders[m.group(1)], text)
    json.loads(text)  # still valid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def versions(*mods):
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for m in mods:
        try:
            out[m] = md.version(m)
        except md.PackageNotFoundError:
            out[m] = None
    return out


# --------------------------------------------------------------------------------------------
def make_minilm(models, out):
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(os.cpu_count() or 1)
    d = models / MINILM_DIR
    for f in MINILM_FILES:
        if not (d / f).is_file():
            sys.exit(f"missing {d / f}: run scripts/fetch-models.sh first")

    tok = AutoTokenizer.from_pretrained(str(d))
    model = BertModel.from_pretrained(str(d), add_pooling_layer=False).eval()

    # The Rust side will most likely load tokenizer.json with the `tokenizers` crate: check
    # that doing so (with the truncation reset to 256 and padding off) gives the same ids.
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    raw_trunc = raw.truncation
    raw_pad = raw.padding
    raw.enable_truncation(MINILM_MAX_LEN)
    raw.no_padding()
    untrunc = Tokenizer.from_file(str(d / "tokenizer.json"))
    untrunc.no_truncation()
    untrunc.no_padding()

    def embed(batch):
        enc = tok(batch, max_length=MINILM_MAX_LEN, truncation=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=enc["token_type_ids"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy(), enc

    entries = []
    singles = []
    for s in SENTENCES:
        e, enc = embed([s])
        ids = enc["input_ids"][0].tolist()
        raw_ids = raw.encode(s).ids
        assert raw_ids == ids, f"tokenizers.Tokenizer and transformers disagree on {s!r}"
        assert enc["token_type_ids"][0].sum().item() == 0
        singles.append(e[0])
        entries.append({
            "text": s,
            "n_tokens": len(ids),
            "n_tokens_untruncated": len(untrunc.encode(s).ids),
            "token_ids": ids,
            "embedding": [g8(v) for v in e[0]],
        })
    singles = np.stack(singles)

    batched, _ = embed(SENTENCES)
    batch_diff = float(np.abs(batched - singles).max())

    st_diff = None
    st_version = None
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        st_version = sentence_transformers.__version__
        st = SentenceTransformer(str(d), device="cpu")
        assert st.max_seq_length == MINILM_MAX_LEN, st.max_seq_length
        ste = st.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
        st_diff = float(np.abs(ste - singles).max())
        assert st_diff < 1e-5, f"sentence-transformers disagrees: {st_diff}"
    except ImportError:
        print("sentence-transformers not installed: skipping that cross-check", file=sys.stderr)

    cos = (singles @ singles.T).tolist()
    norms = np.linalg.norm(singles, axis=1)

    fixture = {
        "description": (
            "all-MiniLM-L6-v2 sentence embeddings from PyTorch + transformers BertModel: "
            "tokenizer.json with truncation at max_length 256 and no padding ([CLS] ... [SEP], "
            "token_type_ids all 0), mean pooling of last_hidden_state over the attention mask, "
            "L2 normalisation. Each sentence was run alone (batch 1). Values are float32 "
            "printed with 8 significant digits."
        ),
        "generator": "scripts/reference/make_fixtures.py",
        "model_dir": MINILM_DIR,
        "model_files_sha256": {f: sha256(d / f) for f in MINILM_FILES},
        "versions": versions("torch", "transformers", "tokenizers", "safetensors", "sentence-transformers", "numpy"),
        "tokenizer": {
            "max_length": MINILM_MAX_LEN,
            "truncation": "longest_first (single sequence: keep the first 254 word pieces)",
            "padding": "none (batch 1)",
            "note": (
                "tokenizer.json itself sets truncation max_length 128 and padding Fixed(128): "
                "a loader must override both (truncate at 256, pad only within a batch with "
                "attention mask 0) to reproduce these ids"
            ),
            "tokenizer_json_truncation": raw_trunc,
            "tokenizer_json_padding": raw_pad,
            "cls_id": tok.cls_token_id,
            "sep_id": tok.sep_token_id,
            "pad_id": tok.pad_token_id,
            "unk_id": tok.unk_token_id,
            "lowercase": True,
        },
        "pooling": "mean over attention mask, then L2 normalise (1_Pooling/config.json: pooling_mode_mean_tokens; modules.json: Transformer -> Pooling -> Normalize)",
        "dim": int(singles.shape[1]),
        "checks": {
            "max_abs_diff_padded_batch_vs_single": batch_diff,
            "max_abs_diff_sentence_transformers_vs_single": st_diff,
            "sentence_transformers_version": st_version,
            "suggested_tolerance_abs": 1e-4,
            "norms_min_max": [g8(norms.min()), g8(norms.max())],
        },
        "sentences": entries,
        "cosine_similarity": [[g8(v) for v in row] for row in cos],
    }
    dump(fixture, out / "minilm_reference.json")


# --------------------------------------------------------------------------------------------
def make_smollm2(models, out):
    import llama_cpp
    import numpy as np
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    gguf = models / SMOL_DIR / SMOL_GGUF
    if not gguf.is_file():
        sys.exit(f"missing {gguf}: run scripts/fetch-models.sh first")
    n_threads = os.cpu_count() or 1
    n_ctx = 1024
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=n_threads,
                          logits_all=True, flash_attn=False, verbose=False, seed=0)
    md = llm.metadata
    template = md["tokenizer.chat_template"]
    bos, eos = llm.token_bos(), llm.token_eos()
    tok_str = lambda t: llm.detokenize([t], special=True).decode("utf-8", errors="replace")
    fmt = Jinja2ChatFormatter(template=template, eos_token=tok_str(eos), bos_token=tok_str(bos),
                              add_generation_prompt=True)

    def greedy(prompt_ids, record_topk):
        llm.reset()
        llm.eval(prompt_ids)
        gen, top = [], []
        for i in range(SMOL_NEW_TOKENS):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            nxt = int(np.argmax(logits))
            if record_topk and i < SMOL_TOPK_POSITIONS:
                order = np.argsort(-logits, kind="stable")[:SMOL_TOPK]
                top.append([[int(t), g8(logits[t])] for t in order])
            gen.append(nxt)
            if nxt == eos:
                break
            llm.eval([nxt])
        return gen, top

    results = []
    for msgs in SMOL_PROMPTS:
        prompt = fmt(messages=msgs).prompt
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        ids_default = llm.tokenize(prompt.encode("utf-8"), special=True)  # add_bos per GGUF
        assert ids == ids_default, "GGUF add_bos_token=false: tokenize() must not add BOS"
        gen, top = greedy(ids, record_topk=True)
        text = llm.detokenize(gen).decode("utf-8", errors="replace")

        # cross-check with llama-cpp-python's own chat path (template + sampler at temp 0)
        llm.reset()
        cc = llm.create_chat_completion(messages=msgs, max_tokens=SMOL_NEW_TOKENS, temperature=0.0,
                                        top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0)
        cc_text = cc["choices"][0]["message"]["content"]
        visible = llm.detokenize([t for t in gen if t != eos]).decode("utf-8", errors="replace")
        assert cc_text == visible, f"create_chat_completion differs:\n{cc_text!r}\n{visible!r}"

        results.append({
            "messages": msgs,
            "prompt_string": prompt,
            "prompt_token_ids": ids,
            "generated_token_ids": gen,
            "generated_text": text,
            "stopped_at_eos": bool(gen and gen[-1] == eos),
            "top5_logits_first8": [
                {"position": i, "chosen": gen[i], "top": t,
                 "margin_top1_top2": g8(t[0][1] - t[1][1])}
                for i, t in enumerate(top)
            ],
        })

    tok_cases = []
    for s in SMOL_TOKENIZER_CASES:
        tok_cases.append({
            "text": s,
            "ids": llm.tokenize(s.encode("utf-8"), add_bos=False, special=False),
            "ids_parse_special": llm.tokenize(s.encode("utf-8"), add_bos=False, special=True),
        })

    xcheck = smollm2_transformers_xcheck(models, results, tok_cases)

    keys = ["general.architecture", "general.name", "general.file_type", "llama.block_count",
            "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
            "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
            "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"]

    fixture = {
        "description": (
            "SmolLM2-135M-Instruct Q4_1 (GGUF) greedy generations from llama.cpp via "
            "llama-cpp-python. prompt_string is the GGUF chat template rendered with "
            "add_generation_prompt; prompt_token_ids is llama.cpp's tokenisation of it with "
            "special tokens parsed and no BOS (the GGUF says add_bos_token=false). Decoding: "
            "prompt evaluated in one batch, then one token at a time; the next token is the "
            "argmax of the last logits (temperature 0 / top_k 1, no repeat penalty); "
            f"{SMOL_NEW_TOKENS} new tokens, or fewer if EOS (<|im_end|>) comes first, EOS included "
            "in generated_token_ids. top5_logits_first8[i] are the raw logits that chose "
            "generated_token_ids[i]. Logits are float32 with 8 significant digits."
        ),
        "generator": "scripts/reference/make_fixtures.py",
        "model_file": f"{SMOL_DIR}/{SMOL_GGUF}",
        "model_sha256": sha256(gguf),
        "versions": versions("llama_cpp_python", "numpy", "jinja2", "transformers", "torch", "gguf"),
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "run_settings": {"n_ctx": n_ctx, "n_batch": 512, "n_threads": n_threads, "logits_all": True,
                         "flash_attn": False, "kv_cache_type": "f16"},
        "gguf_metadata": gguf_metadata(gguf, keys, md),
        "gguf_tensors": gguf_tensors(gguf),
        "chat_template": template,
        "special_tokens": {
            "bos_id": bos, "bos": tok_str(bos),
            "eos_id": eos, "eos": tok_str(eos),
            "unk_id": int(md["tokenizer.ggml.unknown_token_id"]),
            "pad_id": int(md["tokenizer.ggml.padding_token_id"]),
            "im_start_id": one(llm.tokenize(b"<|im_start|>", add_bos=False, special=True)),
            "im_end_id": one(llm.tokenize(b"<|im_end|>", add_bos=False, special=True)),
            "endoftext_id": one(llm.tokenize(b"<|endoftext|>", add_bos=False, special=True)),
            "stop_ids": [eos],
        },
        "prompts": results,
        "tokenizer_cases": tok_cases,
        "transformers_dequantized_f32": xcheck,
    }
    dump(fixture, out / "smollm2_reference.json")


def one(ids):
    assert len(ids) == 1, ids
    return ids[0]


def gguf_metadata(path, keys, fallback):
    """Typed GGUF key/values (llama-cpp-python's metadata has only strings, floats rounded)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return {k: fallback.get(k) for k in keys}
    r = GGUFReader(str(path))
    out = {}
    for k in keys:
        f = r.fields.get(k)
        v = f.contents() if f is not None else None
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def gguf_tensors(path):
    """Tensor count and types; whether there is a separate output (lm_head) matrix."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    from collections import Counter

    r = GGUFReader(str(path))
    names = {t.name: t for t in r.tensors}
    return {
        "count": len(r.tensors),
        "types": dict(Counter(t.tensor_type.name for t in r.tensors)),
        "token_embd.weight": names["token_embd.weight"].tensor_type.name,
        "has_output.weight": "output.weight" in names,
        "note": "no output.weight: the LM head is tied to token_embd.weight" if "output.weight" not in names else None,
    }


def smollm2_transformers_xcheck(models, results, tok_cases):
    """Greedy-decode the same prompts with transformers on the GGUF de-quantised to f32.

    Not the reference (llama.cpp also quantises activations to 8 bits in its Q4_1 matmuls, and
    so does candle's), but an independent second opinion: where the two agree on a token the
    model's choice there is robust; where they part, the logits margin is small.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    d = str(models / SMOL_DIR)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOL_GGUF, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOL_GGUF)
    except Exception as e:  # e.g. accelerate/gguf missing
        print(f"transformers GGUF cross-check skipped: {e}", file=sys.stderr)
        return {"skipped": str(e)}
    out = []
    for r in results:
        ids = r["prompt_token_ids"]
        with torch.inference_mode():
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=SMOL_NEW_TOKENS, do_sample=False, eos_token_id=2, pad_token_id=2)
        gen = g[0, len(ids):].tolist()
        ref = r["generated_token_ids"]
        agree = next((i for i, (a, b) in enumerate(zip(gen, ref)) if a != b), min(len(gen), len(ref)))
        out.append({
            "generated_token_ids": gen,
            "generated_text": tok.decode(gen),
            "agrees_with_llama_cpp_for_first_n_tokens": agree,
            "hf_tokenizer_matches_prompt_ids": tok(r["prompt_string"], add_special_tokens=False)["input_ids"] == ids,
        })
    tok_match = [tok(c["text"], add_special_tokens=False)["input_ids"] == c["ids_parse_special"] for c in tok_cases]
    return {
        "note": "transformers' GGUF loader, weights de-quantised to f32, greedy generate(); for comparison only",
        "prompts": out,
        "hf_gguf_tokenizer_matches_llama_cpp_on_tokenizer_cases": tok_match,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/models")
    ap.add_argument("--only", choices=["minilm", "smollm2"])
    a = ap.parse_args()
    if a.only in (None, "minilm"):
        make_minilm(a.models, a.out)
    if a.only in (None, "smollm2"):
        make_smollm2(a.models, a.out)


if __name__ == "__main__":
    main()
