//! The reverse chains: DDPM ancestral sampling (`p_sample_loop_progressive`) and DDIM with η
//! (`ddim_sample_loop_progressive`), over any [`Denoiser`].

use candle_core::{Result, Tensor};

use super::GaussianDiffusion;
use crate::denoiser::Denoiser;
use crate::noise::Noise;

/// The sampler of a Gaussian diffusion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GaussianSampler {
    Ddpm,
    Ddim { eta: f64 },
}

/// One finished step: its number (0 = the first, at the noisiest timestep), the new state, the x₀
/// prediction it came from.
pub struct Step<'a> {
    pub index: usize,
    pub sample: &'a Tensor,
    pub pred_xstart: &'a Tensor,
}

/// Runs the whole chain from x_T (spaced steps T−1 … 0), calling `on_step` after each step; returns x₀.
/// `clip` clamps the predicted x₀ to [−1, 1] (the official DiT-LC evaluation does not).
#[allow(clippy::too_many_arguments)]
pub fn sample_loop(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser,
    x_t: Tensor,
    y: &Tensor,
    sampler: GaussianSampler,
    clip: bool,
    noise: &mut dyn Noise,
    on_step: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<Tensor> {
    let b = x_t.dim(0)?;
    let mut x = x_t;
    for (index, i) in (0..diffusion.num_steps()).rev().enumerate() {
        let t = vec![i; b];
        let out = model.forward(&x, &diffusion.model_timesteps(&t, x.device())?.to_dtype(x.dtype())?, y)?;
        let mv = diffusion.p_mean_variance(&out, &x, &t, clip)?;
        let n = noise.like(&x)?;
        x = match sampler {
            GaussianSampler::Ddpm => diffusion.p_sample(&mv, &t, &n)?,
            GaussianSampler::Ddim { eta } => diffusion.ddim_sample(&mv, &x, &t, eta, &n)?,
        };
        on_step(Step { index, sample: &x, pred_xstart: &mv.pred_xstart })?;
    }
    Ok(x)
}
