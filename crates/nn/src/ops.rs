//! Elementwise and resampling ops with correct gradients (see CANDLE-NOTES §2 for the ones we avoid).

use candle_core::{Result, Tensor};

/// swish / SiLU: `x·sigmoid(x)`.
pub fn swish(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(x)
}

/// Nearest ×2 upsampling, `F.interpolate(scale_factor=2, mode="nearest")`.
/// Built from reshape + broadcast: Candle's `upsample_nearest2d` drops gradient when its input has another
/// consumer (it assigns instead of accumulating).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?.broadcast_as((b, c, h, 2, w, 2))?.reshape((b, c, 2 * h, 2 * w))
}

/// `mean(|a − b|)` as a scalar tensor.
pub fn l1_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.abs()?.mean_all()
}

/// `mean((a − b)²)` as a scalar tensor.
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}
