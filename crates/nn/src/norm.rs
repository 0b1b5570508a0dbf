//! GroupNorm (torch `nn.GroupNorm`, affine), and GroupNorm fused with SiLU (taming's `norm → swish`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(GroupNorm { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }

    /// `silu(groupnorm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}
