//! SiT (Ma et al.), as `sit-lc/models.py` builds it: the DiT network key for key, whose forward keeps
//! only the first `in_channels` outputs (the learned-sigma half is never used by SiT's losses or samplers).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::denoiser::Denoiser;
use crate::dit::{Dit, DitConfig};

#[derive(Clone, Debug)]
pub struct Sit {
    pub net: Dit,
}

impl Sit {
    pub fn new(vb: VarBuilder, config: &DitConfig) -> Result<Self> {
        Ok(Sit { net: Dit::new(vb, config)? })
    }

    /// `SiT.forward(x, t, y)`: t ∈ [0, 1] (0 = noise), the prediction of the transport's kind, [B, C, H, W].
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let out = self.net.forward(x, t, y)?;
        if self.net.config.learn_sigma {
            out.narrow(1, 0, self.net.config.in_channels)
        } else {
            Ok(out)
        }
    }
}

impl Denoiser for Sit {
    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        Sit::forward(self, x, t, y)
    }
    fn in_channels(&self) -> usize {
        self.net.config.in_channels
    }
    fn null_class(&self) -> Option<u32> {
        self.net.config.null_class()
    }
}
