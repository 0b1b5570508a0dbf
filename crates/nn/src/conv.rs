//! 2-D convolution layer (torch `nn.Conv2d` with bias, groups 1).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor, // [out, in, k, k]
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// Reads `weight` [out, in, k, k] and `bias` [out] under the builder's prefix.
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vb.get((cout, cin, k, k), "weight")?;
        let bias = Some(vb.get(cout, "bias")?);
        Ok(Conv2d { weight, bias, stride, padding })
    }

    /// `nn.Conv2d(.., bias=False)`: reads `weight` only.
    pub fn new_no_bias(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Conv2d { weight: vb.get((cout, cin, k, k), "weight")?, bias: None, stride, padding })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}
