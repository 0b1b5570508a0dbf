//! Gaussian diffusion (`diffusion/gaussian_diffusion.py` of DiT and DiT-LC, ε-prediction, linear betas,
//! optionally respaced): the forward process, the model's mean and variance, one DDPM or DDIM step, and
//! the training loss (MSE on ε plus the variational bound for a learned variance).
//!
//! Coefficients are gathered from the f64 schedule at each sample's step and cast to the state's dtype
//! before use, as `_extract_into_tensor` does; everything after is arithmetic in that dtype.

pub mod likelihood;
pub mod sample;
pub mod schedule;

use candle_core::{DType, Device, Result, Tensor};

use likelihood::{discretized_gaussian_log_likelihood, mean_flat, normal_kl};
pub use schedule::{linear_betas, space_timesteps, RespacingError, Schedule};

/// How the reverse-process variance is obtained (`ModelVarType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceKind {
    /// The network's second half of channels v ∈ [−1, 1] interpolates the log-variance between the
    /// posterior's and β_t (`LEARNED_RANGE`, DiT with `learn_sigma`).
    LearnedRange,
    /// `[posterior_variance[1], β_1, β_2, …]` (`FIXED_LARGE`, DiT without `learn_sigma`).
    FixedLarge,
    /// The posterior variance (`FIXED_SMALL`).
    FixedSmall,
}

/// A respaced Gaussian diffusion: the schedule over the kept steps and the original step each one is.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    pub schedule: Schedule,
    /// Spaced index → the timestep the network is given (`SpacedDiffusion.timestep_map`).
    pub timestep_map: Vec<usize>,
    pub variance: VarianceKind,
}

/// `p_mean_variance`'s outputs.
#[derive(Clone, Debug)]
pub struct MeanVariance {
    pub mean: Tensor,
    pub variance: Tensor,
    pub log_variance: Tensor,
    pub pred_xstart: Tensor,
}

/// `training_losses` per sample, [B] each: `loss = mse + vb` (vb is zero without a learned variance).
#[derive(Clone, Debug)]
pub struct Losses {
    pub mse: Tensor,
    pub vb: Option<Tensor>,
    pub loss: Tensor,
}

impl GaussianDiffusion {
    /// `create_diffusion(timestep_respacing)` of DiT: linear betas over 1000 steps, ε-prediction, learned
    /// range variance when the network learns sigma (else fixed large), respaced by `respacing`.
    pub fn dit(respacing: &str, learn_sigma: bool) -> std::result::Result<Self, RespacingError> {
        let betas = linear_betas(1000);
        let keep = space_timesteps(betas.len(), respacing)?;
        let variance = if learn_sigma { VarianceKind::LearnedRange } else { VarianceKind::FixedLarge };
        Ok(Self::respaced(&betas, &keep, variance))
    }

    pub fn respaced(base_betas: &[f64], keep: &[usize], variance: VarianceKind) -> Self {
        let (schedule, timestep_map) = Schedule::respaced(base_betas, keep);
        GaussianDiffusion { schedule, timestep_map, variance }
    }

    /// Steps of the (respaced) chain.
    pub fn num_steps(&self) -> usize {
        self.schedule.len()
    }

    /// The network's timesteps for spaced indices t, [B] F32.
    pub fn model_timesteps(&self, t: &[usize], dev: &Device) -> Result<Tensor> {
        let v: Vec<f32> = t.iter().map(|&i| self.timestep_map[i] as f32).collect();
        Tensor::from_vec(v, t.len(), dev)
    }

    /// `_extract_into_tensor(arr, t, x.shape)`: arr[t_b] cast to f32 (then x's dtype), [B, 1, …, 1].
    fn coef(&self, arr: &[f64], t: &[usize], x: &Tensor) -> Result<Tensor> {
        per_row(t.iter().map(|&i| arr[i] as f32).collect(), x)
    }

    fn check_steps(&self, t: &[usize], x: &Tensor) -> Result<()> {
        if t.len() != x.dim(0)? {
            candle_core::bail!("diffusion: {} timesteps for a batch of {}", t.len(), x.dim(0)?);
        }
        if let Some(&bad) = t.iter().find(|&&i| i >= self.num_steps()) {
            candle_core::bail!("diffusion: step {bad} is past the schedule's {} steps", self.num_steps());
        }
        Ok(())
    }

