//! taming building blocks, key for key as `vqgan-gpt-lc/models/encoder_decoder.py`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{attention, ops, Conv2d, GroupNorm};

/// taming `Normalize`: GroupNorm(32, eps 1e-6, affine).
pub fn normalize(vb: VarBuilder, channels: usize) -> Result<GroupNorm> {
    GroupNorm::new(vb, 32, channels, 1e-6)
}

/// taming `ResnetBlock` (no timestep embedding, dropout 0): `x' + conv2(swish(norm2(conv1(swish(norm1(x))))))`
/// where `x'` is `nin_shortcut(x)` (1×1 conv on the block input) when the width changes.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(ResnetBlock {
            norm1: normalize(vb.pp("norm1"), cin)?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: normalize(vb.pp("norm2"), cout)?,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            nin_shortcut: if cin != cout {
                Some(Conv2d::new(vb.pp("nin_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.nin_shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// taming `AttnBlock`: single-head self-attention over the h·w positions with 1×1 q/k/v/proj_out convs,
/// scale `c^-0.5`, residual.
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
    channels: usize,
}

impl AttnBlock {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(AttnBlock {
            norm: normalize(vb.pp("norm"), c)?,
            q: Conv2d::new(vb.pp("q"), c, c, 1, 1, 0)?,
            k: Conv2d::new(vb.pp("k"), c, c, 1, 1, 0)?,
            v: Conv2d::new(vb.pp("v"), c, c, 1, 1, 0)?,
            proj_out: Conv2d::new(vb.pp("proj_out"), c, c, 1, 1, 0)?,
            channels: c,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x)?;
        // [B, C, H, W] → [B, HW, C]
        let tokens = |t: Tensor| t.reshape((b, c, h * w))?.transpose(1, 2);
        let q = tokens(self.q.forward(&hn)?)?;
        let k = tokens(self.k.forward(&hn)?)?;
        let v = tokens(self.v.forward(&hn)?)?;
        let scale = (self.channels as f64).powf(-0.5);
        let out = attention::attend(&q, &k, &v, scale)?; // [B, HW, C]
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// taming `Downsample(with_conv=True)`: zero-pad right and bottom by one, then 3×3 conv stride 2, no padding.
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Downsample { conv: Conv2d::new(vb.pp("conv"), c, c, 3, 2, 0)? })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// taming `Upsample(with_conv=True)`: nearest ×2, then 3×3 conv.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Upsample { conv: Conv2d::new(vb.pp("conv"), c, c, 3, 1, 1)? })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&ops::upsample_nearest2x(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use gen_nn::gradcheck::gradcheck;
    use gen_nn::RandomWeights;

    fn check(make: impl Fn(VarBuilder) -> Result<Box<dyn Module>>, shape: &[usize]) {
        let rw = RandomWeights::new(7);
        let block = make(rw.var_builder(DType::F64, &Device::Cpu)).unwrap();
        let x = gen_runtime::Rng::new(8).randn(shape, 1.0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let err = gradcheck(&|t| block.forward(&t[0]), &[x], 1e-6, 120).unwrap();
        assert!(err < 1e-6, "relative gradient error {err}");
    }

    #[test]
    fn resnet_block_with_nin_shortcut_gradcheck() {
        check(|vb| Ok(Box::new(ResnetBlock::new(vb, 32, 64)?)), &[2, 32, 5, 4]);
    }

    #[test]
    fn resnet_block_gradcheck() {
        check(|vb| Ok(Box::new(ResnetBlock::new(vb, 32, 32)?)), &[1, 32, 4, 4]);
    }

    #[test]
    fn attn_block_gradcheck() {
        check(|vb| Ok(Box::new(AttnBlock::new(vb, 32)?)), &[2, 32, 3, 4]);
    }

    #[test]
    fn downsample_gradcheck() {
        check(|vb| Ok(Box::new(Downsample::new(vb, 32)?)), &[1, 32, 6, 6]);
    }

    #[test]
    fn upsample_gradcheck() {
        check(|vb| Ok(Box::new(Upsample::new(vb, 32)?)), &[1, 32, 3, 4]);
    }
}
