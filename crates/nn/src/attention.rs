//! Scaled dot-product attention over token sequences, with gradients (uses `ops::softmax`, not the
//! gradient-less `softmax_last_dim`).

use candle_core::{Result, Tensor, D};

/// `softmax(q·kᵀ·scale)·v` for q, k, v of shape [B, T, C] (B may fold heads). Returns [B, T, C].
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let w = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * scale)?; // [B, Tq, Tk]
    let w = candle_nn::ops::softmax(&w, D::Minus1)?;
    w.matmul(&v.contiguous()?)
}