    /// `q_sample`: x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·noise.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        self.check_steps(t, x0)?;
        let s = &self.schedule;
        let a = self.coef(&s.sqrt_alphas_cumprod, t, x0)?.broadcast_mul(x0)?;
        a + self.coef(&s.sqrt_one_minus_alphas_cumprod, t, x0)?.broadcast_mul(noise)?
    }

    /// `q_posterior_mean_variance`: the mean and clipped log-variance of q(x_{t−1} | x_t, x₀).
    pub fn q_posterior(&self, x0: &Tensor, xt: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
        let s = &self.schedule;
        let mean = (self.coef(&s.posterior_mean_coef1, t, xt)?.broadcast_mul(x0)?
            + self.coef(&s.posterior_mean_coef2, t, xt)?.broadcast_mul(xt)?)?;
        let log_var = self.coef(&s.posterior_log_variance_clipped, t, xt)?.broadcast_as(xt.shape())?;
        Ok((mean, log_var))
    }

    /// Splits the network output into ε and (for a learned variance) v.
    fn split_output(&self, out: &Tensor, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let c = x.dim(1)?;
        let learned = self.variance == VarianceKind::LearnedRange;
        let want = if learned { 2 * c } else { c };
        if out.dim(1)? != want {
            candle_core::bail!(
                "diffusion: the network gave {} channels, the {c}-channel latent needs {want}",
                out.dim(1)?
            );
        }
        if learned {
            Ok((out.narrow(1, 0, c)?, Some(out.narrow(1, c, c)?)))
        } else {
            Ok((out.clone(), None))
        }
    }

    /// `p_mean_variance` from the network's output at x_t: x₀ predicted from ε (clamped to [−1, 1] when
    /// `clip`), the posterior mean at that x₀, and the model variance.
    pub fn p_mean_variance(&self, out: &Tensor, x: &Tensor, t: &[usize], clip: bool) -> Result<MeanVariance> {
        self.check_steps(t, x)?;
        let s = &self.schedule;
        let (eps, v) = self.split_output(out, x)?;
        let (variance, log_variance) = match (self.variance, v) {
            (VarianceKind::LearnedRange, Some(v)) => {
                let min_log = self.coef(&s.posterior_log_variance_clipped, t, x)?;
                let max_log = self.coef(&s.log_betas, t, x)?;
                let frac = ((v + 1.0)? / 2.0)?;
                let log_var = (frac.broadcast_mul(&max_log)? + frac.affine(-1.0, 1.0)?.broadcast_mul(&min_log)?)?;
                (log_var.exp()?, log_var)
            }
            (VarianceKind::FixedLarge, _) => {
                let var: Vec<f64> =
                    (0..s.len()).map(|i| if i == 0 { s.posterior_variance[1] } else { s.betas[i] }).collect();
                let log: Vec<f64> = var.iter().map(|v| v.ln()).collect();
                (self.coef(&var, t, x)?.broadcast_as(x.shape())?, self.coef(&log, t, x)?.broadcast_as(x.shape())?)
            }
            _ => (
                self.coef(&s.posterior_variance, t, x)?.broadcast_as(x.shape())?,
                self.coef(&s.posterior_log_variance_clipped, t, x)?.broadcast_as(x.shape())?,
            ),
        };
        let mut pred_xstart = self.predict_xstart(x, t, &eps)?;
        if clip {
            pred_xstart = pred_xstart.clamp(-1f32, 1f32)?;
        }
        let (mean, _) = self.q_posterior(&pred_xstart, x, t)?;
        Ok(MeanVariance { mean, variance, log_variance, pred_xstart })
    }

    /// `_predict_xstart_from_eps`: √(1/ᾱ)·x − √(1/ᾱ − 1)·ε.
    pub fn predict_xstart(&self, x: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        let s = &self.schedule;
        self.coef(&s.sqrt_recip_alphas_cumprod, t, x)?.broadcast_mul(x)?
            - self.coef(&s.sqrt_recipm1_alphas_cumprod, t, x)?.broadcast_mul(eps)?
    }

    /// `_predict_eps_from_xstart`: (√(1/ᾱ)·x − x₀) / √(1/ᾱ − 1).
    pub fn predict_eps(&self, x: &Tensor, t: &[usize], xstart: &Tensor) -> Result<Tensor> {
        let s = &self.schedule;
        (self.coef(&s.sqrt_recip_alphas_cumprod, t, x)?.broadcast_mul(x)? - xstart)?.broadcast_div(&self.coef(
            &s.sqrt_recipm1_alphas_cumprod,
            t,
            x,
        )?)
    }

    /// Zero where the spaced step is 0 (no noise on the last step), one elsewhere, [B, 1, …, 1].
    fn nonzero_mask(&self, t: &[usize], x: &Tensor) -> Result<Tensor> {
        per_row(t.iter().map(|&i| f32::from(u8::from(i != 0))).collect(), x)
    }

    /// `p_sample`: mean + [t ≠ 0]·exp(½ log σ²)·noise (the noise is drawn every step, also the last).
    pub fn p_sample(&self, mv: &MeanVariance, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let scale = (&mv.log_variance * 0.5)?.exp()?.broadcast_mul(&self.nonzero_mask(t, noise)?)?;
        &mv.mean + scale.mul(noise)?
    }

    /// `ddim_sample` with η: ε re-derived from the predicted x₀, σ = η·√((1−ᾱ')/(1−ᾱ))·√(1−ᾱ/ᾱ'),
    /// x' = x₀·√ᾱ' + √(1−ᾱ'−σ²)·ε + [t ≠ 0]·σ·noise (ᾱ' = ᾱ of the previous step).
    pub fn ddim_sample(&self, mv: &MeanVariance, x: &Tensor, t: &[usize], eta: f64, noise: &Tensor) -> Result<Tensor> {
        let s = &self.schedule;
        let eps = self.predict_eps(x, t, &mv.pred_xstart)?;
        // ᾱ and ᾱ' as the official code holds them (f32), the coefficients computed from those
        let (mut c_x0, mut c_eps, mut c_noise) = (Vec::new(), Vec::new(), Vec::new());
        for &i in t {
            let (a, ap) = (s.alphas_cumprod[i] as f32, s.alphas_cumprod_prev[i] as f32);
            let sigma = eta as f32 * ((1.0 - ap) / (1.0 - a)).sqrt() * (1.0 - a / ap).sqrt();
            c_x0.push(ap.sqrt());
            c_eps.push((1.0 - ap - sigma * sigma).sqrt());
            c_noise.push(sigma * f32::from(u8::from(i != 0)));
        }
        let mean = (mv.pred_xstart.broadcast_mul(&per_row(c_x0, x)?)? + eps.broadcast_mul(&per_row(c_eps, x)?)?)?;
        mean + noise.broadcast_mul(&per_row(c_noise, x)?)?
    }

    /// `training_losses` (loss type MSE, ε target) from the network's output at `xt = q_sample(x0, t, noise)`:
    /// `mse = mean_flat((noise − ε)²)`; with a learned variance also `vb`, the variational-bound term in
    /// bits of q(x_{t−1}|x_t,x₀) against p (the decoder NLL at t = 0), where ε is detached so only the
    /// variance learns from it.
    pub fn training_losses(
        &self,
        out: &Tensor,
        x0: &Tensor,
        xt: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Losses> {
        self.check_steps(t, x0)?;
        let (eps, v) = self.split_output(out, xt)?;
        let mse = mean_flat(&(noise - &eps)?.sqr()?)?;
        let Some(v) = v else {
            return Ok(Losses { loss: mse.clone(), mse, vb: None });
        };
        let frozen = Tensor::cat(&[&eps.detach(), &v], 1)?;
        let vb = self.vb_terms_bpd(&frozen, x0, xt, t)?;
        Ok(Losses { loss: (&mse + &vb)?, mse, vb: Some(vb) })
    }

    /// `_vb_terms_bpd` with `clip_denoised=False`, [B] in bits.
    fn vb_terms_bpd(&self, out: &Tensor, x0: &Tensor, xt: &Tensor, t: &[usize]) -> Result<Tensor> {
        let ln2 = std::f64::consts::LN_2;
        let (true_mean, true_log_var) = self.q_posterior(x0, xt, t)?;
        let p = self.p_mean_variance(out, xt, t, false)?;
        let kl = (mean_flat(&normal_kl(&true_mean, &true_log_var, &p.mean, &p.log_variance)?)? / ln2)?;
        let nll = discretized_gaussian_log_likelihood(x0, &p.mean, &(&p.log_variance * 0.5)?)?;
        let nll = (mean_flat(&nll.neg()?)? / ln2)?;
        let first: Vec<u8> = t.iter().map(|&i| u8::from(i == 0)).collect();
        Tensor::from_vec(first, t.len(), xt.device())?.where_cond(&nll, &kl)
    }
}

/// One f32 value per batch row as a [B, 1, …, 1] tensor in x's dtype, to broadcast over x.
fn per_row(v: Vec<f32>, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![v.len()];
    shape.resize(x.rank(), 1);
    Tensor::from_vec(v, shape, x.device())?.to_dtype(x.dtype())
}

/// A [B] vector of spaced indices as a host list (timesteps arrive as integer tensors from fixtures).
pub fn steps_of(t: &Tensor) -> Result<Vec<usize>> {
    Ok(t.to_dtype(DType::I64)?.to_vec1::<i64>()?.iter().map(|&v| v.max(0) as usize).collect())
}
