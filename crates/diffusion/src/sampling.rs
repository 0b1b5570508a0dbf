//! Sampling a trained DiT, SiT or LDM: the sampler settings (a model folder's `[sampling]` table, the
//! official presets, CLI overrides) and one entry point that runs the right sampler over the
//! [`Denoiser`] of each model and returns latents.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::denoiser::{Denoiser, GuideChannels, Guided};
use crate::dit::Dit;
use crate::gaussian::sample::{sample_loop, GaussianSampler};
use crate::gaussian::{space_timesteps, GaussianDiffusion};
use crate::ldm::ddim::{ddim_sample, DdimSchedule};
use crate::ldm::schedule::LdmSchedule;
use crate::ldm::Ldm;
use crate::noise::SeededNoise;
use crate::sit::Sit;
use crate::transport::ode::Dopri5Options;
use crate::transport::sample::{sample_ode, sample_sde, OdeMethod, SdeOptions};
use crate::transport::sde::LastStep;
use crate::transport::{DiffusionForm, Transport};

/// The samplers (`--sampler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral sampling of a Gaussian diffusion (DiT, LDM).
    Ddpm,
    /// DDIM with η (DiT over its respaced chain, LDM with DDIMSampler's discretisation).
    Ddim,
    /// SiT's probability-flow ODE, fixed steps.
    Euler,
    Heun,
    /// SiT's ODE, adaptive (atol / rtol).
    Dopri5,
    /// SiT's Euler–Maruyama SDE.
    Sde,
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim,
            "euler" => SamplerKind::Euler,
            "heun" | "heun2" => SamplerKind::Heun,
            "dopri5" => SamplerKind::Dopri5,
            "sde" => SamplerKind::Sde,
            other => return Err(format!("unknown sampler '{other}' (ddpm, ddim, euler, heun, dopri5, sde)")),
        })
    }
}

/// Which channels guidance mixes (`GuideChannels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuideMode {
    /// Every latent channel (the correct choice; the default for new models).
    #[default]
    Latent,
    /// The official DiT/SiT quirk: only the first three channels.
    Official,
}

/// How to sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    pub sampler: SamplerKind,
    /// Chain steps (DDPM / DDIM), integration points (Euler / Heun / SDE), output times (dopri5).
    pub steps: usize,
    /// Classifier-free guidance scale (1 = none).
    pub cfg_scale: f64,
    #[serde(default)]
    pub guide: GuideMode,
    /// DDIM's η.
    #[serde(default)]
    pub eta: f64,
    #[serde(default = "atol")]
    pub atol: f64,
    #[serde(default = "rtol")]
    pub rtol: f64,
}

fn atol() -> f64 {
    1e-6
}
fn rtol() -> f64 {
    1e-3
}

