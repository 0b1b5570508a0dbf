//! Loading a tokenizer from a model folder, an official `.pth` checkpoint (as released, `state_dict` or
//! `model` layout, discriminator and LPIPS weights ignored), or a bare safetensors state dict; and
//! writing model folders (`gen convert`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_nn::Weights;
use gen_runtime::model_dir::{ModelDir, ModelKind, NewModelDir};
use gen_runtime::pth::{PthFile, PthValue};
use gen_runtime::{io, Error, Result};

use crate::config::VqConfig;
use crate::model::VqModel;
use crate::quantizer::lc::PROJECTED_KEY;

/// Where the weights came from and what they hold, before a model is built.
pub struct TokenizerWeights {
    pub source: PathBuf,
    pub config: VqConfig,
    pub tensors: HashMap<String, Tensor>,
}

/// The frozen codebook [N, D]: a bare tensor `.pth` (`codebook-100K.pth`) or a safetensors file with
/// exactly one tensor.
pub fn read_codebook(path: &Path) -> Result<Tensor> {
    let t = if path.extension().is_some_and(|e| e == "safetensors") {
        let mut all = io::load_safetensors(path, &Device::Cpu)?;
        if all.len() != 1 {
            let mut names: Vec<String> = all.keys().cloned().collect();
            names.sort();
            return Err(Error::format(
                path,
                format!("expected one codebook tensor [N, D], found {} tensors ({})", all.len(), names.join(", ")),
            ));
        }
        let name = all.keys().next().cloned().unwrap_or_default();
        all.remove(&name).ok_or_else(|| Error::format(path, "holds no tensor"))?
    } else {
        PthFile::open(path)?.bare_tensor()?
    };
    if t.rank() != 2 || t.dims().contains(&0) {
        return Err(Error::format(path, format!("codebook must be a 2-D tensor [N, D], found shape {:?}", t.dims())));
    }
    Ok(t)
}

/// The input width of the projector stored with the weights, if any (checked to be a matrix).
fn projector_input_dim(source: &Path, tensors: &HashMap<String, Tensor>) -> Result<Option<usize>> {
    for key in ["codebook_projection.weight", "codebook_projection.0.weight"] {
        if let Some(w) = tensors.get(key) {
            return match w.dims() {
                &[_, d] => Ok(Some(d)),
                dims => Err(Error::format(source, format!("tensor '{key}' has shape {dims:?}, expected [out, in]"))),
            };
        }
    }
    Ok(None)
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
    let (source, tensors, dir_config, hint) = if path.is_dir() {
        let dir = ModelDir::open(path, ModelKind::Tokenizer)?;
        let cfg: VqConfig = dir.architecture()?;
        cfg.validate().map_err(|e| e.at(&dir.config_path()))?;
        (dir.weights_path(), dir.load_weights()?, Some(cfg), None)
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        (path.to_path_buf(), io::load_safetensors(path, &Device::Cpu)?, None, None)
    } else {
        let f = PthFile::open(path)?;
        let hint = pth_image_size(&f);
        (path.to_path_buf(), f.tensors(None)?.into_iter().collect(), None, hint)
    };
    from_tensors(source, tensors, dir_config, hint, codebook, resolution)
}

/// A tokenizer from a state dict already in memory: the `vqgan.*` half of an official GPT-LC container
/// (prefix stripped), its architecture read off the shapes as for an official `.pth`.
pub fn tokenizer_from_state_dict(
    source: &Path,
    tensors: HashMap<String, Tensor>,
    codebook: Option<&Path>,
    resolution: Option<usize>,
) -> Result<TokenizerWeights> {
    from_tensors(source.to_path_buf(), tensors, None, None, codebook, resolution)
}

