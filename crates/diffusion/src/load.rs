//! Reading a DiT, SiT or LDM from what users have: a `gen` model folder, or the official checkpoints as
//! they are:
//! - DiT-LC / SiT-LC `{epoch}.pt`: `{"model", "ema", "opt", "args"}`; the evaluations sample with
//!   `"ema"` (the weights alone do not say DiT or SiT, so the caller does);
//! - LDM-LC Lightning `.ckpt`: `state_dict` with the live UNet, the LitEma copy and the class table.
//!
//! DiT / SiT architectures are read off the shapes (the head count from a known size or the caller);
//! LDM's is the official f16 or f8 config, told apart by the latent channels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_nn::Weights;
use gen_runtime::pth::PthFile;
use gen_runtime::{io, Error, ModelDir, ModelKind, Result};

use crate::dit::config::NAMED_SIZES;
use crate::dit::{Dit, DitConfig};
use crate::ldm::load::{has_ema, ldm_tensors, WeightSet};
use crate::ldm::{Ldm, LdmConfig};
use crate::sampling::{Generator, SamplingSpec};
use crate::sit::Sit;
use crate::train::{Arch, SitArch};
use crate::transport::{LossWeight, PathKind, Prediction, Transport};

/// What the caller knows that a checkpoint file does not record.
#[derive(Clone, Debug, Default)]
pub struct GeneratorHints {
    /// DiT or SiT, for an official `.pt` (same keys).
    pub kind: Option<ModelKind>,
    /// Attention heads of a DiT / SiT not of a named size.
    pub heads: Option<usize>,
    /// An LDM checkpoint's head width (`num_head_channels`, default 32 as both official configs).
    pub head_channels: Option<usize>,
    /// Live or EMA weights (official evaluations use the EMA).
    pub weights: Option<WeightSet>,
}

/// A generator's tensors and architecture, before building.
#[derive(Clone, Debug)]
pub struct GeneratorWeights {
    pub source: PathBuf,
    pub arch: Arch,
    pub tensors: HashMap<String, Tensor>,
    /// A model folder's paired tokenizer (path relative to the folder) and its hash.
    pub tokenizer_path: Option<PathBuf>,
    pub tokenizer_sha256: Option<String>,
    pub sampling: Option<SamplingSpec>,
    pub class_names: Vec<String>,
}

const GENERATORS: [ModelKind; 3] = [ModelKind::Dit, ModelKind::Sit, ModelKind::Ldm];

/// Reads `path` (model folder, `.pt`/`.pth`/`.ckpt`, or `.safetensors` of official keys).
pub fn read_generator(path: &Path, hints: &GeneratorHints) -> Result<GeneratorWeights> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
    }
    if path.is_dir() {
        let dir = ModelDir::open_any(path, &GENERATORS)?;
        let arch = match dir.kind {
            ModelKind::Dit => Arch::Dit(dir.architecture()?),
            ModelKind::Sit => Arch::Sit(dir.architecture()?),
            _ => Arch::Ldm(dir.architecture()?),
        };
        arch.validate().map_err(|e| e.at(&dir.config_path()))?;
        let sampling = if dir.has("sampling") { Some(dir.table::<SamplingSpec>("sampling")?) } else { None };
        let class_names = if dir.has("class_names") { dir.table::<Vec<String>>("class_names")? } else { Vec::new() };
        return Ok(GeneratorWeights {
            source: dir.weights_path(),
            tensors: dir.load_weights()?,
            tokenizer_path: dir.get_str("tokenizer").map(|t| path.join(t)),
            tokenizer_sha256: dir.get_str("tokenizer_sha256").map(str::to_owned),
            sampling,
            class_names,
            arch,
        });
    }
    let set = hints.weights.unwrap_or(WeightSet::Ema);
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let raw: HashMap<String, Tensor> = if is_safetensors {
        io::load_safetensors(path, &Device::Cpu)?
    } else {
        let f = PthFile::open(path)?;
        let top = f.top_keys();
        let key = if top.iter().any(|k| k == "state_dict") {
            Some("state_dict")
        } else if top.iter().any(|k| k == "ema") && set == WeightSet::Ema {
            Some("ema")
        } else if top.iter().any(|k| k == "model") {
            Some("model")
        } else {
            None
        };
        f.tensors(key)?.into_iter().collect()
    };
    if raw.keys().any(|k| k.starts_with("model.diffusion_model.")) {
        let set = if set == WeightSet::Ema && !has_ema(&raw) { WeightSet::Live } else { set };
        let tensors = ldm_tensors(&raw, set).map_err(|e| Error::format(path, e.to_string()))?;
        let arch = Arch::Ldm(ldm_config(path, &tensors, hints.head_channels.unwrap_or(32))?);
        return Ok(GeneratorWeights {
            source: path.to_path_buf(),
            arch,
            tensors,
            tokenizer_path: None,
            tokenizer_sha256: None,
            sampling: None,
            class_names: Vec::new(),
        });
    }
    let net = infer_dit(path, &raw, hints.heads)?;
    let arch = match hints.kind {
        Some(ModelKind::Sit) => Arch::Sit(SitArch {
            net,
            path: PathKind::Linear,
            prediction: Prediction::Velocity,
            loss_weight: LossWeight::None,
        }),
        Some(ModelKind::Dit) => Arch::Dit(net),
        _ => {
            return Err(Error::invalid(format!(
                "{}: DiT and SiT checkpoints hold the same keys; say which with --kind dit or --kind sit",
                path.display()
            )))
        }
    };
    Ok(GeneratorWeights {
        source: path.to_path_buf(),
        arch,
        tensors: raw,
        tokenizer_path: None,
        tokenizer_sha256: None,
        sampling: None,
        class_names: Vec::new(),
    })
}

