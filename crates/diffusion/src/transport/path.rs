//! The interpolation paths of SiT (`transport/path.py`): x_t = α_t·x₁ + σ_t·x₀ with x₀ the noise (t = 0)
//! and x₁ the data (t = 1). Coefficients are evaluated per batch row in f64 and applied in the state's
//! dtype.

use serde::{Deserialize, Serialize};

/// `PathType`: `ICPlan` (Linear), `GVPCPlan`, `VPCPlan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathKind {
    /// α = t, σ = 1 − t.
    Linear,
    /// α = sin(πt/2), σ = cos(πt/2).
    #[serde(rename = "GVP")]
    Gvp,
    /// The variance-preserving path of score SDEs (σ_min 0.1, σ_max 20).
    #[serde(rename = "VP")]
    Vp,
}

const VP_SIGMA_MIN: f64 = 0.1;
const VP_SIGMA_MAX: f64 = 20.0;
const HALF_PI: f64 = std::f64::consts::FRAC_PI_2;

/// `compute_diffusion`'s forms g(t) of the SDE sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionForm {
    Constant,
    #[serde(rename = "SBDM")]
    Sbdm,
    Sigma,
    Linear,
    Decreasing,
    /// The official key is spelled "inccreasing-decreasing"; both spellings are accepted.
    #[serde(alias = "inccreasing-decreasing")]
    IncreasingDecreasing,
}

impl std::str::FromStr for DiffusionForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "constant" => DiffusionForm::Constant,
            "SBDM" | "sbdm" => DiffusionForm::Sbdm,
            "sigma" => DiffusionForm::Sigma,
            "linear" => DiffusionForm::Linear,
            "decreasing" => DiffusionForm::Decreasing,
            "increasing-decreasing" | "inccreasing-decreasing" => DiffusionForm::IncreasingDecreasing,
            other => {
                return Err(format!(
                "unknown diffusion form '{other}' (constant, SBDM, sigma, linear, decreasing, increasing-decreasing)"
            ))
            }
        })
    }
}

impl PathKind {
    fn vp_log_mean_coeff(t: f64) -> f64 {
        -0.25 * (1.0 - t).powi(2) * (VP_SIGMA_MAX - VP_SIGMA_MIN) - 0.5 * (1.0 - t) * VP_SIGMA_MIN
    }

    fn vp_d_log_mean_coeff(t: f64) -> f64 {
        0.5 * (1.0 - t) * (VP_SIGMA_MAX - VP_SIGMA_MIN) + 0.5 * VP_SIGMA_MIN
    }

    /// (α_t, α̇_t).
    pub fn alpha(self, t: f64) -> (f64, f64) {
        match self {
            PathKind::Linear => (t, 1.0),
            PathKind::Gvp => ((t * HALF_PI).sin(), HALF_PI * (t * HALF_PI).cos()),
            PathKind::Vp => {
                let a = Self::vp_log_mean_coeff(t).exp();
                (a, a * Self::vp_d_log_mean_coeff(t))
            }
        }
    }

    /// (σ_t, σ̇_t).
    pub fn sigma(self, t: f64) -> (f64, f64) {
        match self {
            PathKind::Linear => (1.0 - t, -1.0),
            PathKind::Gvp => ((t * HALF_PI).cos(), -HALF_PI * (t * HALF_PI).sin()),
            PathKind::Vp => {
                let p = 2.0 * Self::vp_log_mean_coeff(t);
                let s = (1.0 - p.exp()).sqrt();
                (s, p.exp() * (2.0 * Self::vp_d_log_mean_coeff(t)) / (-2.0 * s))
            }
        }
    }

    /// α̇/α in its numerically stable form.
    pub fn d_alpha_alpha_ratio(self, t: f64) -> f64 {
        match self {
            PathKind::Linear => 1.0 / t,
            PathKind::Gvp => std::f64::consts::PI / (2.0 * (t * HALF_PI).tan()),
            PathKind::Vp => Self::vp_d_log_mean_coeff(t),
        }
    }

    /// `compute_drift`: the SDE drift in score form as (c, var) with drift_mean = c·x:
    /// Linear/GVP c = −α̇/α, var = (α̇/α)·σ² − σ·σ̇; VP c = −β/2, var = β/2 with β = σ_min + (1−t)(σ_max−σ_min).
    pub fn drift(self, t: f64) -> (f64, f64) {
        match self {
            PathKind::Vp => {
                let beta = VP_SIGMA_MIN + (1.0 - t) * (VP_SIGMA_MAX - VP_SIGMA_MIN);
                (-0.5 * beta, beta / 2.0)
            }
            _ => {
                let r = self.d_alpha_alpha_ratio(t);
                let (s, ds) = self.sigma(t);
                (-r, r * s * s - s * ds)
            }
        }
    }

    /// `compute_diffusion(form, norm)`: g(t).
    pub fn diffusion(self, t: f64, form: DiffusionForm, norm: f64) -> f64 {
        let pi = std::f64::consts::PI;
        match form {
            DiffusionForm::Constant => norm,
            DiffusionForm::Sbdm => norm * self.drift(t).1,
            DiffusionForm::Sigma => norm * self.sigma(t).0,
            DiffusionForm::Linear => norm * (1.0 - t),
            DiffusionForm::Decreasing => 0.25 * (norm * (pi * t).cos() + 1.0).powi(2),
            DiffusionForm::IncreasingDecreasing => norm * (pi * t).sin().powi(2),
        }
    }

    /// `get_score_from_velocity` as (a, b): score = (a·v − x)/b with a = α/α̇, b = σ² − a·σ̇·σ.
    pub fn score_from_velocity(self, t: f64) -> (f64, f64) {
        let ((a, da), (s, ds)) = (self.alpha(t), self.sigma(t));
        let r = a / da;
        (r, s * s - r * ds * s)
    }

    /// `get_noise_from_velocity` as (a, b): noise = (a·v − x)/b with a = α/α̇, b = a·σ̇ − σ.
    pub fn noise_from_velocity(self, t: f64) -> (f64, f64) {
        let ((a, da), (s, ds)) = (self.alpha(t), self.sigma(t));
        let r = a / da;
        (r, r * ds - s)
    }
}
