//! The `generate` engine: llama-family text generation from a GGUF file (SmolLM2-135M-
//! Instruct Q4_1 and its kind) through candle's quantized llama. The tokenizer is built
//! from the GGUF metadata (byte-level BPE: vocabulary, merges, control tokens), prompts
//! are wrapped in the model's ChatML chat template, and decoding is greedy or seeded
//! sampling, up to a token limit or a stop token.
//!
//! Several prompts in one call run one after another on the same loaded model (candle's
//! quantized llama keeps one KV cache, so there is no padded batch here yet).
//!
//! Owns: generation and the teacher-forced check of a claimed generation. Reads the model
//! file; no other I/O.

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

pub struct Generator {
    model: ModelWeights,
    pub tokenizer: Tokenizer,
    device: Device,
    pub stop_ids: Vec<u32>,
    system: String,
    /// Longest prompt plus generation the model takes.
    pub context: usize,
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
        let model = ModelWeights::from_gguf(ct, &mut f, device)
            .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        Ok(Generator {
            model,
            tokenizer,
            device: device.clone(),
            stop_ids,
            system,
            context,
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

    fn logits(&mut self, ids: &[u32], pos: usize) -> Result<Tensor, EngineError> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        Ok(self.model.forward(&input, pos)?.squeeze(0)?)
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
        let prompt_ids = self.encode(prompt)?;
        if prompt_ids.len() + max_tokens > self.context {
            return Err(EngineError::Input(format!(
                "prompt of {} tokens plus {max_tokens} new ones exceeds the context of {}",
                prompt_ids.len(),
                self.context
            )));
        }
        let mut proc = match decode {
            Decode::Greedy => LogitsProcessor::from_sampling(0, Sampling::ArgMax),
            Decode::Sample { seed, temperature } => {
                LogitsProcessor::from_sampling(seed, Sampling::All { temperature })
            }
        };
        let mut logits = self.logits(&prompt_ids, 0)?;
        let mut pos = prompt_ids.len();
        let mut ids = Vec::new();
        let mut stopped = false;
        while ids.len() < max_tokens {
            let next = proc.sample(&logits)?;
            ids.push(next);
            if self.stop_ids.contains(&next) {
                stopped = true;
                break;
            }
            logits = self.logits(&[next], pos)?;
            pos += 1;
        }
        let shown: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|i| !self.stop_ids.contains(i))
            .collect();
        let text = self
            .tokenizer
            .decode(&shown, true)
            .map_err(|e| EngineError::Input(format!("decode: {e}")))?;
        Ok(Generated {
            prompt_ids,
            ids,
            text,
            stopped,
        })
    }

    /// Teacher-forced check of a claimed greedy generation of `prompt` (chat-template
    /// text): feed the prompt and then the
    /// claimed tokens, and at each position require the claimed token to be the model's
    /// choice, or within `margin` (in logits) of it. Returns the first position that
    /// fails, or `None` when every token passes.
    pub fn check(
        &mut self,
        prompt: &str,
        claimed: &[u32],
        margin: f32,
    ) -> Result<Option<usize>, EngineError> {
        let prompt_ids = self.encode(prompt)?;
        if prompt_ids.len() + claimed.len() > self.context {
            return Ok(Some(0));
        }
        let mut logits = self.logits(&prompt_ids, 0)?;
        let mut pos = prompt_ids.len();
        for (i, &tok) in claimed.iter().enumerate() {
            let v: Vec<f32> = logits.to_vec1()?;
            let Some(&want) = v.get(tok as usize) else {
                return Ok(Some(i));
            };
            let best = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if want + margin < best {
                return Ok(Some(i));
            }
            if i + 1 < claimed.len() {
                logits = self.logits(&[tok], pos)?;
                pos += 1;
            }
        }
        Ok(None)
    }
}