/// The LDM's architecture from its tensors (`LdmConfig::infer`) and the head width, with the LC
/// tokenizers' latent side for its channels (8 → 16, the f16 tokenizer; else 32, f8).
fn ldm_config(path: &Path, t: &HashMap<String, Tensor>, head_channels: usize) -> Result<LdmConfig> {
    let shape = |k: &str| t.get(k).map(|v| v.dims().to_vec());
    let side = if shape("model.diffusion_model.input_blocks.0.0.weight").and_then(|s| s.get(1).copied()) == Some(8) {
        16
    } else {
        32
    };
    LdmConfig::infer(&shape, head_channels, side).map_err(|e| Error::format(path, e.to_string()))
}

/// A DiT's architecture from its tensors.
fn infer_dit(path: &Path, t: &HashMap<String, Tensor>, heads: Option<usize>) -> Result<DitConfig> {
    let get = |key: &str, expected: &str| {
        t.get(key).map(|v| v.dims().to_vec()).ok_or_else(|| Error::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: Some(format!("{expected}; is this a DiT / SiT / LDM checkpoint?")),
        })
    };
    let bad = |m: String| Error::format(path, m);
    let &[d, c, p, _] = get("x_embedder.proj.weight", "[D, C, p, p]")?.as_slice() else {
        return Err(bad("x_embedder.proj.weight is not a 4-D conv kernel".into()));
    };
    let n = match get("pos_embed", "[1, N, D]")?.as_slice() {
        &[1, n, dd] if dd == d => n,
        other => return Err(bad(format!("pos_embed has shape {other:?}, expected [1, N, {d}]"))),
    };
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n {
        return Err(bad(format!("pos_embed holds {n} tokens, not a square grid")));
    }
    let depth = (0..).take_while(|i| t.contains_key(&format!("blocks.{i}.attn.qkv.weight"))).count();
    let rows = get("y_embedder.embedding_table.weight", "[classes + 1, D]")?[0];
    let out = get("final_layer.linear.weight", "[p·p·C_out, D]")?[0];
    let hidden = get("blocks.0.mlp.fc1.weight", "[H, D]")?[0];
    let num_heads = match heads.or_else(|| NAMED_SIZES.iter().find(|s| s.1 == depth && s.2 == d).map(|s| s.3)) {
        Some(h) => h,
        None => {
            return Err(bad(format!(
                "a DiT of depth {depth} and width {d} is not a named size: give its head count with --heads"
            )))
        }
    };
    let c_out = out / (p * p);
    let config = DitConfig {
        input_size: g * p,
        patch_size: p,
        in_channels: c,
        hidden_size: d,
        depth,
        num_heads,
        mlp_ratio: hidden as f64 / d as f64,
        class_dropout_prob: 0.1,
        num_classes: rows - 1,
        learn_sigma: c_out == 2 * c,
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

impl GeneratorWeights {
    /// Builds the generator; every tensor must be read (a checkpoint of another architecture than its
    /// config says fails here, naming the tensor).
    pub fn build(&self, dtype: DType, dev: &Device) -> Result<Generator> {
        let w = Weights::new(self.source.display().to_string(), self.tensors.clone());
        let vb = w.var_builder(dtype, dev);
        let g = match &self.arch {
            Arch::Dit(c) => Generator::Dit(Dit::new(vb, c)?),
            Arch::Sit(s) => {
                Generator::Sit(Sit::new(vb, &s.net)?, Transport::new(s.path, s.prediction, s.loss_weight, None, None))
            }
            Arch::Ldm(c) => Generator::Ldm(Ldm::new(vb, c)?),
        };
        let unused = w.unused();
        if !unused.is_empty() {
            let shown: Vec<&String> = unused.iter().take(3).collect();
            return Err(Error::format(
                &self.source,
                format!("{} tensors the {} architecture does not have (e.g. {shown:?}): is the config right for these weights?", unused.len(), self.arch.kind()),
            ));
        }
        Ok(g)
    }
}
