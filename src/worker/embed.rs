//! The `embed` engine: sentence embeddings from a BERT model (all-MiniLM-L6-v2 and its
//! kind: `config.json`, `model.safetensors`, `tokenizer.json`) through candle. Texts are
//! tokenized in batches (padded to the longest, truncated to the model's `max_seq_length`,
//! 256 by default), run through the encoder, mean-pooled over the attention mask and L2
//! normalised, as sentence-transformers does. On a CPU with AVX-512 or AVX2 (and FMA) the
//! encoder is our own ([`super::bert`], kernels picked by [`super::isa`]); on other CPUs,
//! under `MYCELIUM_KERNELS=portable`, and on other devices, candle's `BertModel`.
//!
//! Owns: the embedding computation. Reads model files; no other I/O.

use super::bert::CpuBert;
use super::isa::Isa;
use super::EngineError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Longest input in tokens when the model does not say (`sentence_bert_config.json`).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The encoder: ours on an AVX-512 CPU, candle's elsewhere.
enum Encoder {
    Cpu(CpuBert),
    Candle(BertModel),
}

pub struct Embedder {
    model: Encoder,
    tokenizer: Tokenizer,
    device: Device,
    /// Width of one embedding.
    pub dim: usize,
    pub max_tokens: usize,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EngineError> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|e| EngineError::Model(format!("{}: {e}", p.display())))
}

impl Embedder {
    /// Load a BERT sentence-embedding model from `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Embedder, EngineError> {
        Self::load_on(dir, device, super::isa::chosen())
    }

    /// [`Embedder::load`] with the CPU kernels of `isa` (one this CPU runs): our own BERT
    /// on AVX2 or AVX-512, candle's on `Isa::Portable` (and on other devices).
    pub fn load_on(dir: &Path, device: &Device, isa: Isa) -> Result<Embedder, EngineError> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)
            .map_err(|e| EngineError::Model(format!("config.json: {e}")))?;
        let max_tokens = std::fs::read(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(DEFAULT_MAX_TOKENS, |v| v as usize)
            .min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|e| EngineError::Model(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                pad_id: config.pad_token_id as u32,
                ..Default::default()
            }))
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EngineError::Model(format!("tokenizer: {e}")))?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not changed while the model lives; a
        // model file is written once, by `model add` or the fetch script.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(|e| EngineError::Model(format!("{}: {e}", weights.display())))?;
        let model = if device.is_cpu() && isa != Isa::Portable && isa.available() {
            CpuBert::load(vb, &config, isa).map(Encoder::Cpu)
        } else {
            BertModel::load(vb, &config).map(Encoder::Candle)
        }
        .map_err(|e| EngineError::Model(format!("BERT weights: {e}")))?;
        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            dim: config.hidden_size,
            max_tokens,
        })
    }

    /// Token IDs of one text, as the model sees it (truncated; no padding).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Input(format!("tokenizer: {e}")))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_attention_mask())
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
            .collect())
    }

    /// Embed `texts` in batches of at most `batch`; one unit vector per text.
    pub fn embed(&self, texts: &[String], batch: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch.max(1)) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EngineError> {
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::Input(format!("tokenizer: {e}")))?;
        let model = match &self.model {
            Encoder::Candle(model) => model,
            Encoder::Cpu(bert) => {
                // Only the unmasked tokens, with their positions.
                let seqs: Vec<Vec<(u32, usize)>> = encs
                    .iter()
                    .map(|e| {
                        e.get_ids()
                            .iter()
                            .zip(e.get_attention_mask())
                            .enumerate()
                            .filter(|(_, (_, m))| **m != 0)
                            .map(|(p, (i, _))| (*i, p))
                            .collect()
                    })
                    .collect();
                return Ok(bert.embed(&seqs)?);
            }
        };
        let n = encs.len();
        let t = encs.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(n * t);
        let mut mask = Vec::with_capacity(n * t);
        for e in &encs {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (n, t), dev)?;
        let mask = Tensor::from_vec(mask, (n, t), dev)?;
        let types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        let pooled = mean_pool_normalise(&hidden, &mask)?;
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Mean of `hidden` (n, t, d) over the positions where `mask` (n, t) is 1, then each row
/// scaled to unit length.
pub fn mean_pool_normalise(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norm)
}

pub use crate::market::agree::cosine;
