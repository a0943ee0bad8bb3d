//! The `generate` engine: llama-family text generation from a GGUF file (SmolLM2-135M-
//! Instruct Q4_1 and its kind). The tokenizer is built from the GGUF metadata (byte-level
//! BPE: vocabulary, merges, control tokens), prompts are wrapped in the model's ChatML chat
//! template, and decoding is greedy or seeded sampling, up to a token limit or a stop
//! token.
//!
//! On the CPU the model runs on our own forward pass ([`super::llama`]): several prompts
//! are generated together, one batched pass per step, and the teacher-forced check of a
//! claimed generation is one pass over prompt and claim. On a GPU it runs on candle's
//! quantized llama (CUDA), one prompt at a time.
//!
//! Owns: generation and the teacher-forced check of a claimed generation. Reads the model
//! file; no other I/O.

use super::llama::{Cache, Llama};
use super::EngineError;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use std::path::Path;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decode {
    Greedy,
    /// Temperature sampling from a seeded generator: the same seed gives the same text.
    Sample {
        seed: u64,
        temperature: f64,
    },
}

/// One generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub prompt_ids: Vec<u32>,
    /// Generated token IDs (the stop token, if reached, included).
    pub ids: Vec<u32>,
    pub text: String,
    pub stopped: bool,
}

/// How the model runs: our CPU forward pass ([`Llama`]: batched, all-position logits), or
/// candle's quantized llama on a GPU.
enum Engine {
    Cpu(Box<Llama>),
    Candle {
        model: Box<ModelWeights>,
        device: Device,
    },
}

pub struct Generator {
    engine: Engine,
    pub tokenizer: Tokenizer,
    pub stop_ids: Vec<u32>,
    system: String,
    /// Longest prompt plus generation the model takes.
    pub context: usize,
    /// The tokenizer's vocabulary size, added tokens included (asking the tokenizer
    /// builds its whole vocabulary map each time).
    vocab: usize,
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, EngineError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| EngineError::Model(format!("GGUF metadata has no {key}")))
}