impl Default for SamplingSpec {
    fn default() -> Self {
        SamplingSpec {
            sampler: SamplerKind::Ddim,
            steps: 50,
            cfg_scale: 4.0,
            guide: GuideMode::Latent,
            eta: 0.0,
            atol: 1e-6,
            rtol: 1e-3,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("sampling: {0}")]
pub struct SamplingError(pub String);

impl SamplingSpec {
    /// The official evaluation settings of each model (runTestDiT.sh, runTestSiT.sh, runTestLDM.sh f16).
    pub fn official(kind: gen_runtime::ModelKind) -> Self {
        use gen_runtime::ModelKind as K;
        let base = SamplingSpec { guide: GuideMode::Official, ..Default::default() };
        match kind {
            K::Sit => SamplingSpec { sampler: SamplerKind::Dopri5, steps: 250, cfg_scale: 8.0, ..base },
            K::Ldm => SamplingSpec {
                sampler: SamplerKind::Ddim,
                steps: 200,
                cfg_scale: 1.6,
                eta: 1.0,
                guide: GuideMode::Latent,
                ..base
            },
            _ => SamplingSpec { sampler: SamplerKind::Ddpm, steps: 250, cfg_scale: 8.0, ..base },
        }
    }

    pub fn validate(&self) -> std::result::Result<(), gen_runtime::Error> {
        let bad = |field: &str, why: String| Err(gen_runtime::Error::config(format!("sampling.{field}"), why));
        if !(self.cfg_scale.is_finite() && self.cfg_scale >= 0.0) {
            return bad("cfg_scale", format!("{} must be a finite number >= 0", self.cfg_scale));
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return bad("eta", format!("{} must be >= 0", self.eta));
        }
        if !(self.atol > 0.0 && self.rtol > 0.0) {
            return bad("atol", "atol and rtol must be positive".into());
        }
        Ok(())
    }
}

/// A loaded generator with what its sampler needs.
#[derive(Clone, Debug)]
pub enum Generator {
    Dit(Dit),
    Sit(Sit, Transport),
    Ldm(Ldm),
}

impl Generator {
    pub fn denoiser(&self) -> &dyn Denoiser {
        match self {
            Generator::Dit(m) => m,
            Generator::Sit(m, _) => m,
            Generator::Ldm(m) => m,
        }
    }

    /// Latent channels and side.
    pub fn latent(&self) -> (usize, usize) {
        match self {
            Generator::Dit(m) => (m.config.in_channels, m.config.input_size),
            Generator::Sit(m, _) => (m.net.config.in_channels, m.net.config.input_size),
            Generator::Ldm(m) => (m.config.unet.in_channels, m.config.unet.image_size),
        }
    }

    /// Real classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Generator::Dit(m) => m.config.num_classes,
            Generator::Sit(m, _) => m.net.config.num_classes,
            Generator::Ldm(m) => m.config.n_classes - 1,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Generator::Dit(_) => "dit",
            Generator::Sit(..) => "sit",
            Generator::Ldm(_) => "ldm",
        }
    }

    /// Checks a spec against this model: the sampler must be one of its own, the step count within its
    /// schedule, guidance needs a null class.
    pub fn check(&self, s: &SamplingSpec) -> std::result::Result<(), SamplingError> {
        let bad = |m: String| Err(SamplingError(m));
        let kind = self.kind_name();
        let ok = match self {
            Generator::Dit(_) => matches!(s.sampler, SamplerKind::Ddpm | SamplerKind::Ddim),
            Generator::Ldm(_) => matches!(s.sampler, SamplerKind::Ddpm | SamplerKind::Ddim),
            Generator::Sit(..) => {
                matches!(s.sampler, SamplerKind::Euler | SamplerKind::Heun | SamplerKind::Dopri5 | SamplerKind::Sde)
            }
        };
        if !ok {
            let own = if kind == "sit" { "euler, heun, dopri5, sde" } else { "ddpm, ddim" };
            return bad(format!("{kind} samples with {own}, not {:?}", s.sampler).to_lowercase());
        }
        if !(s.cfg_scale.is_finite() && s.cfg_scale >= 0.0) {
            return bad(format!("--cfg-scale {} must be a finite number >= 0", s.cfg_scale));
        }
        if s.steps == 0 {
            return bad("--steps 0: at least 1 step".into());
        }
        let limit = match self {
            Generator::Sit(..) => usize::MAX,
            _ => 1000,
        };
        if s.steps > limit {
            return bad(format!("--steps {}: the {kind} schedule has {limit} steps", s.steps));
        }
        if s.steps < 2
            && matches!(s.sampler, SamplerKind::Euler | SamplerKind::Heun | SamplerKind::Dopri5 | SamplerKind::Sde)
        {
            return bad(
                format!("--steps {}: the {:?} sampler needs at least 2 time points", s.steps, s.sampler).to_lowercase()
            );
        }
        if s.cfg_scale != 1.0 && self.denoiser().null_class().is_none() {
            return bad("guidance needs a null class, and this model has none: use --cfg-scale 1".into());
        }
        Ok(())
    }

