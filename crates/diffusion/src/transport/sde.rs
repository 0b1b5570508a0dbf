//! The Euler–Maruyama SDE sampler of SiT (`integrators.sde`, "Euler") with its last step.

use candle_core::{Result, Tensor};

use super::ode::linspace_f32;
use crate::noise::Noise;

/// The final step after the last noisy state (`last_step`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LastStep {
    /// No last step.
    None,
    /// x + sde_drift(x, t1)·size (the official default, size 0.04).
    Mean(f64),
    /// x + drift(x, t1)·size.
    Euler(f64),
}

impl LastStep {
    pub fn size(self) -> f64 {
        match self {
            LastStep::None => 0.0,
            LastStep::Mean(s) | LastStep::Euler(s) => s,
        }
    }
}

/// The drifts one network evaluation gives at (t, x): (sde_drift, ode_drift, g(t)).
pub type SdeTerms<'a> = dyn FnMut(f64, &Tensor) -> Result<(Tensor, Tensor, f64)> + 'a;

/// Euler–Maruyama on the f32 grid `linspace(t0, t1, n)`: for each of the n − 1 grid times the noise is
/// drawn first, then `x ← x + sde_drift·dt + √(2g)·w·√dt`; then the last step at t1. Returns the n − 1
/// noisy states and the last step's result (n states, the initial noise excluded), as officially.
pub fn euler_maruyama(
    terms: &mut SdeTerms,
    x0: &Tensor,
    (t0, t1): (f64, f64),
    n: usize,
    last: LastStep,
    noise: &mut dyn Noise,
    on_step: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Tensor>> {
    if n < 2 {
        candle_core::bail!("sde: {n} steps, at least 2 are needed");
    }
    let grid = linspace_f32(t0, t1, n);
    let dt = grid[1] - grid[0];
    let sqrt_dt = f64::from(dt.sqrt());
    let mut x = x0.clone();
    let mut out = Vec::with_capacity(n);
    for (k, &t) in grid[..n - 1].iter().enumerate() {
        let w = noise.like(&x)?;
        let (drift, _, g) = terms(f64::from(t), &x)?;
        let mean = (&x + (drift * f64::from(dt))?)?;
        x = (mean + (w * ((2.0 * g).sqrt() * sqrt_dt))?)?;
        out.push(x.clone());
        on_step(k)?;
    }
    let end = match last {
        LastStep::None => x,
        LastStep::Mean(size) => (&x + (terms(f64::from(t1 as f32), &x)?.0 * size)?)?,
        LastStep::Euler(size) => (&x + (terms(f64::from(t1 as f32), &x)?.1 * size)?)?,
    };
    out.push(end);
    Ok(out)
}
