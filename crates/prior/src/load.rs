//! Reading a GPT from what users have: a `gen` model folder, a safetensors file of official keys, or the
//! official PyTorch containers as they are:
//! - `transformer_{epoch}.pt`: the whole `VQGANTransformer` state dict, `transformer.*` (the GPT) beside
//!   `vqgan.*` (the tokenizer it was trained with, kept for the caller);
//! - DeepSpeed's `mp_rank_00_model_states.pt`: the same dict under `module` (F16 after fp16 training);
//!   every `module.` in a key is dropped, as `eval_generation.py` does;
//! - a bare `GPT.state_dict()`.
//!
//! The `blocks.*.attn.mask` buffers are accepted and ignored. Weights hold no head count and no
//! code / class split: the head count comes from the caller, a known size, or is an error asking for it;
//! the split from the tokenizer's codebook size, else the official 1,000 classes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_nn::Weights;
use gen_runtime::pth::PthFile;
use gen_runtime::{io, Error, ModelDir, ModelKind, Result};

use crate::config::GptConfig;
use crate::model::Gpt;
use crate::sample::Sampling;

/// The official class count when a file does not say (ImageNet).
pub const DEFAULT_CLASSES: usize = 1000;

/// What the caller knows that the weights do not record.
#[derive(Clone, Debug, Default)]
pub struct GptHints {
    /// The paired tokenizer's codebook size (splits the vocabulary into codes and classes).
    pub n_codes: Option<usize>,
    /// The head count (`--heads`).
    pub n_head: Option<usize>,
}

/// A GPT's tensors and architecture, before building.
#[derive(Clone, Debug)]
pub struct GptWeights {
    pub source: PathBuf,
    pub config: GptConfig,
    /// Official key names (no `transformer.` prefix, no mask buffers).
    pub tensors: HashMap<String, Tensor>,
    /// The `vqgan.*` half of an official container, prefix stripped (its tokenizer).
    pub tokenizer_tensors: Option<HashMap<String, Tensor>>,
    /// A model folder's `tokenizer` (relative path) and `tokenizer_sha256`.
    pub tokenizer_path: Option<PathBuf>,
    pub tokenizer_sha256: Option<String>,
    /// A model folder's recommended sampling (`[sampling]` in `config.toml`).
    pub sampling: Option<Sampling>,
}

/// Reads `path` (folder, `.safetensors` or a PyTorch container).
pub fn read_gpt(path: &Path, hints: &GptHints) -> Result<GptWeights> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
    }
    if path.is_dir() {
        let dir = ModelDir::open(path, ModelKind::Gpt)?;
        let config: GptConfig = dir.architecture()?;
        config.validate().map_err(|e| e.at(&dir.config_path()))?;
        let tensors = dir.load_weights()?;
        let tokenizer_path = dir.get_str("tokenizer").map(|t| path.join(t));
        let tokenizer_sha256 = dir.get_str("tokenizer_sha256").map(str::to_owned);
        let sampling = if dir.has("sampling") { Some(dir.table::<Sampling>("sampling")?) } else { None };
        return Ok(GptWeights {
            sampling,
            source: dir.weights_path(),
            config,
            tensors,
            tokenizer_tensors: None,
            tokenizer_path,
            tokenizer_sha256,
        });
    }
    let raw: HashMap<String, Tensor> = if path.extension().is_some_and(|e| e == "safetensors") {
        io::load_safetensors(path, &Device::Cpu)?
    } else {
        let f = PthFile::open(path)?;
        let key = f.top_keys().iter().any(|k| k == "module").then_some("module");
        f.tensors(key)?.into_iter().map(|(k, t)| (k.replace("module.", ""), t)).collect()
    };
    let (tensors, tokenizer_tensors) = split_container(raw);
    let config = infer_config(path, &tensors, hints)?;
    Ok(GptWeights {
        source: path.to_path_buf(),
        config,
        tensors,
        tokenizer_tensors,
        tokenizer_path: None,
        tokenizer_sha256: None,
        sampling: None,
    })
}

