//! Quantizers: the LC quantizer (frozen codebook + trained projector) and the official EMA branch.

pub mod ema;
pub mod lc;
pub mod nearest;

pub use ema::EmaQuantizer;
pub use lc::LcQuantizer;

use candle_core::Tensor;

/// What quantising a latent gives.
pub struct Quantized {
    /// Straight-through output `z + sg(z_q − z)`, NCHW: its value is the code rows, its gradient goes to z.
    pub z_q: Tensor,
    /// The official quantisation loss (a scalar).
    pub loss: Tensor,
    /// Code ids, U32 [B, h·w], row-major over (y, x).
    pub indices: Tensor,
}
