//! The one interface every sampler sees: a class-conditional network over latents, and classifier-free
//! guidance on top of it.

use candle_core::{Result, Tensor};

use crate::dit::Dit;

/// A class-conditional network over latents: DiT (ε and variance), SiT (velocity, score or noise),
/// the LDM UNet (ε).
pub trait Denoiser {
    /// x [B, C, H, W], t [B] F32 (diffusion steps or transport times), y [B] class ids → [B, C_out, H, W].
    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// The latent channels C.
    fn in_channels(&self) -> usize;
    /// The unconditional label for guidance, if the network has one.
    fn null_class(&self) -> Option<u32>;
}

impl Denoiser for Dit {
    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        Dit::forward(self, x, t, y)
    }
    fn in_channels(&self) -> usize {
        self.config.in_channels
    }
    fn null_class(&self) -> Option<u32> {
        self.config.null_class()
    }
}

/// Which output channels classifier-free guidance mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuideChannels {
    /// The first n channels only: the official DiT/SiT `forward_with_cfg` guides `[:, :3]` (written for
    /// 4-channel SD latents and kept by DiT-LC/SiT-LC on 8 channels, so 5 of 8 are never guided).
    First(usize),
    /// Every latent channel of the prediction (the variance channels stay each half's own): the
    /// standard choice, the default for new models.
    Latent,
}

impl GuideChannels {
    /// The official quirk.
    pub const OFFICIAL: GuideChannels = GuideChannels::First(3);

    fn count(self, in_channels: usize) -> usize {
        match self {
            GuideChannels::First(n) => n.min(in_channels),
            GuideChannels::Latent => in_channels,
        }
    }
}

/// `forward_with_cfg`: the batch is `[cond; uncond]` halves whose latents are equal (only the first half of
/// x is read, as officially); the guided channels become `u + s·(c − u)` in both halves, the others
/// are each half's own output.
pub struct Guided<'a, M: Denoiser + ?Sized> {
    pub model: &'a M,
    pub scale: f64,
    pub channels: GuideChannels,
}

impl<M: Denoiser + ?Sized> Denoiser for Guided<'_, M> {
    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        if b % 2 != 0 {
            candle_core::bail!("guidance: the batch of {b} is not [cond; uncond] halves");
        }
        let half = x.narrow(0, 0, b / 2)?;
        let out = self.model.forward(&Tensor::cat(&[&half, &half], 0)?, t, y)?;
        let (n, total) = (self.channels.count(self.model.in_channels()), out.dim(1)?);
        let eps = out.narrow(1, 0, n)?;
        let (cond, uncond) = (eps.narrow(0, 0, b / 2)?, eps.narrow(0, b / 2, b / 2)?);
        let guided = (&uncond + ((&cond - &uncond)? * self.scale)?)?;
        let eps = Tensor::cat(&[&guided, &guided], 0)?;
        if n == total {
            return Ok(eps);
        }
        Tensor::cat(&[&eps, &out.narrow(1, n, total - n)?], 1)
    }
    fn in_channels(&self) -> usize {
        self.model.in_channels()
    }
    fn null_class(&self) -> Option<u32> {
        self.model.null_class()
    }
}
