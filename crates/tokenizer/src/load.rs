//! Loading a tokenizer from a model folder, an official `.pth` checkpoint (as released, `state_dict` or
//! `model` layout, discriminator and LPIPS weights ignored), or a bare safetensors state dict; and
//! writing model folders (`gen convert`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_nn::Weights;
use gen_runtime::pth::{PthFile, PthValue};
use gen_runtime::{io, Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::VqConfig;
use crate::model::VqModel;
use crate::quantizer::lc::PROJECTED_KEY;

pub const FORMAT_VERSION: u32 = 1;

/// `config.toml` of a tokenizer model folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizerDirConfig {
    pub kind: String,
    pub format_version: u32,
    pub tokenizer: VqConfig,
}

/// Where the weights came from and what they hold, before a model is built.
pub struct TokenizerWeights {
    pub source: PathBuf,
    pub config: VqConfig,
    pub tensors: HashMap<String, Tensor>,
}

fn read_codebook(path: &Path) -> Result<Tensor> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let t = io::load_safetensors(path, &Device::Cpu)?;
        if t.len() != 1 {
            return Err(Error::format(path, format!("expected one codebook tensor [N, D], found {} tensors", t.len())));
        }
        return Ok(t.into_values().next().expect("one tensor"));
    }
    let t = PthFile::open(path)?.bare_tensor()?;
    if t.rank() != 2 {
        return Err(Error::format(path, format!("codebook must be a 2-D tensor [N, D], found shape {:?}", t.dims())));
    }
    Ok(t)
}

/// `args.image_size` of an official checkpoint, if present.
fn pth_image_size(f: &PthFile) -> Option<usize> {
    match f.get("args")? {
        PthValue::Namespace(fields) => fields.iter().find(|(k, _)| k == "image_size").and_then(|(_, v)| match v {
            PthValue::Int(i) if *i > 0 => Some(*i as usize),
            _ => None,
        }),
        _ => None,
    }
}

/// Reads weights and works out the architecture. `codebook` replaces `tok_embeddings.weight` (the official
/// `codebook-100K.pth`); `resolution` overrides the training image size (it places attention layers).
pub fn read_weights(path: &Path, codebook: Option<&Path>, resolution: Option<usize>) -> Result<TokenizerWeights> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
    }
    let (source, mut tensors, dir_config, hint) = if path.is_dir() {
        let cfg_path = path.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: TokenizerDirConfig =
            toml::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string().replace('\n', " ")))?;
        if cfg.kind != "tokenizer" {
            return Err(Error::format(&cfg_path, format!("kind is '{}', expected 'tokenizer'", cfg.kind)));
        }
        let st = path.join("model.safetensors");
        (st.clone(), io::load_safetensors(&st, &Device::Cpu)?, Some(cfg.tokenizer), None)
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        (path.to_path_buf(), io::load_safetensors(path, &Device::Cpu)?, None, None)
    } else {
        let f = PthFile::open(path)?;
        let hint = pth_image_size(&f);
        (path.to_path_buf(), f.tensors(None)?.into_iter().collect(), None, hint)
    };

    if let Some(cb_path) = codebook {
        let cb = read_codebook(cb_path)?;
        let d = cb.dim(1)?;
        let proj_in = tensors
            .get("codebook_projection.weight")
            .or_else(|| tensors.get("codebook_projection.0.weight"))
            .map(|w| w.dims()[1]);
        if let Some(want) = proj_in {
            if want != d {
                return Err(Error::format(
                    cb_path,
                    format!(
                        "codebook has dim {d} (shape {:?}) but the projector of {} expects dim {want}",
                        cb.dims(),
                        source.display()
                    ),
                ));
            }
        }
        tensors.insert("tok_embeddings.weight".into(), cb);
        tensors.remove(PROJECTED_KEY);
    }
    if !tensors.contains_key("tok_embeddings.weight") && !tensors.contains_key(PROJECTED_KEY) {
        return Err(Error::MissingKey {
            path: source,
            key: "tok_embeddings.weight".into(),
            expected: Some("[N, D]; pass the codebook with --codebook codebook-100K.pth".into()),
        });
    }
    let config = match dir_config {
        Some(c) => {
            c.validate().map_err(|m| Error::format(path.join("config.toml"), m))?;
            c
        }
        None => {
            let mut shapes: HashMap<String, Vec<usize>> =
                tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
            if !shapes.contains_key("tok_embeddings.weight") {
                if let Some(p) = shapes.get(PROJECTED_KEY).cloned() {
                    shapes.insert("tok_embeddings.weight".into(), p);
                }
            }
            let res = resolution.or(hint).unwrap_or(256);
            VqConfig::infer(&shapes, res).map_err(|m| Error::format(&source, m))?
        }
    };
    let config = match resolution {
        Some(r) => VqConfig { resolution: r, ..config },
        None => config,
    };
    Ok(TokenizerWeights { source, config, tensors })
}

