//! A DiT / SiT / LDM training run as one TOML file (`configs/diffusion/*.toml`): the network, its
//! diffusion or transport, AdamW and its schedule, the loop with its EMA, and the sampling the exported
//! model recommends. The latent shape and the classes come from the shards.

use gen_runtime::{Error, Result};
use gen_train::{EmaConfig, LrSchedule, OptimConfig};
use serde::{Deserialize, Serialize};

use crate::dit::DitConfig;
use crate::ldm::{LdmConfig, UnetConfig};
use crate::sampling::SamplingSpec;
use crate::transport::{LossWeight, PathKind, Prediction};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionTrainConfig {
    pub model: ModelSpec,
    pub optim: OptimConfig,
    pub train: TrainSection,
    /// What `gen sample` uses with the exported model unless told otherwise.
    #[serde(default)]
    pub sampling: SamplingSpec,
}

/// The network, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    Dit(DitSpec),
    Sit(SitSpec),
    Ldm(LdmSpec),
}

/// DiT's size (`DiT(...)` arguments but the latent's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DitSpec {
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// Label dropout to the null class (official 0.1), which trains the unconditional branch of CFG.
    #[serde(default = "tenth")]
    pub class_dropout_prob: f64,
    #[serde(default = "yes")]
    pub learn_sigma: bool,
}

/// SiT: the DiT network and its transport (official: Linear path, velocity prediction).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SitSpec {
    #[serde(flatten)]
    pub net: DitSpec,
    #[serde(default = "linear_path")]
    pub path: PathKind,
    #[serde(default = "velocity")]
    pub prediction: Prediction,
    #[serde(default)]
    pub loss_weight: LossWeight,
}

/// The LDM UNet (the latent's size and channels and the class count come from the shards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LdmSpec {
    pub model_channels: usize,
    pub attention_resolutions: Vec<usize>,
    pub num_res_blocks: usize,
    pub channel_mult: Vec<usize>,
    pub num_head_channels: usize,
    #[serde(default = "one")]
    pub transformer_depth: usize,
    pub context_dim: usize,
    #[serde(default = "linear_start")]
    pub linear_start: f64,
    #[serde(default = "linear_end")]
    pub linear_end: f64,
    /// Label dropout to the null class. Official LDM-LC trains none (its null row stays at its init), so
    /// its guidance mixes in an untrained context; 0.1 trains it as DiT does.
    #[serde(default = "tenth")]
    pub class_dropout: f64,
}

fn four() -> f64 {
    4.0
}
fn tenth() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn linear_path() -> PathKind {
    PathKind::Linear
}
fn velocity() -> Prediction {
    Prediction::Velocity
}
fn linear_start() -> f64 {
    0.0015
}
fn linear_end() -> f64 {
    0.0195
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// The weight average that is exported (official DiT/SiT: decay 0.9999; LDM: LitEma with warm-up).
    pub ema: EmaConfig,
    /// Write the final model folder in f16.
    #[serde(default)]
    pub export_f16: bool,
}

/// The resolved architecture a run trains and a model folder holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Dit(DitConfig),
    Sit(SitArch),
    Ldm(LdmConfig),
}

/// SiT's network and transport.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitArch {
    pub net: DitConfig,
    pub path: PathKind,
    pub prediction: Prediction,
    #[serde(default)]
    pub loss_weight: LossWeight,
}

impl DitSpec {
    fn config(&self, input_size: usize, in_channels: usize, num_classes: usize) -> DitConfig {
        DitConfig {
            input_size,
            patch_size: self.patch_size,
            in_channels,
            hidden_size: self.hidden_size,
            depth: self.depth,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            class_dropout_prob: self.class_dropout_prob,
            num_classes,
            learn_sigma: self.learn_sigma,
        }
    }
}

