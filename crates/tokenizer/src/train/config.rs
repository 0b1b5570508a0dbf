//! A tokenizer training run as one TOML file (`configs/tokenizer/*.toml`): the architecture, where the
//! codebook comes from, the loss weights, the optimizer and the loop. The run folder keeps a copy; its
//! hash guards `--resume`.

use std::path::Path;

use gen_runtime::{Error, Result};
use gen_train::OptimConfig;
use serde::{Deserialize, Serialize};

use crate::config::{QuantizerKind, VqConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The architecture (a model folder's `[tokenizer]` table).
    pub model: VqConfig,
    #[serde(default)]
    pub codebook: CodebookSource,
    pub loss: LossConfig,
    /// Adam for both networks (official: betas (0.5, 0.9), eps 1e-7, no weight decay), a linear warmup
    /// then a half-cosine to `min_lr` (`util/lr_sched.adjust_learning_rate`, per step instead of per epoch).
    pub optim: OptimConfig,
    pub train: LoopSettings,
}

/// Where the initial codebook comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodebookSource {
    /// LC: the frozen k-means codebook (`gen init-codebook`, or the official `codebook-100K.pth`).
    /// The other kinds draw theirs (VQGAN, FC, EMA: U(−1/N, 1/N) as the official `--tuning_codebook -1`;
    /// SimVQ: N(0, 1/embed_dim), SimVQ's init).
    pub file: Option<String>,
    /// The file's sha256, filled in when the run starts (so `--resume` refuses a changed codebook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How the projector starts (LC, SimVQ).
    #[serde(default)]
    pub projector_init: ProjectorInit,
}

/// The projector's initial weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectorInit {
    /// The official draw: `normal_(std = embed_dim ** -0.5)` (Linear), torch's default (MLP).
    #[default]
    Official,
    /// The official draw, then its last layer rescaled on the first batch so the projected codebook has
    /// the latents' per-channel mean and standard deviation (a data-dependent init, as codebooks are often
    /// initialised from the first batch). Without it the projected codebook starts ~10× wider than the
    /// encoder's latents and a short run uses only the codes near its centre.
    LatentMoments,
}

/// The official generator loss `L1 + rate_p·LPIPS + rate_q·qloss + d_weight·g_loss` and its GAN settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub rate_q: f64,
    /// The perceptual weight; the term needs VGG16 + LPIPS weights, and is left out (said once) without.
    pub rate_p: f64,
    /// The adversarial weight (multiplies the adaptive weight); 0 turns the GAN off.
    pub rate_d: f64,
    /// The step after which the GAN term and the discriminator train (official: `cur_iter > disc_start`).
    pub disc_start: u64,
    /// LPIPS dropout as in official training (`model.train(True)` re-enables it); false: LPIPS in eval mode.
    #[serde(default = "yes")]
    pub lpips_dropout: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopSettings {
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl TrainConfig {
    /// Reads and checks a config file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::format(path, e.message().to_string()))?;
        cfg.validate().map_err(|e| e.at(path))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let needs_file = self.model.quantizer == QuantizerKind::Lc;
        if needs_file && self.codebook.file.is_none() {
            return Err(Error::config(
                "codebook.file",
                "the LC quantizer needs its frozen codebook (gen init-codebook)",
            ));
        }
        if !needs_file && self.codebook.file.is_some() {
            return Err(Error::config(
                "codebook.file",
                format!("the {} quantizer draws its own codebook; remove the file", self.model.quantizer.name()),
            ));
        }
        let finite_nonneg =
            [("loss.rate_q", self.loss.rate_q), ("loss.rate_p", self.loss.rate_p), ("loss.rate_d", self.loss.rate_d)];
        if let Some((field, v)) = finite_nonneg.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::config(*field, format!("{v} must be a finite number >= 0")));
        }
        self.optim.validate()?;
        if self.train.steps == 0 || self.train.batch_size < 2 {
            return Err(Error::config(
                "train",
                "needs steps >= 1 and batch_size >= 2 (BatchNorm in the discriminator)",
            ));
        }
        Ok(())
    }
}