impl TokenizerWeights {
    /// Builds the model; every missing key or wrong shape is an error naming the file, key and shapes.
    pub fn build(&self, dtype: DType, dev: &Device) -> Result<(VqModel, Weights)> {
        let weights = Weights::new(self.source.display().to_string(), self.tensors.clone());
        let model = VqModel::new(weights.var_builder(dtype, dev), &self.config).map_err(candle_to_error)?;
        Ok((model, weights))
    }
}

/// Candle errors from our weight backend already name the file and key; keep their message on one line.
pub fn candle_to_error(e: candle_core::Error) -> Error {
    let msg = match &e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        _ => e.to_string(),
    };
    Error::Invalid(msg.lines().next().unwrap_or_default().to_string())
}

/// Loads a tokenizer for inference: the projected codebook is computed once.
pub fn load_tokenizer(
    path: &Path,
    codebook: Option<&Path>,
    resolution: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> Result<VqModel> {
    let w = read_weights(path, codebook, resolution)?;
    let (mut model, _) = w.build(dtype, dev)?;
    model.quantizer.freeze_projection().map_err(candle_to_error)?;
    Ok(model)
}

/// Writes a model folder: `config.toml`, `model.safetensors` (only the tensors the tokenizer uses, under
/// official names, plus the projected codebook) and `MODEL_CARD.md`. `keep_codebook = false` drops the
/// raw codebook (inference-only folder: 100k × 768 f32 is 300 MB). Returns the tensor count written.
pub fn write_model_dir(w: &TokenizerWeights, out: &Path, keep_codebook: bool, note: &str) -> Result<usize> {
    let (mut model, weights) = w.build(DType::F32, &Device::Cpu)?;
    model.quantizer.freeze_projection().map_err(candle_to_error)?;
    let projected = model.quantizer.codebook().map_err(candle_to_error)?;
    let mut names = weights.names_used();
    names.retain(|n| n != PROJECTED_KEY && (keep_codebook || n != "tok_embeddings.weight"));
    let mut out_tensors: Vec<(String, Tensor)> = names.iter().map(|n| (n.clone(), w.tensors[n].clone())).collect();
    out_tensors.push((PROJECTED_KEY.to_string(), projected));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let meta = HashMap::from([("format".to_string(), "gen-tokenizer".to_string())]);
    io::save_safetensors(&out.join("model.safetensors"), &out_tensors, Some(meta))?;
    let cfg =
        TokenizerDirConfig { kind: "tokenizer".into(), format_version: FORMAT_VERSION, tokenizer: w.config.clone() };
    let text = toml::to_string(&cfg).map_err(|e| Error::Invalid(format!("cannot write config.toml: {e}")))?;
    io::write_atomic(&out.join("config.toml"), text.as_bytes())?;
    let c = &w.config;
    let card = format!(
        "# VQGAN-LC tokenizer\n\nConverted by `gen convert` from `{}`.\n\n- resolution {}², latent {}×{}, embed_dim {}\n\
         - codebook {} × {} (frozen), projector {:?}\n- ch {} × {:?}, {} res blocks, attention at {:?}\n\n{}\n",
        w.source.display(),
        c.resolution,
        c.latent_size(),
        c.latent_size(),
        c.embed_dim,
        c.codebook_size,
        c.codebook_dim,
        c.projector,
        c.ch,
        c.ch_mult,
        c.num_res_blocks,
        c.attn_resolutions,
        note
    );
    io::write_atomic(&out.join("MODEL_CARD.md"), card.as_bytes())?;
    Ok(out_tensors.len())
}