impl DiffusionTrainConfig {
    /// Parses a config file's text; errors name the file and the field.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self> {
        let c: Self =
            toml::from_str(text).map_err(|e| Error::format(path, gen_runtime::error::one_line_text(&e.to_string())))?;
        c.validate().map_err(|e| e.at(path))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 {
            return Err(Error::config("train.steps", "steps and batch_size must be at least 1"));
        }
        if !(0.0..1.0).contains(&t.ema.decay) {
            return Err(Error::config("train.ema.decay", format!("{} is outside [0, 1)", t.ema.decay)));
        }
        let dropout = match &self.model {
            ModelSpec::Dit(d) => d.class_dropout_prob,
            ModelSpec::Sit(s) => s.net.class_dropout_prob,
            ModelSpec::Ldm(l) => l.class_dropout,
        };
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::config("model.class_dropout", format!("{dropout} is outside [0, 1)")));
        }
        self.sampling.validate()?;
        self.optim.validate()?;
        self.schedule().validate()
    }

    pub fn kind(&self) -> &'static str {
        match self.model {
            ModelSpec::Dit(_) => "dit",
            ModelSpec::Sit(_) => "sit",
            ModelSpec::Ldm(_) => "ldm",
        }
    }

    /// The architecture for latents of `channels × side × side` and `num_classes` classes.
    pub fn arch(&self, channels: usize, side: usize, num_classes: usize) -> Result<Arch> {
        let arch = match &self.model {
            ModelSpec::Dit(d) => Arch::Dit(d.config(side, channels, num_classes)),
            ModelSpec::Sit(s) => Arch::Sit(SitArch {
                net: s.net.config(side, channels, num_classes),
                path: s.path,
                prediction: s.prediction,
                loss_weight: s.loss_weight,
            }),
            ModelSpec::Ldm(l) => Arch::Ldm(LdmConfig {
                unet: UnetConfig {
                    image_size: side,
                    in_channels: channels,
                    out_channels: channels,
                    model_channels: l.model_channels,
                    attention_resolutions: l.attention_resolutions.clone(),
                    num_res_blocks: l.num_res_blocks,
                    channel_mult: l.channel_mult.clone(),
                    num_head_channels: l.num_head_channels,
                    transformer_depth: l.transformer_depth,
                    context_dim: l.context_dim,
                },
                n_classes: num_classes + 1,
                linear_start: l.linear_start,
                linear_end: l.linear_end,
                timesteps: 1000,
            }),
        };
        arch.validate()?;
        Ok(arch)
    }

    pub fn schedule(&self) -> LrSchedule {
        self.optim.schedule(self.train.steps)
    }
}

impl Arch {
    pub fn validate(&self) -> Result<()> {
        let r = match self {
            Arch::Dit(c) => c.validate().map_err(|e| e.to_string()),
            Arch::Sit(s) => s.net.validate().map_err(|e| e.to_string()),
            Arch::Ldm(c) => c.validate().map_err(|e| e.to_string()),
        };
        r.map_err(|e| Error::config("model", e))
    }

    /// Latent channels and side.
    pub fn latent(&self) -> (usize, usize) {
        match self {
            Arch::Dit(c) => (c.in_channels, c.input_size),
            Arch::Sit(s) => (s.net.in_channels, s.net.input_size),
            Arch::Ldm(c) => (c.unet.in_channels, c.unet.image_size),
        }
    }

    /// Real classes (the null class excluded).
    pub fn num_classes(&self) -> usize {
        match self {
            Arch::Dit(c) => c.num_classes,
            Arch::Sit(s) => s.net.num_classes,
            Arch::Ldm(c) => c.n_classes - 1,
        }
    }

    pub fn kind(&self) -> gen_runtime::ModelKind {
        match self {
            Arch::Dit(_) => gen_runtime::ModelKind::Dit,
            Arch::Sit(_) => gen_runtime::ModelKind::Sit,
            Arch::Ldm(_) => gen_runtime::ModelKind::Ldm,
        }
    }
}
