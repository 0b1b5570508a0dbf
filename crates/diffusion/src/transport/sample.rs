//! SiT's samplers over any [`Denoiser`]: the probability-flow ODE (Euler, Heun, dopri5) and the
//! Euler–Maruyama SDE, from noise at t0 to data at t1 (`Sampler.sample_ode` / `sample_sde`).

use candle_core::{DType, Result, Tensor};

use super::ode::{dopri5, integrate_fixed, linspace_f32, Dopri5Options, Dopri5Report, FixedMethod};
use super::sde::{euler_maruyama, LastStep};
use super::{DiffusionForm, Transport};
use crate::denoiser::Denoiser;
use crate::noise::Noise;

/// An ODE solver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OdeMethod {
    Euler,
    Heun2,
    Dopri5(Dopri5Options),
}

/// The network at time t for every row, as f32 times.
fn network_at(model: &dyn Denoiser, x: &Tensor, t: f64, y: &Tensor) -> Result<Tensor> {
    let times = Tensor::full(t as f32, x.dim(0)?, x.device())?.to_dtype(DType::F32)?;
    model.forward(x, &times, y)
}

/// `sample_ode(method, num_steps)`: the states at `linspace(t0, t1, n)` (the first is the noise), and
/// dopri5's report. For the fixed solvers n − 1 steps are taken; dopri5 chooses its own steps and
/// interpolates the n output times.
pub fn sample_ode(
    transport: &Transport,
    model: &dyn Denoiser,
    x0: &Tensor,
    y: &Tensor,
    method: OdeMethod,
    n: usize,
    on_step: &mut dyn FnMut(f64) -> Result<()>,
) -> Result<(Vec<Tensor>, Option<Dopri5Report>)> {
    let (t0, t1) = transport.interval(true, None);
    let b = x0.dim(0)?;
    let mut drift = |t: f64, x: &Tensor| -> Result<Tensor> {
        let out = network_at(model, x, t, y)?;
        transport.drift(&out, x, &vec![t; b])
    };
    match method {
        OdeMethod::Euler | OdeMethod::Heun2 => {
            let fixed = if method == OdeMethod::Euler { FixedMethod::Euler } else { FixedMethod::Heun2 };
            let grid = linspace_f32(t0, t1, n.max(2));
            let states = integrate_fixed(&mut drift, x0, t0, t1, n, fixed, &mut |k| on_step(f64::from(grid[k + 1])))?;
            Ok((states, None))
        }
        OdeMethod::Dopri5(o) => {
            if n < 2 {
                candle_core::bail!("dopri5: {n} output times, at least 2 are needed");
            }
            let times: Vec<f64> = linspace_f32(t0, t1, n).into_iter().map(f64::from).collect();
            let (states, report) = dopri5(&mut drift, x0, &times, &o, on_step)?;
            Ok((states, Some(report)))
        }
    }
}

/// The SDE sampler's settings (official CLI defaults: sigma form, norm 1, Mean last step of 0.04).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdeOptions {
    pub form: DiffusionForm,
    pub norm: f64,
    pub last: LastStep,
}

impl Default for SdeOptions {
    fn default() -> Self {
        SdeOptions { form: DiffusionForm::Sigma, norm: 1.0, last: LastStep::Mean(0.04) }
    }
}

/// `sample_sde("Euler", …)`: n states, n − 1 noisy Euler–Maruyama states and the last step. One network
/// evaluation per step gives both the drift and the score (the official code evaluates it twice).
#[allow(clippy::too_many_arguments)]
pub fn sample_sde(
    transport: &Transport,
    model: &dyn Denoiser,
    x0: &Tensor,
    y: &Tensor,
    o: SdeOptions,
    n: usize,
    noise: &mut dyn Noise,
    on_step: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Tensor>> {
    let interval = transport.interval(true, Some((o.form, o.last.size())));
    let b = x0.dim(0)?;
    let mut terms = |t: f64, x: &Tensor| -> Result<(Tensor, Tensor, f64)> {
        let out = network_at(model, x, t, y)?;
        let ts = vec![t; b];
        let ode = transport.drift(&out, x, &ts)?;
        let g = transport.path.diffusion(t, o.form, o.norm);
        let sde = (&ode + (transport.score(&out, x, &ts)? * g)?)?;
        Ok((sde, ode, g))
    };
    euler_maruyama(&mut terms, x0, interval, n, o.last, noise, on_step)
}
