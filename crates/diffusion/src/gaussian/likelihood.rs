//! `diffusion/diffusion_utils.py`: the Gaussian KL and the discretised Gaussian log-likelihood of the
//! variational bound, as Candle ops (so the learned variance gets its gradient).

use candle_core::{Result, Tensor};

/// `normal_kl`: KL(N(μ₁, e^{lv₁}) ‖ N(μ₂, e^{lv₂})) elementwise, in nats.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let a = ((logvar2 - logvar1)? - 1.0)?;
    let b = (logvar1 - logvar2)?.exp()?;
    let c = (mean1 - mean2)?.sqr()?.mul(&logvar2.neg()?.exp()?)?;
    ((a + b)? + c)? * 0.5
}

/// `approx_standard_normal_cdf`: `0.5·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let cube = x.sqr()?.mul(x)?;
    let inner = ((x + (cube * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    (inner.tanh()? + 1.0)? * 0.5
}

/// `discretized_gaussian_log_likelihood(x, means, log_scales)`: log-probability of the 8-bit bin of width
/// 2/255 around x, with open-ended bins below −0.999 and above 0.999; logs clamped at 1e-12.
pub fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Result<Tensor> {
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&inv_stdv.mul(&(&centered + 1.0 / 255.0)?)?)?;
    let cdf_min = approx_standard_normal_cdf(&inv_stdv.mul(&(&centered - 1.0 / 255.0)?)?)?;
    let log_cdf_plus = cdf_plus.maximum(1e-12)?.log()?;
    let log_one_minus_cdf_min = cdf_min.affine(-1.0, 1.0)?.maximum(1e-12)?.log()?;
    let log_delta = (&cdf_plus - &cdf_min)?.maximum(1e-12)?.log()?;
    let low = x.lt(-0.999)?;
    let high = x.gt(0.999)?;
    low.where_cond(&log_cdf_plus, &high.where_cond(&log_one_minus_cdf_min, &log_delta)?)
}

/// `mean_flat`: the mean over every dimension but the batch, [B].
pub fn mean_flat(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(1)?.mean(1)
}
