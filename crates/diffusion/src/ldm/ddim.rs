//! `DDIMSampler` of LDM: the "uniform" discretisation with its +1 offset, ᾱ_prev of the last step =
//! ᾱ₀ (not 1, so η > 0 still adds noise there), coefficients rounded to f32, and classifier-free guidance
//! on every channel with the unconditional half first.

use candle_core::{Result, Tensor};

use super::schedule::LdmSchedule;
use crate::denoiser::Denoiser;
use crate::noise::Noise;

/// `make_schedule(S, "uniform", eta)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DdimSchedule {
    /// `range(0, T, T // S) + 1`, increasing.
    pub timesteps: Vec<usize>,
    pub alphas: Vec<f32>,
    pub alphas_prev: Vec<f64>,
    pub sqrt_one_minus_alphas: Vec<f32>,
    pub sigmas: Vec<f64>,
}

impl DdimSchedule {
    pub fn new(s: &LdmSchedule, steps: usize, eta: f64) -> Result<Self> {
        let total = s.schedule.len();
        if steps == 0 || steps > total {
            candle_core::bail!("ddim: {steps} steps; the schedule has {total} (1 to {total})");
        }
        let c = total / steps;
        let timesteps: Vec<usize> = (0..total).step_by(c).map(|t| t + 1).filter(|&t| t < total).collect();
        let ac = |i: usize| s.schedule.alphas_cumprod[i] as f32;
        let alphas: Vec<f32> = timesteps.iter().map(|&t| ac(t)).collect();
        let alphas_prev: Vec<f64> =
            std::iter::once(f64::from(ac(0))).chain(alphas[..alphas.len() - 1].iter().map(|&a| f64::from(a))).collect();
        let sqrt_one_minus_alphas = alphas.iter().map(|a| (1.0 - a).sqrt()).collect();
        let sigmas = alphas
            .iter()
            .zip(&alphas_prev)
            .map(|(&a, &ap)| {
                // numpy / torch: `(1 - a_prev) / (1 - a)` is torch's `__rtruediv__`, i.e. the f32
                // reciprocal of the f32 `1 - a` times the f64 numerator; the rest is f64
                let recip = f64::from(1.0 / (1.0 - a));
                eta * (recip * (1.0 - ap) * (1.0 - f64::from(a) / ap)).sqrt()
            })
            .collect();
        Ok(DdimSchedule { timesteps, alphas, alphas_prev, sqrt_one_minus_alphas, sigmas })
    }

    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }
}

/// Classifier-free guidance of LDM: one call on `[x; x]` with `[null; y]`, ε = u + s·(c − u) on every
/// channel; returns (ε_uncond, ε_cond, ε). Scale 1 (or no null class) is a plain conditional call.
pub fn guided_eps(
    model: &dyn Denoiser,
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
    scale: f64,
) -> Result<(Option<(Tensor, Tensor)>, Tensor)> {
    let null = match model.null_class() {
        Some(n) if scale != 1.0 => n,
        _ => return Ok((None, model.forward(x, t, y)?)),
    };
    let b = x.dim(0)?;
    let uc = Tensor::full(null, b, y.device())?.to_dtype(y.dtype())?;
    let out = model.forward(&Tensor::cat(&[x, x], 0)?, &Tensor::cat(&[t, t], 0)?, &Tensor::cat(&[&uc, y], 0)?)?;
    let (u, c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
    let e = (&u + ((&c - &u)? * scale)?)?;
    Ok((Some((u, c)), e))
}

/// One step's values, for progress and parity.
pub struct DdimStep<'a> {
    /// 0 at the first (noisiest) step.
    pub step: usize,
    pub sample: &'a Tensor,
    pub pred_x0: &'a Tensor,
    pub eps: &'a Tensor,
    pub eps_parts: Option<&'a (Tensor, Tensor)>,
}

/// `p_sample_ddim` at schedule index `index` with ε already computed: returns (x_prev, pred_x0).
pub fn ddim_update(
    d: &DdimSchedule,
    index: usize,
    x: &Tensor,
    eps: &Tensor,
    noise: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let a_t = f64::from(d.alphas[index]);
    let a_prev = d.alphas_prev[index] as f32;
    let sigma = d.sigmas[index] as f32;
    let pred_x0 = ((x - (eps * f64::from(d.sqrt_one_minus_alphas[index]))?)? / f64::from((a_t as f32).sqrt()))?;
    let dir = (eps * f64::from((1.0 - a_prev - sigma * sigma).sqrt()))?;
    let x_prev = (((&pred_x0 * f64::from(a_prev.sqrt()))? + dir)? + (noise * f64::from(sigma))?)?;
    Ok((x_prev, pred_x0))
}

/// The whole DDIM chain from x_T with guidance `scale` (1 = none); noise is drawn after each network
/// call, every step (times σ, zero for η = 0).
pub fn ddim_sample(
    model: &dyn Denoiser,
    d: &DdimSchedule,
    x_t: Tensor,
    y: &Tensor,
    scale: f64,
    noise: &mut dyn Noise,
    on_step: &mut dyn FnMut(DdimStep) -> Result<()>,
) -> Result<Tensor> {
    let b = x_t.dim(0)?;
    let mut x = x_t;
    for (step, index) in (0..d.len()).rev().enumerate() {
        let t = Tensor::full(d.timesteps[index] as f32, b, x.device())?;
        let (parts, eps) = guided_eps(model, &x, &t, y, scale)?;
        let z = noise.like(&x)?;
        let (next, pred_x0) = ddim_update(d, index, &x, &eps, &z)?;
        x = next;
        on_step(DdimStep { step, sample: &x, pred_x0: &pred_x0, eps: &eps, eps_parts: parts.as_ref() })?;
    }
    Ok(x)
}
