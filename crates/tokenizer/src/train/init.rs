//! The weights a training run starts from: torch's default initialisation for the encoder and decoder
//! (`RandomWeights::torch_init`), and per quantizer the official or published codebook and projector.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gen_nn::RandomWeights;
use gen_runtime::{Error, Result, Rng};

use crate::config::{QuantizerKind, VqConfig};
use crate::model::VqModel;

/// The frozen LC codebook from `file` (safetensors or `.pth`), checked against the config.
pub fn read_frozen_codebook(file: &Path, cfg: &VqConfig) -> Result<Tensor> {
    let t = crate::load::read_codebook(file)?.to_dtype(DType::F32)?;
    let (n, d) = t.dims2()?;
    if (n, d) != (cfg.codebook_size, cfg.codebook_dim) {
        return Err(Error::format(
            file,
            format!(
                "codebook is {n} × {d} but the config asks for codebook_size {} × codebook_dim {}",
                cfg.codebook_size, cfg.codebook_dim
            ),
        ));
    }
    Ok(t)
}

/// Every tensor of a fresh model, by official name: `codebook` is LC's frozen codebook.
pub fn initial_weights(cfg: &VqConfig, codebook: Option<Tensor>, seed: u64) -> Result<HashMap<String, Tensor>> {
    let dev = &Device::Cpu;
    let mut rng = Rng::new(seed ^ 0xC0DE_B00C);
    let (n, d, e) = (cfg.codebook_size, cfg.codebook_dim, cfg.embed_dim);
    let rw = RandomWeights::torch_init(seed);
    let mut preset: Vec<(&str, Tensor)> = Vec::new();
    match cfg.quantizer {
        QuantizerKind::Lc => {
            let cb = codebook.ok_or_else(|| Error::config("codebook.file", "the LC quantizer needs its codebook"))?;
            preset.push(("tok_embeddings.weight", cb));
            if cfg.projector == crate::config::Projector::Linear {
                // official: normal_(std = embed_dim ** -0.5)
                preset.push(("codebook_projection.weight", rng.randn((e, d), (e as f64).powf(-0.5), dev)?));
            }
        }
        // SimVQ: the frozen codebook N(0, 1/e); the linear layer keeps torch's default init
        QuantizerKind::Simvq => preset.push(("tok_embeddings.weight", rng.randn((n, e), (e as f64).powf(-0.5), dev)?)),
        // official `--tuning_codebook -1` (LlamaGen draws FC's the same way)
        QuantizerKind::Vqgan | QuantizerKind::Fc | QuantizerKind::Ema => {
            let b = 1.0 / n as f64;
            preset.push(("tok_embeddings.weight", rng.rand_uniform((n, e), -b, b, dev)?));
        }
    }
    for (name, t) in preset {
        rw.preset(name, t);
    }
    VqModel::new(rw.var_builder(DType::F32, dev), cfg)?;
    Ok(rw.tensors())
}

/// Whether a tensor of the model is trained by the optimizer (the frozen codebooks and the EMA rows are not).
pub fn trainable(cfg: &VqConfig, name: &str) -> bool {
    name != "tok_embeddings.weight" || cfg.quantizer.learns_codebook()
}
