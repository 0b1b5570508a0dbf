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
        self.hidden_states_batch(&[ids])?.squeeze(0)
    }

    /// Token sequences of one length → their `last_hidden_state` [N, T, W].
    fn hidden_states_batch(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let c = &self.config;
        let t = seqs.first().map_or(0, |s| s.len());
        if t == 0 || t > c.positions {
            candle_core::bail!("CLIP text: {t} tokens, the model takes 1 to {}", c.positions);
        }
        if seqs.iter().any(|s| s.len() != t) {
            candle_core::bail!("CLIP text: a batch of token sequences must share one length");
        }
        if let Some(&bad) = seqs.iter().flat_map(|s| s.iter()).find(|&&i| i as usize >= c.vocab) {
            candle_core::bail!("CLIP text: token id {bad} is outside the vocabulary of {}", c.vocab);
        }
        let dev = self.token_embedding.device();
        let flat: Vec<u32> = seqs.concat();
        let x = self.token_embedding.index_select(&Tensor::new(flat, dev)?, 0)?.reshape((seqs.len(), t, c.width))?;
        let mut h = x.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        for l in &self.layers {
            h = l.forward(&h, c.heads, Mask::causal())?;
        }
        self.final_ln.forward(&h)
    }

    /// `text_embeds`: the projected hidden state at the first `eos` token [output_dim] (the causal mask
    /// means nothing after it matters).
    pub fn embed(&self, ids: &[u32], eos: u32) -> Result<Tensor> {
        self.embed_batch(&[ids], eos)?.squeeze(0)
    }

    /// [`ClipText::embed`] of many sequences in one pass [N, output_dim]: each is cut at its first `eos`
    /// and padded with `eos` to the longest (the causal mask keeps the padding out of every embedding).
    pub fn embed_batch(&self, seqs: &[&[u32]], eos: u32) -> Result<Tensor> {
        let mut ends = Vec::with_capacity(seqs.len());
        for ids in seqs {
            let Some(at) = ids.iter().position(|&i| i == eos) else {
                candle_core::bail!("CLIP text: the token sequence has no end-of-text token ({eos})");
            };
            ends.push(at);
        }
        let t = ends.iter().max().map_or(0, |&at| at + 1);
        let padded: Vec<Vec<u32>> = seqs
            .iter()
            .zip(&ends)
            .map(|(ids, &at)| ids[..=at].iter().copied().chain(std::iter::repeat(eos)).take(t).collect())
            .collect();
        let h = self.hidden_states_batch(&padded.iter().map(Vec::as_slice).collect::<Vec<_>>())?; // [N, T, W]
        let rows = ends.iter().enumerate().map(|(n, &at)| h.get(n)?.narrow(0, at, 1)).collect::<Result<Vec<_>>>()?;
        self.projection.forward(&Tensor::cat(&rows, 0)?)
    }
}

/// Loads the text half of a CLIP checkpoint (safetensors or a `.pth` state dict); the vision half is ignored.
pub fn load_clip_text(path: &std::path::Path, dev: &Device) -> gen_runtime::Result<ClipText> {
    let tensors = crate::read_weights(path)?;
    let config = ClipTextConfig::infer(&|k| tensors.get(k).map(|t| t.dims().to_vec())).map_err(|e| e.at(path))?;
    let w = gen_nn::Weights::new(path.display().to_string(), tensors);
    Ok(ClipText::new(w.var_builder(DType::F32, dev), config)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gen_nn::RandomWeights;

    #[test]
    fn a_batch_of_ragged_sequences_embeds_as_each_does_alone() {
        let config = ClipTextConfig { vocab: 20, width: 64, layers: 2, heads: 1, positions: 12, output_dim: 8 };
        let model = ClipText::new(RandomWeights::new(3).var_builder(DType::F32, &Device::Cpu), config).unwrap();
        let eos = 19;
        // different lengths, one with tokens after its end token (ignored), one at the longest
        let seqs: [&[u32]; 3] = [&[0, 5, 19], &[0, 7, 8, 9, 19, 4, 4], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 19]];
        let batch = model.embed_batch(&seqs, eos).unwrap();
        assert_eq!(batch.dims(), &[3, 8]);
        for (n, ids) in seqs.iter().enumerate() {
            let alone = model.embed(ids, eos).unwrap();
            let d =
                (batch.get(n).unwrap() - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "sequence {n}: {d}");
        }
        assert!(model.embed_batch(&[&[0, 5]], eos).unwrap_err().to_string().contains("no end-of-text"));
    }
}
