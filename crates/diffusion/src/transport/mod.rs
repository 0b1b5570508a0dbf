//! SiT's stochastic interpolants (`transport/transport.py`): the path, what the network predicts
//! (velocity, score or noise), the training loss, and the ODE / SDE drifts the samplers integrate from
//! t = 0 (noise) to t = 1 (data).

pub mod ode;
pub mod path;
pub mod sample;
pub mod sde;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::gaussian::likelihood::mean_flat;
pub use path::{DiffusionForm, PathKind};

/// `ModelType`: what the network's output is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    Velocity,
    Score,
    Noise,
}

/// `WeightType` of the score / noise losses (ignored for velocity, as officially).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossWeight {
    #[default]
    None,
    Velocity,
    Likelihood,
}

/// A transport: path, prediction, loss weight and the end-point margins of training and sampling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transport {
    pub path: PathKind,
    pub prediction: Prediction,
    pub weight: LossWeight,
    pub train_eps: f64,
    pub sample_eps: f64,
}

/// One value per batch row as [B, 1, …, 1] in x's dtype.
pub(crate) fn per_row(v: impl IntoIterator<Item = f64>, x: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = v.into_iter().map(|a| a as f32).collect();
    let mut shape = vec![v.len()];
    shape.resize(x.rank(), 1);
    Tensor::from_vec(v, shape, x.device())?.to_dtype(x.dtype())
}

impl Transport {
    /// `create_transport(path, prediction, loss_weight, train_eps, sample_eps)`. Velocity on Linear/GVP
    /// is stable at both ends (both margins 0); VP trains from 1e-5, score/noise from 1e-3. Sampling
    /// margins default to 1e-3 as upstream SiT does: sit-lc leaves them None there (a bug that makes
    /// its samplers fail, ../shared/golden/sit quirk 9).
    pub fn new(
        path: PathKind,
        prediction: Prediction,
        weight: LossWeight,
        train_eps: Option<f64>,
        sample_eps: Option<f64>,
    ) -> Self {
        let (train_eps, sample_eps) = match (path, prediction) {
            (PathKind::Vp, _) => (train_eps.unwrap_or(1e-5), sample_eps.unwrap_or(1e-3)),
            (_, Prediction::Score | Prediction::Noise) => (train_eps.unwrap_or(1e-3), sample_eps.unwrap_or(1e-3)),
            _ => (0.0, 0.0),
        };
        Transport { path, prediction, weight, train_eps, sample_eps }
    }

    /// The official SiT-LC transport: Linear path, velocity prediction.
    pub fn official() -> Self {
        Self::new(PathKind::Linear, Prediction::Velocity, LossWeight::None, None, None)
    }

    /// `check_interval`: the time range (t0, t1) of training (`eval` false) or sampling, for the ODE
    /// or (with `sde`) the SDE whose last step covers `last_step_size`.
    pub fn interval(&self, eval: bool, sde: Option<(DiffusionForm, f64)>) -> (f64, f64) {
        let eps = if eval { self.sample_eps } else { self.train_eps };
        let last = sde.map_or(0.0, |(_, s)| s);
        let t1 = if sde.is_none() || last == 0.0 { 1.0 - eps } else { 1.0 - last };
        match self.path {
            PathKind::Vp => (0.0, t1),
            _ if self.prediction != Prediction::Velocity || sde.is_some() => {
                let sbdm = matches!(sde, Some((DiffusionForm::Sbdm, _)));
                let t0 = if sbdm || self.prediction != Prediction::Velocity { eps } else { 0.0 };
                (t0, t1)
            }
            _ => (0.0, 1.0),
        }
    }

    /// Training times from uniform draws u ∈ [0, 1): `t = u·(t1 − t0) + t0`.
    pub fn train_times(&self, u: &[f64]) -> Vec<f64> {
        let (t0, t1) = self.interval(false, None);
        u.iter().map(|u| u * (t1 - t0) + t0).collect()
    }

    /// `plan(t, x0, x1)`: x_t = α·x₁ + σ·x₀ and the target velocity u_t = α̇·x₁ + σ̇·x₀.
    pub fn plan(&self, t: &[f64], x0: &Tensor, x1: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, s): (Vec<_>, Vec<_>) = t.iter().map(|&t| (self.path.alpha(t), self.path.sigma(t))).unzip();
        let xt = (per_row(a.iter().map(|p| p.0), x1)?.broadcast_mul(x1)?
            + per_row(s.iter().map(|p| p.0), x0)?.broadcast_mul(x0)?)?;
        let ut = (per_row(a.iter().map(|p| p.1), x1)?.broadcast_mul(x1)?
            + per_row(s.iter().map(|p| p.1), x0)?.broadcast_mul(x0)?)?;
        Ok((xt, ut))
    }

    /// `training_losses` per sample [B] from the network output at `plan(t, x0, x1).xt`.
    pub fn loss(&self, out: &Tensor, t: &[f64], x0: &Tensor, ut: &Tensor) -> Result<Tensor> {
        if self.prediction == Prediction::Velocity {
            return mean_flat(&(out - ut)?.sqr()?);
        }
        let weight = per_row(
            t.iter().map(|&t| {
                let (var, s) = (self.path.drift(t).1, self.path.sigma(t).0);
                match self.weight {
                    LossWeight::None => 1.0,
                    LossWeight::Velocity => (var / s).powi(2),
                    LossWeight::Likelihood => var / (s * s),
                }
            }),
            out,
        )?;
        let err = match self.prediction {
            Prediction::Noise => (out - x0)?,
            _ => (out.broadcast_mul(&per_row(t.iter().map(|&t| self.path.sigma(t).0), out)?)? + x0)?,
        };
        mean_flat(&err.sqr()?.broadcast_mul(&weight)?)
    }

    /// `get_drift()`: the probability-flow ODE's drift from the network output at (x, t).
    pub fn drift(&self, out: &Tensor, x: &Tensor, t: &[f64]) -> Result<Tensor> {
        if self.prediction == Prediction::Velocity {
            return Ok(out.clone());
        }
        let (c, var): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| self.path.drift(t)).unzip();
        let score = self.score(out, x, t)?;
        // −drift_mean + var·score, drift_mean = c·x
        score.broadcast_mul(&per_row(var, x)?)? - x.broadcast_mul(&per_row(c, x)?)?
    }

    /// `get_score()`: ∇log p_t(x) from the network output at (x, t).
    pub fn score(&self, out: &Tensor, x: &Tensor, t: &[f64]) -> Result<Tensor> {
        match self.prediction {
            Prediction::Score => Ok(out.clone()),
            Prediction::Noise => out.broadcast_div(&per_row(t.iter().map(|&t| -self.path.sigma(t).0), x)?),
            Prediction::Velocity => {
                let (a, b): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| self.path.score_from_velocity(t)).unzip();
                (out.broadcast_mul(&per_row(a, x)?)? - x)?.broadcast_div(&per_row(b, x)?)
            }
        }
    }
}