/// The byte-level BPE tokenizer described by a GGUF file's metadata.
pub fn tokenizer_from_gguf(ct: &gguf_file::Content) -> Result<Tokenizer, EngineError> {
    let model = meta(ct, "tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        return Err(EngineError::Model(format!(
            "tokenizer model {model:?} is not supported (byte-level BPE, \"gpt2\", is)"
        )));
    }
    let tokens = meta(ct, "tokenizer.ggml.tokens")?.to_vec()?;
    let mut vocab = Vocab::default();
    let mut names = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let s = t.to_string()?.clone();
        vocab.insert(s.clone(), i as u32);
        names.push(s);
    }
    let mut merges = Vec::new();
    for m in meta(ct, "tokenizer.ggml.merges")?.to_vec()? {
        let m = m.to_string()?;
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| EngineError::Model(format!("bad merge {m:?}")))?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| EngineError::Model(format!("BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = meta(ct, "tokenizer.ggml.pre")
        .and_then(|v| Ok(v.to_string()?.clone()))
        .unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = if pre == "smollm" {
        // SmolLM splits digits one by one before the byte-level split.
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control tokens (<|im_start|>, <|im_end|>, ...) are matched whole, never split.
    if let Ok(types) = meta(ct, "tokenizer.ggml.token_type").and_then(|v| Ok(v.to_vec()?)) {
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.to_i32().is_ok_and(|t| t == 3))
            .filter_map(|(i, _)| names.get(i))
            .map(|n| AddedToken::from(n.clone(), true))
            .collect();
        tok.add_special_tokens(&special);
    }
    Ok(tok)
}

impl Generator {
    /// Load a GGUF llama model onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Generator, EngineError> {
        let mut f = std::fs::File::open(path)
            .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        let ct = gguf_file::Content::read(&mut f)
            .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        let tokenizer = tokenizer_from_gguf(&ct)?;
        let mut stop_ids = Vec::new();
        if let Ok(e) = meta(&ct, "tokenizer.ggml.eos_token_id").and_then(|v| Ok(v.to_u32()?)) {
            stop_ids.push(e);
        }
        for s in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(s) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let template = meta(&ct, "tokenizer.chat_template")
            .and_then(|v| Ok(v.to_string()?.clone()))
            .unwrap_or_default();
        if !template.contains("<|im_start|>") {
            return Err(EngineError::Model(
                "the GGUF chat template is not ChatML (<|im_start|>); only ChatML is supported"
                    .into(),
            ));
        }
        // The template's default system message, when it has one.
        let system = template
            .split("<|im_start|>system\n")
            .nth(1)
            .and_then(|s| s.split("<|im_end|>").next())
            .unwrap_or("")
            .to_string();
        let context = meta(&ct, "llama.context_length")
            .and_then(|v| Ok(v.to_u32()? as usize))
            .unwrap_or(2048)
            .min(4096);
        let engine = if device.is_cpu() {
            Engine::Cpu(Box::new(Llama::load(&ct, &mut f)?))
        } else {
            let model = ModelWeights::from_gguf(ct, &mut f, device)
                .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
            Engine::Candle {
                model: Box::new(model),
                device: device.clone(),
            }
        };
        let vocab = tokenizer.get_vocab_size(true);
        Ok(Generator {
            engine,
            tokenizer,
            stop_ids,
            system,
            context,
            vocab,
        })
    }

    /// The chat-template text for one user message.
    pub fn prompt(&self, user: &str) -> String {
        self.chat(&[("user", user)])
    }

    /// The chat-template text for a conversation of (role, content) messages, ready for
    /// the assistant's answer: the template's default system message first unless the
    /// conversation starts with its own.
    pub fn chat(&self, messages: &[(&str, &str)]) -> String {
        let mut s = String::new();
        if messages.first().is_none_or(|m| m.0 != "system") && !self.system.is_empty() {
            s.push_str(&format!("<|im_start|>system\n{}<|im_end|>\n", self.system));
        }
        for (role, content) in messages {
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }

    /// Token IDs of `text` (control tokens in it are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Input(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// The text of generated token IDs (stop tokens left out).
    pub fn text_of(&self, ids: &[u32]) -> Result<String, EngineError> {
        let shown: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|i| !self.stop_ids.contains(i))
            .collect();
        self.tokenizer
            .decode(&shown, true)
            .map_err(|e| EngineError::Input(format!("decode: {e}")))
    }

    /// Answer one user message, up to `max_tokens` new tokens.
    pub fn generate(
        &mut self,
        user: &str,
        max_tokens: usize,
        decode: Decode,
    ) -> Result<Generated, EngineError> {
        let text = self.prompt(user);
        self.complete(&text, max_tokens, decode)
    }

    /// Continue a prompt already in the chat template (see [`Generator::chat`]).
    pub fn complete(
        &mut self,
        prompt: &str,
        max_tokens: usize,
        decode: Decode,
    ) -> Result<Generated, EngineError> {
        let mut v = self.complete_batch(&[prompt], max_tokens, decode)?;
        v.pop()
            .ok_or_else(|| EngineError::Input("no generation".into()))
    }

    /// Continue several chat-template prompts together (on the CPU engine, one batched
    /// forward pass per step over every unfinished sequence). Each gets up to
    /// `max_tokens` new tokens; sampling streams are seeded per prompt, so an answer does
    /// not depend on what it was batched with.
    pub fn complete_batch(
        &mut self,
        prompts: &[&str],
        max_tokens: usize,
        decode: Decode,
    ) -> Result<Vec<Generated>, EngineError> {
        let jobs: Vec<(&str, usize)> = prompts.iter().map(|p| (*p, max_tokens)).collect();
        self.complete_each(&jobs, decode)
    }

    /// As [`Generator::complete_batch`], with each prompt's own token limit.
    pub fn complete_each(
        &mut self,
        jobs: &[(&str, usize)],
        decode: Decode,
    ) -> Result<Vec<Generated>, EngineError> {
        let mut seqs = Vec::with_capacity(jobs.len());
        let mut limits = Vec::with_capacity(jobs.len());
        for &(p, max_tokens) in jobs {
            let prompt_ids = self.encode(p)?;
            if prompt_ids.is_empty() || prompt_ids.len() + max_tokens > self.context {
                return Err(EngineError::Input(format!(
                    "prompt of {} tokens plus {max_tokens} new ones does not fit the context of {}",
                    prompt_ids.len(),
                    self.context
                )));
            }
            seqs.push(prompt_ids);
            limits.push(max_tokens);
        }
        let mut procs: Vec<LogitsProcessor> = seqs
            .iter()
            .map(|_| match decode {
                Decode::Greedy => LogitsProcessor::from_sampling(0, Sampling::ArgMax),
                Decode::Sample { seed, temperature } => {
                    LogitsProcessor::from_sampling(seed, Sampling::All { temperature })
                }
            })
            .collect();
        let stop_ids = self.stop_ids.clone();
        let mut outs: Vec<(Vec<u32>, bool)> = seqs.iter().map(|_| (Vec::new(), false)).collect();
        let pick = |proc: &mut LogitsProcessor, logits: Vec<f32>| -> Result<u32, EngineError> {
            if decode == Decode::Greedy {
                return Ok(argmax(&logits));
            }
            let n = logits.len();
            Ok(proc.sample(&Tensor::from_vec(logits, n, &Device::Cpu)?)?)
        };
        match &mut self.engine {
            Engine::Cpu(model) => {
                let mut caches: Vec<Cache> = seqs
                    .iter()
                    .zip(&limits)
                    .map(|(p, m)| Cache::new(&model.cfg, p.len() + m))
                    .collect();
                // Prefill every prompt in one pass; logits of each prompt's last token.
                let mut rows = Vec::new();
                let mut want = Vec::new();
                for (s, p) in seqs.iter().enumerate() {
                    for (i, &t) in p.iter().enumerate() {
                        rows.push((s, t));
                        want.push(i + 1 == p.len());
                    }
                }
                let mut active: Vec<usize> = (0..seqs.len()).filter(|&s| limits[s] > 0).collect();
                want.iter_mut()
                    .zip(rows.iter())
                    .for_each(|(w, (s, _))| *w &= limits[*s] > 0);
                let mut logits = model.forward(&mut caches, &rows, &want)?;
                while !active.is_empty() {
                    let mut rows = Vec::with_capacity(active.len());
                    let mut still = Vec::with_capacity(active.len());
                    for (&s, l) in active.iter().zip(logits) {
                        let next = pick(&mut procs[s], l)?;
                        let (ids, stopped) = &mut outs[s];
                        ids.push(next);
                        if stop_ids.contains(&next) {
                            *stopped = true;
                        } else if ids.len() < limits[s] {
                            rows.push((s, next));
                            still.push(s);
                        }
                    }
                    active = still;
                    if active.is_empty() {
                        break;
                    }
                    let want = vec![true; rows.len()];
                    logits = model.forward(&mut caches, &rows, &want)?;
                }
            }
            Engine::Candle { model, device } => {
                for (s, p) in seqs.iter().enumerate() {
                    let step = |model: &mut ModelWeights, ids: &[u32], pos: usize| {
                        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
                        let l: Vec<f32> = model.forward(&input, pos)?.squeeze(0)?.to_vec1()?;
                        Ok::<_, EngineError>(l)
                    };
                    let mut logits = step(model, p, 0)?;
                    let mut pos = p.len();
                    let (ids, stopped) = &mut outs[s];
                    while ids.len() < limits[s] {
                        let next = pick(&mut procs[s], logits)?;
                        ids.push(next);
                        if stop_ids.contains(&next) {
                            *stopped = true;
                            break;
                        }
                        logits = step(model, &[next], pos)?;
                        pos += 1;
                    }
                }
            }
        }
        seqs.into_iter()
            .zip(outs)
            .map(|(prompt_ids, (ids, stopped))| {
                let text = self.text_of(&ids)?;
                Ok(Generated {
                    prompt_ids,
                    ids,
                    text,
                    stopped,
                })
            })
            .collect()
    }

    /// Logits after each of `prompt_ids[..]` ++ `claimed[..len-1]`, from the last prompt
    /// token on: `claimed.len()` vectors, the i-th predicting `claimed[i]`.
    fn forced_logits(
        &mut self,
        prompt_ids: &[u32],
        claimed: &[u32],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let n = prompt_ids.len();
        let seq: Vec<u32> = prompt_ids
            .iter()
            .chain(&claimed[..claimed.len().saturating_sub(1)])
            .copied()
            .collect();
        match &mut self.engine {
            Engine::Cpu(model) => {
                // One forward pass over the prompt and the claim together.
                let mut caches = vec![Cache::new(&model.cfg, seq.len())];
                let rows: Vec<(usize, u32)> = seq.iter().map(|&t| (0, t)).collect();
                let want: Vec<bool> = (0..seq.len()).map(|i| i + 1 >= n).collect();
                model.forward(&mut caches, &rows, &want)
            }
            Engine::Candle { model, device } => {
                let mut out = Vec::with_capacity(claimed.len());
                let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
                out.push(model.forward(&input, 0)?.squeeze(0)?.to_vec1()?);
                for (i, &t) in seq[n..].iter().enumerate() {
                    let input = Tensor::new(&[t], device)?.unsqueeze(0)?;
                    out.push(model.forward(&input, n + i)?.squeeze(0)?.to_vec1()?);
                }
                Ok(out)
            }
        }
    }

    /// Teacher-forced check of a claimed greedy generation of `prompt` (chat-template
    /// text): one forward pass over the prompt and the claimed tokens, then at each
    /// position the claimed token must be the model's choice, or within `margin` (in
    /// logits) of it. Returns the first position that fails, or `None` when every token
    /// passes.
    pub fn check(
        &mut self,
        prompt: &str,
        claimed: &[u32],
        margin: f32,
    ) -> Result<Option<usize>, EngineError> {
        let prompt_ids = self.encode(prompt)?;
        if prompt_ids.is_empty() || prompt_ids.len() + claimed.len() > self.context {
            return Ok(Some(0));
        }
        if claimed.is_empty() {
            return Ok(None);
        }
        let vocab = self.vocab;
        if let Some(i) = claimed.iter().position(|&t| t as usize >= vocab) {
            return Ok(Some(i));
        }
        let logits = self.forced_logits(&prompt_ids, claimed)?;
        for (i, (v, &tok)) in logits.iter().zip(claimed).enumerate() {
            let Some(&want) = v.get(tok as usize) else {
                return Ok(Some(i));
            };
            let best = super::vmath::max16(v);
            if want + margin < best {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Judge a claimed greedy answer to the user message `user` made under a limit of
    /// `max_tokens`: the text must be what the tokens decode to, the answer must end at a
    /// stop token or at the limit (no truncated answers), and every token must pass the
    /// teacher-forced [`Generator::check`] within `margin` logits. `Ok(Err(why))` is a
    /// refused claim.
    pub fn verify(
        &mut self,
        user: &str,
        max_tokens: usize,
        tokens: &[u32],
        text: &str,
        margin: f32,
    ) -> Result<Result<(), String>, EngineError> {
        if tokens.is_empty() || tokens.len() > max_tokens {
            return Ok(Err(format!(
                "{} tokens claimed under a limit of {max_tokens}",
                tokens.len()
            )));
        }
        let last = tokens[tokens.len() - 1];
        let stopped = self.stop_ids.contains(&last);
        if !stopped && tokens.len() < max_tokens {
            return Ok(Err(
                "the answer ends before a stop token or the limit".into()
            ));
        }
        if tokens[..tokens.len() - 1]
            .iter()
            .any(|t| self.stop_ids.contains(t))
        {
            return Ok(Err("the answer goes on past a stop token".into()));
        }
        let vocab = self.vocab;
        if tokens.iter().any(|&t| t as usize >= vocab) {
            return Ok(Err("a token outside the vocabulary".into()));
        }
        if self.text_of(tokens)? != text {
            return Ok(Err("the text is not what the tokens say".into()));
        }
        let prompt = self.prompt(user);
        Ok(match self.check(&prompt, tokens, margin)? {
            None => Ok(()),
            Some(i) => Err(format!(
                "token {i} is not the model's choice (more than {margin} logits below it)"
            )),
        })
    }
}

/// Index of the first largest value.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
