//! LDM-LC (`ldm-lc/`): the openaimodel UNet with spatial-transformer cross-attention on the
//! `ClassEmbedder` context, the `LatentDiffusion` schedule and loss, and the `DDIMSampler` discretisation.

pub mod blocks;
pub mod config;
pub mod ddim;
pub mod load;
pub mod schedule;
pub mod unet;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::Embedding;

pub use config::{LdmConfig, UnetConfig};
pub use unet::Unet;

use crate::denoiser::Denoiser;

/// The UNet with its class table (`model.diffusion_model.*`, `cond_stage_model.embedding`).
#[derive(Clone, Debug)]
pub struct Ldm {
    pub config: LdmConfig,
    pub unet: Unet,
    classes: Embedding,
}

impl Ldm {
    /// From a builder rooted at the `LatentDiffusion` keys.
    pub fn new(vb: VarBuilder, config: &LdmConfig) -> Result<Self> {
        Self::from_parts(vb.pp("model.diffusion_model"), vb.pp("cond_stage_model.embedding"), config)
    }

    /// From separate builders for the UNet and the class table (the EMA UNet lives under other keys).
    pub fn from_parts(unet: VarBuilder, classes: VarBuilder, config: &LdmConfig) -> Result<Self> {
        config.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Ldm {
            config: config.clone(),
            unet: Unet::new(unet, &config.unet)?,
            classes: Embedding::new(classes, config.n_classes, config.unet.context_dim)?,
        })
    }

    /// `ClassEmbedder`: y [B] → the one-token context [B, 1, context_dim].
    pub fn context(&self, y: &Tensor) -> Result<Tensor> {
        self.classes.forward(y)?.unsqueeze(1)
    }
}

impl Denoiser for Ldm {
    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.unet.forward(x, t, &self.context(y)?)
    }
    fn in_channels(&self) -> usize {
        self.config.unet.in_channels
    }
    fn null_class(&self) -> Option<u32> {
        Some(self.config.null_class())
    }
}
