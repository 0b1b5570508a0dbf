//! `LatentDiffusion.register_schedule` ("linear": betas = linspace(√start, √end, T)², ε-parameterisation,
//! v_posterior 0) and its training loss `p_losses` (l2 on ε; the VLB term is only logged).

use candle_core::{Result, Tensor};

use super::config::LdmConfig;
use crate::gaussian::likelihood::mean_flat;
use crate::gaussian::{GaussianDiffusion, Schedule, VarianceKind};

/// `torch.linspace(start, end, n, dtype=float64)`: the first half counts up from start, the second
/// down from end (so the last value is exactly `end`).
pub fn torch_linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i < n / 2 { start + i as f64 * step } else { end - (n - 1 - i) as f64 * step }).collect()
}

/// LDM's "linear" betas: `linspace(√start, √end, n)²`.
pub fn ldm_betas(start: f64, end: f64, n: usize) -> Vec<f64> {
    torch_linspace_f64(start.sqrt(), end.sqrt(), n).into_iter().map(|b| b * b).collect()
}

/// The f64 schedule (as numpy computes it) and `lvlb_weights` (f32, from the f32 buffers).
#[derive(Clone, Debug)]
pub struct LdmSchedule {
    pub schedule: Schedule,
    pub lvlb_weights: Vec<f32>,
}

impl LdmSchedule {
    pub fn new(config: &LdmConfig) -> Self {
        let mut s = Schedule::from_betas(ldm_betas(config.linear_start, config.linear_end, config.timesteps));
        // LDM clips the log at 1e-20 instead of copying step 1 into step 0
        s.posterior_log_variance_clipped = s.posterior_variance.iter().map(|v| v.max(1e-20).ln()).collect();
        let f = |v: &[f64], i: usize| v[i] as f32;
        let mut w: Vec<f32> = (0..s.len())
            .map(|i| {
                let (b, pv, ac) = (f(&s.betas, i), f(&s.posterior_variance, i), f(&s.alphas_cumprod, i));
                let alpha = (1.0 - s.betas[i]) as f32;
                b.powi(2) / (2.0 * pv * alpha * (1.0 - ac))
            })
            .collect();
        w[0] = w[1];
        LdmSchedule { schedule: s, lvlb_weights: w }
    }

    /// The same chain as a [`GaussianDiffusion`] (fixed small variance, as LDM's `p_sample`), respaced
    /// by `keep`: DDPM ancestral sampling and the DiT-style DDIM over an LDM.
    pub fn gaussian(&self, keep: &[usize]) -> GaussianDiffusion {
        let mut g = GaussianDiffusion::respaced(&self.schedule.betas, keep, VarianceKind::FixedSmall);
        if keep.len() == self.schedule.len() {
            g.schedule.posterior_log_variance_clipped = self.schedule.posterior_log_variance_clipped.clone();
        }
        g
    }

    fn rows(&self, v: impl Iterator<Item = f32>, x: &Tensor) -> Result<Tensor> {
        let v: Vec<f32> = v.collect();
        let mut shape = vec![v.len()];
        shape.resize(x.rank(), 1);
        Tensor::from_vec(v, shape, x.device())?.to_dtype(x.dtype())
    }

    /// `q_sample` with the f32 buffers: √ᾱ_t·x₀ + √(1−ᾱ_t)·noise.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let s = &self.schedule;
        if let Some(&bad) = t.iter().find(|&&i| i >= s.len()) {
            candle_core::bail!("ldm: step {bad} is past the schedule's {} steps", s.len());
        }
        let a = self.rows(t.iter().map(|&i| s.sqrt_alphas_cumprod[i] as f32), x0)?;
        let b = self.rows(t.iter().map(|&i| s.sqrt_one_minus_alphas_cumprod[i] as f32), x0)?;
        a.broadcast_mul(x0)? + b.broadcast_mul(noise)?
    }

    /// `p_losses` from the UNet output at `q_sample(x0, t, noise)`: the per-sample l2 on ε, [B]
    /// (the training loss is its mean; logvar is 0 and the VLB weight 0, as officially).
    pub fn loss_per_sample(&self, out: &Tensor, noise: &Tensor) -> Result<Tensor> {
        mean_flat(&(out - noise)?.sqr()?)
    }

    /// `loss_vlb` (logged only): mean of `lvlb_weights[t]`·per-sample loss.
    pub fn loss_vlb(&self, per_sample: &Tensor, t: &[usize]) -> Result<Tensor> {
        let w: Vec<f32> = t.iter().map(|&i| self.lvlb_weights[i]).collect();
        let w = Tensor::from_vec(w, t.len(), per_sample.device())?.to_dtype(per_sample.dtype())?;
        (per_sample * w)?.mean_all()
    }
}