fn from_tensors(
    source: PathBuf,
    mut tensors: HashMap<String, Tensor>,
    dir_config: Option<VqConfig>,
    hint: Option<usize>,
    codebook: Option<&Path>,
    resolution: Option<usize>,
) -> Result<TokenizerWeights> {
    if let Some(cb_path) = codebook {
        let cb = read_codebook(cb_path)?;
        let d = cb.dim(1)?;
        if let Some(want) = projector_input_dim(&source, &tensors)? {
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
        Some(c) => c,
        None => {
            let mut shapes: HashMap<String, Vec<usize>> =
                tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
            if !shapes.contains_key("tok_embeddings.weight") {
                if let Some(p) = shapes.get(PROJECTED_KEY).cloned() {
                    shapes.insert("tok_embeddings.weight".into(), p);
                }
            }
            let res = resolution.or(hint).unwrap_or(256);
            VqConfig::infer(&shapes, res).map_err(|e| blame_resolution(e, resolution, &source))?
        }
    };
    let config = match resolution {
        Some(r) => {
            let config = config.at_resolution(r);
            config.validate().map_err(|e| blame_resolution(e, resolution, &source))?;
            config
        }
        None => config,
    };
    Ok(TokenizerWeights { source, config, tensors })
}

/// A resolution that does not fit the model is the `--resolution` the user gave, when they gave one;
/// any other config error is the file's.
fn blame_resolution(e: Error, given: Option<usize>, source: &Path) -> Error {
    match (e, given) {
        (Error::Config { field, msg, .. }, Some(r)) if field == "resolution" => {
            Error::invalid(format!("--resolution {r}: {msg}"))
        }
        (e, _) => e.at(source),
    }
}

impl TokenizerWeights {
    /// Builds the model; every missing key or wrong shape is an error naming the file, key and shapes.
    pub fn build(&self, dtype: DType, dev: &Device) -> Result<(VqModel, Weights)> {
        let weights = Weights::new(self.source.display().to_string(), self.tensors.clone());
        let model = VqModel::new(weights.var_builder(dtype, dev), &self.config)?;
        Ok((model, weights))
    }
}

/// The hash generators and shards record for a tokenizer: the sha256 of a model folder's
/// `model.safetensors` (checked against the one its `config.toml` records), or of the file itself.
pub fn tokenizer_sha256(path: &Path) -> Result<String> {
    if path.is_dir() {
        ModelDir::open(path, ModelKind::Tokenizer)?.verify()
    } else {
        io::sha256_file(path)
    }
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
    model.quantizer.freeze_projection()?;
    Ok(model)
}

/// Writes a model folder: `config.toml`, `model.safetensors` (only the tensors the tokenizer uses, under
/// official names, plus the projected codebook) and `MODEL_CARD.md`. `keep_codebook = false` drops the
/// raw codebook (inference-only folder: 100k × 768 f32 is 300 MB). Returns the tensor count written.
pub fn write_model_dir(w: &TokenizerWeights, out: &Path, keep_codebook: bool, note: &str) -> Result<usize> {
    let (mut model, weights) = w.build(DType::F32, &Device::Cpu)?;
    model.quantizer.freeze_projection()?;
    let projected = model.quantizer.codebook()?;
    // only LC / SimVQ compute their codebook; the other kinds' rows are the codebook itself
    let lc = model.quantizer.as_lc().is_some();
    let mut names = weights.names_used();
    names.retain(|n| n != PROJECTED_KEY && (keep_codebook || !lc || n != "tok_embeddings.weight"));
    let mut out_tensors: Vec<(String, Tensor)> = names.iter().map(|n| (n.clone(), w.tensors[n].clone())).collect();
    if lc {
        out_tensors.push((PROJECTED_KEY.to_string(), projected));
    }
    let c = &w.config;
    let card = format!(
        "# VQGAN-LC tokenizer\n\nFrom `{}`.\n\n- resolution {}², latent {}×{}, embed_dim {}\n\
         - quantizer {}, codebook {} × {}, projector {:?}\n- ch {} × {:?}, {} res blocks, attention at {:?}\n\n{}\n",
        w.source.display(),
        c.resolution,
        c.latent_size(),
        c.latent_size(),
        c.embed_dim,
        c.quantizer.name(),
        c.codebook_size,
        c.codebook_dim,
        c.projector,
        c.ch,
        c.ch_mult,
        c.num_res_blocks,
        c.attn_resolutions,
        note
    );
    NewModelDir {
        kind: ModelKind::Tokenizer,
        architecture: c,
        extra: vec![],
        tables: vec![],
        tensors: &out_tensors,
        metadata: HashMap::from([("format".to_string(), "gen-tokenizer".to_string())]),
        card,
    }
    .write(out)?;
    Ok(out_tensors.len())
}
