//! Quantizers behind one enum that `VqModel` holds:
//! - **LC** (frozen k-means codebook + trained projector; every released VQGAN-LC model) and **SimVQ**
//!   (a frozen *random* codebook reparameterised by one trained linear layer): both `LcQuantizer`;
//! - **VQGAN** (a learned codebook) and **FC** (factorised codes: an l2-normalised lookup in the low-dim
//!   latent, as ViT-VQGAN and LlamaGen): both `LearnedQuantizer`;
//! - **EMA** (codebook rows moved by exponential moving averages, VQ-VAE-2): `EmaQuantizer`, with the
//!   official start (reproduced, it blows unused rows up) or a consistent one (what training uses).

pub mod ema;
pub mod lc;
pub mod learned;
pub mod nearest;

pub use ema::{EmaQuantizer, EmaStart};
pub use lc::LcQuantizer;
pub use learned::LearnedQuantizer;

use candle_core::{DType, Result, Tensor};

/// What quantising a latent gives.
pub struct Quantized {
    /// Straight-through output `z + sg(z_q − z)`, NCHW: its value is the code rows, its gradient goes to z.
    pub z_q: Tensor,
    /// The quantizer's loss term (a scalar; the official training loss weighs it by `rate_q`).
    pub loss: Tensor,
    /// Code ids, U32 [B, h·w], row-major over (y, x).
    pub indices: Tensor,
}

/// Every quantizer `VqModel` can hold.
pub enum Quantizer {
    Lc(LcQuantizer),
    Learned(LearnedQuantizer),
    /// Behind a lock: quantising moves its rows (from `&self`, as the official `quantize` does).
    Ema(std::sync::Mutex<EmaQuantizer>),
}

impl Quantizer {
    /// z [B, e, h, w] → straight-through z_q, loss, ids.
    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        match self {
            Quantizer::Lc(q) => q.quantize(z),
            Quantizer::Learned(q) => q.quantize(z),
            Quantizer::Ema(q) => {
                q.lock().map_err(|_| candle_core::Error::Msg("EMA state poisoned".into()))?.quantize(z)
            }
        }
    }

    /// The vectors a code id stands for, [N, e] (projected, normalised or moved as the kind says).
    pub fn codebook(&self) -> Result<Tensor> {
        match self {
            Quantizer::Lc(q) => q.codebook(),
            Quantizer::Learned(q) => q.codebook(),
            Quantizer::Ema(q) => {
                let q = q.lock().map_err(|_| candle_core::Error::Msg("EMA state poisoned".into()))?;
                q.embedding_tensor(&candle_core::Device::Cpu)
            }
        }
    }

    pub fn codebook_size(&self) -> Result<usize> {
        match self {
            Quantizer::Lc(q) => q.codebook_size(),
            Quantizer::Learned(q) => Ok(q.size()),
            Quantizer::Ema(q) => Ok(q.lock().map_err(|_| candle_core::Error::Msg("EMA state poisoned".into()))?.n),
        }
    }

    /// Ids [B, h·w] → code rows as NCHW [B, e, h, w].
    pub fn embed(&self, indices: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let cb = self.codebook()?;
        embed_rows(&cb.to_device(indices.device())?, indices, h, w)
    }

    /// Fixes the codebook for inference where it is computed (LC's projection); a no-op elsewhere.
    pub fn freeze_projection(&mut self) -> Result<()> {
        match self {
            Quantizer::Lc(q) => q.freeze_projection(),
            _ => Ok(()),
        }
    }

    /// The LC quantizer, if this is one (LC or SimVQ).
    pub fn as_lc(&self) -> Option<&LcQuantizer> {
        match self {
            Quantizer::Lc(q) => Some(q),
            _ => None,
        }
    }
}

/// Code rows `cb` [N, e] at `indices` [B, h·w] as NCHW [B, e, h, w]; an id past the codebook is an error
/// naming it.
pub fn embed_rows(cb: &Tensor, indices: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, l) = indices.dims2()?;
    if l != h * w {
        candle_core::bail!("{l} tokens per image do not fill a {h}×{w} grid");
    }
    let (n, e) = cb.dims2()?;
    let ids = indices.flatten_all()?.to_dtype(DType::U32)?;
    if let Some(&bad) = ids.to_vec1::<u32>()?.iter().find(|&&i| i as usize >= n) {
        candle_core::bail!("token id {bad} is out of range for a codebook of {n} entries");
    }
    cb.index_select(&ids, 0)?.reshape((b, h, w, e))?.permute((0, 3, 1, 2))?.contiguous()
}

/// z [B, e, h, w] → rows [B·h·w, e] (b c h w → (b h w) c).
pub fn rows(z: &Tensor) -> Result<Tensor> {
    let (b, e, h, w) = z.dims4()?;
    z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))
}

/// Rows [B·h·w, e] → NCHW [B, e, h, w].
pub(crate) fn unrows(r: &Tensor, (b, e, h, w): (usize, usize, usize, usize)) -> Result<Tensor> {
    r.reshape((b, h, w, e))?.permute((0, 3, 1, 2))?.contiguous()
}