/// `transformer.*` → the GPT, `vqgan.*` → its tokenizer; a dict without `transformer.*` is a bare GPT.
/// Mask buffers are dropped.
fn split_container(raw: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, Option<HashMap<String, Tensor>>) {
    let is_mask = |k: &str| k.starts_with("blocks.") && k.ends_with(".attn.mask");
    if !raw.keys().any(|k| k.starts_with("transformer.")) {
        return (raw.into_iter().filter(|(k, _)| !is_mask(k)).collect(), None);
    }
    let (mut gpt, mut vq) = (HashMap::new(), HashMap::new());
    for (k, t) in raw {
        if let Some(name) = k.strip_prefix("transformer.") {
            if !is_mask(name) {
                gpt.insert(name.to_string(), t);
            }
        } else if let Some(name) = k.strip_prefix("vqgan.") {
            vq.insert(name.to_string(), t);
        }
    }
    (gpt, Some(vq))
}

/// The architecture read off the shapes: vocab and width from `tok_emb`, block from `pos_emb`, layers by
/// counting, a tied head when `head.weight` is absent.
fn infer_config(path: &Path, t: &HashMap<String, Tensor>, hints: &GptHints) -> Result<GptConfig> {
    let missing = |key: &str, expected: &str| Error::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected: Some(format!("{expected}; is this a GPT-LC checkpoint?")),
    };
    let tok = t.get("tok_emb.weight").ok_or_else(|| missing("tok_emb.weight", "[V, C]"))?;
    let &[vocab, n_embd] = tok.dims() else {
        return Err(Error::format(path, format!("tok_emb.weight has shape {:?}, expected [V, C]", tok.dims())));
    };
    let pos = t.get("pos_emb").ok_or_else(|| missing("pos_emb", "[1, block, C]"))?;
    let block_size = match pos.dims() {
        &[1, b, c] if c == n_embd => b,
        d => return Err(Error::format(path, format!("pos_emb has shape {d:?}, expected [1, block, {n_embd}]"))),
    };
    let n_layer = (0..).take_while(|i| t.contains_key(&format!("blocks.{i}.ln1.weight"))).count();
    let n_head = match hints.n_head.or_else(|| GptConfig::known_heads(n_layer, n_embd)) {
        Some(h) => h,
        None => {
            return Err(Error::format(
                path,
                format!(
                "the weights do not record the head count of this {n_layer}-layer, width-{n_embd} GPT: pass --heads N"
            ),
            ))
        }
    };
    let n_codes = match hints.n_codes {
        Some(n) if n < vocab => n,
        Some(n) => {
            return Err(Error::format(
                path,
                format!("its vocabulary of {vocab} ids cannot hold a tokenizer's {n} codes and at least one class"),
            ))
        }
        None if vocab > DEFAULT_CLASSES => vocab - DEFAULT_CLASSES,
        None => {
            return Err(Error::format(
                path,
                format!("vocabulary of {vocab}: pass the tokenizer so the codes and classes split is known"),
            ))
        }
    };
    let config = GptConfig {
        n_codes,
        n_classes: vocab - n_codes,
        block_size,
        n_layer,
        n_head,
        n_embd,
        null_class: false,
        tied_head: !t.contains_key("head.weight"),
        class_names: Vec::new(),
    };
    config.validate().map_err(|e| e.at(path))?;
    Ok(config)
}

impl GptWeights {
    /// Builds the model in `dtype` (F16 files are upcast for f32); a missing key or a wrong shape is an
    /// error naming the file, the key and the shapes. Also returns which tensors it read.
    pub fn build(&self, dtype: DType, dev: &Device) -> Result<(Gpt, Weights)> {
        let weights = Weights::new(self.source.display().to_string(), self.tensors.clone());
        let model = Gpt::new(weights.var_builder(dtype, dev), &self.config)?;
        Ok((model, weights))
    }
}

/// Reads and builds in one call.
pub fn load_gpt(path: &Path, hints: &GptHints, dtype: DType, dev: &Device) -> Result<Gpt> {
    Ok(read_gpt(path, hints)?.build(dtype, dev)?.0)
}
