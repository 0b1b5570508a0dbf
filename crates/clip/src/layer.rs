//! The transformer layer both CLIP towers are made of, in Hugging Face's layout (`CLIPEncoderLayer`:
//! pre-LN self-attention with separate q/k/v/out projections, then a quick-GELU MLP of 4× width).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::attention::{attend_heads_masked, Mask};
use gen_nn::{LayerNorm, Linear};

/// `x · sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// One `CLIPEncoderLayer` under `…encoder.layers.{i}`.
pub struct EncoderLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    pub fn new(l: VarBuilder, width: usize) -> Result<Self> {
        let a = l.pp("self_attn");
        Ok(EncoderLayer {
            ln1: LayerNorm::new(l.pp("layer_norm1"), width, 1e-5)?,
            q: Linear::new(a.pp("q_proj"), width, width)?,
            k: Linear::new(a.pp("k_proj"), width, width)?,
            v: Linear::new(a.pp("v_proj"), width, width)?,
            out: Linear::new(a.pp("out_proj"), width, width)?,
            ln2: LayerNorm::new(l.pp("layer_norm2"), width, 1e-5)?,
            fc1: Linear::new(l.pp("mlp").pp("fc1"), width, 4 * width)?,
            fc2: Linear::new(l.pp("mlp").pp("fc2"), 4 * width, width)?,
        })
    }

    /// h [B, T, W] → [B, T, W]; heads of `W / heads` channels scaled by their dim^−½.
    pub fn forward(&self, h: &Tensor, heads: usize, mask: Mask) -> Result<Tensor> {
        let scale = 1.0 / ((h.dim(2)? / heads) as f64).sqrt();
        let a = self.ln1.forward(h)?;
        let o =
            attend_heads_masked(&self.q.forward(&a)?, &self.k.forward(&a)?, &self.v.forward(&a)?, heads, scale, mask)?;
        let h = (h + self.out.forward(&o)?)?;
        let m = self.fc2.forward(&quick_gelu(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

/// The `encoder.layers.*` of a tower: how many there are is read off the weights.
pub fn encoder_layers(vb: VarBuilder, width: usize, count: usize) -> Result<Vec<EncoderLayer>> {
    (0..count).map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), width)).collect()
}

/// How many `{prefix}.encoder.layers.{i}` a checkpoint holds.
pub fn count_layers(shape: &dyn Fn(&str) -> Option<Vec<usize>>, prefix: &str) -> usize {
    (0..).take_while(|i| shape(&format!("{prefix}.encoder.layers.{i}.self_attn.q_proj.weight")).is_some()).count()
}