    /// Samples one latent per label; row i draws all its noise from `Rng::for_item(seed, keys[i])`, so a
    /// sample is the same whatever batch it is drawn in. Calls `progress(done, total)` as steps finish.
    pub fn sample(
        &self,
        labels: &[u32],
        keys: &[u64],
        s: &SamplingSpec,
        seed: u64,
        dev: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.check(s).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= self.num_classes()) {
            candle_core::bail!(
                "class {bad} is out of range: the model has {} classes (0 to {})",
                self.num_classes(),
                self.num_classes() - 1
            );
        }
        let (c, side) = self.latent();
        let b = labels.len();
        if keys.len() != b {
            candle_core::bail!("sampling: {} noise keys for {b} labels", keys.len());
        }
        let z = SeededNoise::from_rngs(keys.iter().map(|&k| gen_runtime::Rng::for_item(seed, k)).collect()).draw(
            &[b, c, side, side],
            candle_core::DType::F32,
            dev,
        )?;
        let guided = s.cfg_scale != 1.0;
        let channels = match s.guide {
            GuideMode::Official => GuideChannels::OFFICIAL,
            GuideMode::Latent => GuideChannels::Latent,
        };
        // guided batches are [cond; uncond] with the same noise in both halves
        let (x, y) = if guided && !matches!((self, s.sampler), (Generator::Ldm(_), SamplerKind::Ddim)) {
            let null = self.denoiser().null_class().unwrap_or(0);
            let mut y2 = labels.to_vec();
            y2.extend(std::iter::repeat_n(null, b));
            (Tensor::cat(&[&z, &z], 0)?, Tensor::new(y2.as_slice(), dev)?)
        } else {
            (z, Tensor::new(labels, dev)?)
        };
        // the sampler's own draws come from a second stream per row (the null half repeats the rows)
        let rows: Vec<gen_runtime::Rng> =
            (0..x.dim(0)?).map(|i| gen_runtime::Rng::for_item(seed ^ 0x005E_ED0F_D1FF, keys[i % b])).collect();
        let mut noise = SeededNoise::from_rngs(rows);
        let model = self.denoiser();
        let g = Guided { model, scale: s.cfg_scale, channels };
        let net: &dyn Denoiser = if guided { &g } else { model };
        let out = match (self, s.sampler) {
            (Generator::Dit(_), _) | (Generator::Ldm(_), SamplerKind::Ddpm) => {
                let diffusion = match self {
                    Generator::Dit(m) => GaussianDiffusion::dit(&s.steps.to_string(), m.config.learn_sigma)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
                    Generator::Ldm(m) => {
                        let keep = space_timesteps(m.config.timesteps, &s.steps.to_string())
                            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                        LdmSchedule::new(&m.config).gaussian(&keep)
                    }
                    Generator::Sit(..) => unreachable!("matched above"),
                };
                let sampler = if s.sampler == SamplerKind::Ddpm {
                    GaussianSampler::Ddpm
                } else {
                    GaussianSampler::Ddim { eta: s.eta }
                };
                let total = diffusion.num_steps();
                sample_loop(&diffusion, net, x, &y, sampler, false, &mut noise, &mut |st| {
                    progress(st.index + 1, total);
                    Ok(())
                })?
            }
            (Generator::Ldm(m), _) => {
                let d = DdimSchedule::new(&LdmSchedule::new(&m.config), s.steps, s.eta)?;
                let total = d.len();
                ddim_sample(m, &d, x, &y, s.cfg_scale, &mut noise, &mut |st| {
                    progress(st.step + 1, total);
                    Ok(())
                })?
            }
            (Generator::Sit(_, transport), sampler) => {
                let total = s.steps;
                let mut done = 1;
                if sampler == SamplerKind::Sde {
                    let o = SdeOptions { form: DiffusionForm::Sigma, norm: 1.0, last: LastStep::Mean(0.04) };
                    let states = sample_sde(transport, net, &x, &y, o, s.steps, &mut noise, &mut |k| {
                        progress(k + 1, total);
                        Ok(())
                    })?;
                    states.last().cloned().expect("at least one state")
                } else {
                    let method = match sampler {
                        SamplerKind::Euler => OdeMethod::Euler,
                        SamplerKind::Heun => OdeMethod::Heun2,
                        _ => OdeMethod::Dopri5(Dopri5Options { atol: s.atol, rtol: s.rtol, ..Default::default() }),
                    };
                    let (states, _) = sample_ode(transport, net, &x, &y, method, s.steps, &mut |t| {
                        done += 1;
                        progress(((t * total as f64) as usize).clamp(done.min(total), total), total);
                        Ok(())
                    })?;
                    states.last().cloned().expect("at least one state")
                }
            }
        };
        out.narrow(0, 0, b)
    }
}
