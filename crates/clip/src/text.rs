//! The CLIP text tower (Hugging Face's `CLIPTextModelWithProjection`): token + learned position
//! embeddings, causal encoder layers, `final_layer_norm`, the hidden state at the end-of-text token
//! projected by `text_projection` (no bias). The architecture is read off the weights; heads are 64
//! channels wide, as in every OpenAI CLIP.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::attention::Mask;
use gen_nn::{LayerNorm, Linear};

use crate::layer::{count_layers, encoder_layers, EncoderLayer};

#[derive(Clone, Debug, PartialEq)]
pub struct ClipTextConfig {
    pub vocab: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// The longest token sequence (77 for OpenAI's CLIP).
    pub positions: usize,
    pub output_dim: usize,
}

impl ClipTextConfig {
    /// The architecture from tensor shapes; errors name the key at fault.
    pub fn infer(shape: &dyn Fn(&str) -> Option<Vec<usize>>) -> gen_runtime::Result<Self> {
        let need = |k: &str| {
            shape(k).filter(|s| s.len() == 2).ok_or_else(|| {
                gen_runtime::Error::config(
                    k,
                    format!("missing or not a matrix: expected Hugging Face's CLIP layout ({})", crate::WHERE),
                )
            })
        };
        let tok = need("text_model.embeddings.token_embedding.weight")?;
        let pos = need("text_model.embeddings.position_embedding.weight")?;
        let proj = need("text_projection.weight")?;
        let width = tok[1];
        if width % 64 != 0 || pos[1] != width || proj[1] != width {
            return Err(gen_runtime::Error::config(
                "text_model.embeddings",
                format!("width {width} is not a multiple of 64, or the position / projection widths differ"),
            ));
        }
        let layers = count_layers(shape, "text_model");
        Ok(ClipTextConfig { vocab: tok[0], width, layers, heads: width / 64, positions: pos[0], output_dim: proj[0] })
    }
}

pub struct ClipText {
    pub config: ClipTextConfig,
    token_embedding: Tensor,    // [vocab, W]
    position_embedding: Tensor, // [positions, W]
    layers: Vec<EncoderLayer>,
    final_ln: LayerNorm,
    projection: Linear,
}

impl ClipText {
    pub fn new(vb: VarBuilder, config: ClipTextConfig) -> Result<Self> {
        let (w, tm) = (config.width, vb.pp("text_model"));
        let emb = tm.pp("embeddings");
        Ok(ClipText {
            token_embedding: emb.get((config.vocab, w), "token_embedding.weight")?,
            position_embedding: emb.get((config.positions, w), "position_embedding.weight")?,
            layers: encoder_layers(tm.clone(), w, config.layers)?,
            final_ln: LayerNorm::new(tm.pp("final_layer_norm"), w, 1e-5)?,
            projection: Linear::new_no_bias(vb.pp("text_projection"), w, config.output_dim)?,
            config,
        })
    }

    /// One token sequence → its `last_hidden_state` [T, W] (after the final LayerNorm).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        if ids.is_empty() || ids.len() > c.positions {
            candle_core::bail!("CLIP text: {} tokens, the model takes 1 to {}", ids.len(), c.positions);
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab) {
            candle_core::bail!("CLIP text: token id {bad} is outside the vocabulary of {}", c.vocab);
        }
        let dev = self.token_embedding.device();
        let x = self.token_embedding.index_select(&Tensor::new(ids, dev)?, 0)?;
        let mut h = (x + self.position_embedding.narrow(0, 0, ids.len())?)?.unsqueeze(0)?;
        for l in &self.layers {
            h = l.forward(&h, c.heads, Mask::causal())?;
        }
        self.final_ln.forward(&h.squeeze(0)?)
    }

    /// `text_embeds`: the projected hidden state at the first `eos` token [output_dim] (the causal mask
    /// means nothing after it matters).
    pub fn embed(&self, ids: &[u32], eos: u32) -> Result<Tensor> {
        let Some(at) = ids.iter().position(|&i| i == eos) else {
            candle_core::bail!("CLIP text: the token sequence has no end-of-text token ({eos})");
        };
        let h = self.hidden_states(&ids[..=at])?;
        self.projection.forward(&h.narrow(0, at, 1)?)?.squeeze(0)
    }
}

/// Loads the text half of a CLIP checkpoint (safetensors or a `.pth` state dict); the vision half is ignored.
pub fn load_clip_text(path: &std::path::Path, dev: &Device) -> gen_runtime::Result<ClipText> {
    let tensors = crate::read_weights(path)?;
    let config = ClipTextConfig::infer(&|k| tensors.get(k).map(|t| t.dims().to_vec())).map_err(|e| e.at(path))?;
    let w = gen_nn::Weights::new(path.display().to_string(), tensors);
    Ok(ClipText::new(w.var_builder(DType::F32, dev), config)?)
}
