//! InceptionV3 exactly as pytorch-fid's FID variant (`pytorch_fid/inception.py`: `fid_inception_v3` with
//! `FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`), in eval mode.
//!
//! Keys are those of `pt_inception-2015-12-05-6726825d.pth` (torchvision `Inception3` names:
//! `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, …). Every `BasicConv2d` is a conv
//! without bias, BatchNorm (eps 1e-3, running statistics) and ReLU; the BatchNorm is folded into the conv
//! when the weights are loaded (`w·γ/√(σ²+ε)`, bias `β − μ·γ/√(σ²+ε)`), one pass fewer per layer.
//! The FID blocks differ from torchvision's: their average pools exclude the padding
//! (`count_include_pad=False`), and Mixed_7c pools by max.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use gen_nn::batch::{par_batch, par_batch_cat};
use gen_nn::kernels::{avg_pool2d_exclude_pad, conv2d_hw_relu, max_pool2d};

/// BatchNorm eps of the TF-ported Inception.
const BN_EPS: f64 = 1e-3;

/// The feature taps pytorch-fid offers (`--dims`): spatial means of the outputs of blocks 0, 1, 2, and pool3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// After the first max pool (64 channels).
    Dims64,
    /// After the second max pool (192 channels).
    Dims192,
    /// After Mixed_6e (768 channels).
    Dims768,
    /// pool3: the mean of Mixed_7c (2048 channels).
    Dims2048,
}

impl Tap {
    pub fn from_dims(dims: usize) -> Option<Tap> {
        match dims {
            64 => Some(Tap::Dims64),
            192 => Some(Tap::Dims192),
            768 => Some(Tap::Dims768),
            2048 => Some(Tap::Dims2048),
            _ => None,
        }
    }

    pub fn dims(self) -> usize {
        match self {
            Tap::Dims64 => 64,
            Tap::Dims192 => 192,
            Tap::Dims768 => 768,
            Tap::Dims2048 => 2048,
        }
    }

    fn block(self) -> usize {
        self as usize
    }
}

/// torchvision `BasicConv2d` (conv, no bias → BatchNorm2d(eps 1e-3) → ReLU), BatchNorm folded in.
#[derive(Clone, Debug)]
struct BasicConv2d {
    weight: Tensor, // [out, in, kh, kw], scaled by γ/√(σ²+ε)
    bias: Tensor,   // [out]: β − μ·γ/√(σ²+ε)
    stride: usize,
    pad: (usize, usize),
}

impl BasicConv2d {
    fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let w = vb.pp("conv").get((cout, cin, k.0, k.1), "weight")?.to_dtype(DType::F32)?;
        let bn = vb.pp("bn");
        let gamma = bn.get(cout, "weight")?.to_dtype(DType::F32)?;
        let beta = bn.get(cout, "bias")?.to_dtype(DType::F32)?;
        let mean = bn.get(cout, "running_mean")?.to_dtype(DType::F32)?;
        let var = bn.get(cout, "running_var")?.to_dtype(DType::F32)?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?; // [out]
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(BasicConv2d { weight, bias, stride, pad })
    }

    fn square(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        Self::new(vb, cin, cout, (k, k), stride, (pad, pad))
    }
}

impl Module for BasicConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_hw_relu(x, &self.weight, Some(&self.bias), self.stride, self.pad)
    }
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)`: each window's sum over its valid
/// pixels divided by their count (4 in corners, 6 on edges, 9 inside).
fn avg_pool3_exclude_pad(x: &Tensor) -> Result<Tensor> {
    avg_pool2d_exclude_pad(x, 3, 1, 1)
}

/// FIDInceptionA (Mixed_5b/5c/5d): [1x1 64, 5x5 64, 3x3dbl 96, pool `pool_features`].
struct InceptionA {
    b1x1: BasicConv2d,
    b5x5: [BasicConv2d; 2],
    b3x3dbl: [BasicConv2d; 3],
    pool: BasicConv2d,
}

impl InceptionA {
    fn new(vb: VarBuilder, cin: usize, pool_features: usize) -> Result<Self> {
        Ok(InceptionA {
            b1x1: BasicConv2d::square(vb.pp("branch1x1"), cin, 64, 1, 1, 0)?,
            b5x5: [
                BasicConv2d::square(vb.pp("branch5x5_1"), cin, 48, 1, 1, 0)?,
                BasicConv2d::square(vb.pp("branch5x5_2"), 48, 64, 5, 1, 2)?,
            ],
            b3x3dbl: [
                BasicConv2d::square(vb.pp("branch3x3dbl_1"), cin, 64, 1, 1, 0)?,
                BasicConv2d::square(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                BasicConv2d::square(vb.pp("branch3x3dbl_3"), 96, 96, 3, 1, 1)?,
            ],
            pool: BasicConv2d::square(vb.pp("branch_pool"), cin, pool_features, 1, 1, 0)?,
        })
    }
}

impl Module for InceptionA {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = chain(x, &self.b5x5)?;
        let c = chain(x, &self.b3x3dbl)?;
        let d = self.pool.forward(&avg_pool3_exclude_pad(x)?)?;
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// torchvision InceptionB (Mixed_6a): [3x3/2 384, 3x3dbl/2 96, max pool 3/2].
struct InceptionB {
    b3x3: BasicConv2d,
    b3x3dbl: [BasicConv2d; 3],
}

impl InceptionB {
    fn new(vb: VarBuilder, cin: usize) -> Result<Self> {
        Ok(InceptionB {
            b3x3: BasicConv2d::square(vb.pp("branch3x3"), cin, 384, 3, 2, 0)?,
            b3x3dbl: [
                BasicConv2d::square(vb.pp("branch3x3dbl_1"), cin, 64, 1, 1, 0)?,
                BasicConv2d::square(vb.pp("branch3x3dbl_2"), 64, 96, 3, 1, 1)?,
                BasicConv2d::square(vb.pp("branch3x3dbl_3"), 96, 96, 3, 2, 0)?,
            ],
        })
    }
}

impl Module for InceptionB {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3x3.forward(x)?;
        let b = chain(x, &self.b3x3dbl)?;
        let c = max_pool2d(x, 3, 2, 0)?;
        Tensor::cat(&[a, b, c], 1)
    }
}

/// FIDInceptionC (Mixed_6b..6e): [1x1 192, 7x7 192, 7x7dbl 192, pool 192], 7×7 factored into 1×7 and 7×1.
struct InceptionC {
    b1x1: BasicConv2d,
    b7x7: [BasicConv2d; 3],
    b7x7dbl: [BasicConv2d; 5],
    pool: BasicConv2d,
}

impl InceptionC {
    fn new(vb: VarBuilder, cin: usize, c7: usize) -> Result<Self> {
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0))); // (kernel, padding)
        let conv = |name: &str, i: usize, o: usize, (k, p): ((usize, usize), (usize, usize))| {
            BasicConv2d::new(vb.pp(name), i, o, k, 1, p)
        };
        Ok(InceptionC {
            b1x1: BasicConv2d::square(vb.pp("branch1x1"), cin, 192, 1, 1, 0)?,
            b7x7: [
                BasicConv2d::square(vb.pp("branch7x7_1"), cin, c7, 1, 1, 0)?,
                conv("branch7x7_2", c7, c7, row)?,
                conv("branch7x7_3", c7, 192, col)?,
            ],
            b7x7dbl: [
                BasicConv2d::square(vb.pp("branch7x7dbl_1"), cin, c7, 1, 1, 0)?,
                conv("branch7x7dbl_2", c7, c7, col)?,
                conv("branch7x7dbl_3", c7, c7, row)?,
                conv("branch7x7dbl_4", c7, c7, col)?,
                conv("branch7x7dbl_5", c7, 192, row)?,
            ],
            pool: BasicConv2d::square(vb.pp("branch_pool"), cin, 192, 1, 1, 0)?,
        })
    }
}

impl Module for InceptionC {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let b = chain(x, &self.b7x7)?;
        let c = chain(x, &self.b7x7dbl)?;
        let d = self.pool.forward(&avg_pool3_exclude_pad(x)?)?;
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// torchvision InceptionD (Mixed_7a): [3x3/2 320, 7x7x3/2 192, max pool 3/2].
struct InceptionD {
    b3x3: [BasicConv2d; 2],
    b7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(vb: VarBuilder, cin: usize) -> Result<Self> {
        Ok(InceptionD {
            b3x3: [
                BasicConv2d::square(vb.pp("branch3x3_1"), cin, 192, 1, 1, 0)?,
                BasicConv2d::square(vb.pp("branch3x3_2"), 192, 320, 3, 2, 0)?,
            ],
            b7x7x3: [
                BasicConv2d::square(vb.pp("branch7x7x3_1"), cin, 192, 1, 1, 0)?,
                BasicConv2d::new(vb.pp("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
                BasicConv2d::new(vb.pp("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
                BasicConv2d::square(vb.pp("branch7x7x3_4"), 192, 192, 3, 2, 0)?,
            ],
        })
    }
}

impl Module for InceptionD {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = chain(x, &self.b3x3)?;
        let b = chain(x, &self.b7x7x3)?;
        let c = max_pool2d(x, 3, 2, 0)?;
        Tensor::cat(&[a, b, c], 1)
    }
}

/// FIDInceptionE_1 (Mixed_7b, average pool without padding) and FIDInceptionE_2 (Mixed_7c, max pool):
/// [1x1 320, 3x3 → (1×3, 3×1) 768, 3x3dbl → (1×3, 3×1) 768, pool 192].
struct InceptionE {
    b1x1: BasicConv2d,
    b3x3_1: BasicConv2d,
    b3x3_2: [BasicConv2d; 2],
    b3x3dbl: [BasicConv2d; 2],
    b3x3dbl_3: [BasicConv2d; 2],
    pool: BasicConv2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(vb: VarBuilder, cin: usize, max_pool: bool) -> Result<Self> {
        let split = |a: &str, b: &str, cin: usize| -> Result<[BasicConv2d; 2]> {
            Ok([
                BasicConv2d::new(vb.pp(a), cin, 384, (1, 3), 1, (0, 1))?,
                BasicConv2d::new(vb.pp(b), cin, 384, (3, 1), 1, (1, 0))?,
            ])
        };
        Ok(InceptionE {
            b1x1: BasicConv2d::square(vb.pp("branch1x1"), cin, 320, 1, 1, 0)?,
            b3x3_1: BasicConv2d::square(vb.pp("branch3x3_1"), cin, 384, 1, 1, 0)?,
            b3x3_2: split("branch3x3_2a", "branch3x3_2b", 384)?,
            b3x3dbl: [
                BasicConv2d::square(vb.pp("branch3x3dbl_1"), cin, 448, 1, 1, 0)?,
                BasicConv2d::square(vb.pp("branch3x3dbl_2"), 448, 384, 3, 1, 1)?,
            ],
            b3x3dbl_3: split("branch3x3dbl_3a", "branch3x3dbl_3b", 384)?,
            pool: BasicConv2d::square(vb.pp("branch_pool"), cin, 192, 1, 1, 0)?,
            max_pool,
        })
    }
}

impl Module for InceptionE {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1x1.forward(x)?;
        let t = self.b3x3_1.forward(x)?;
        let b = Tensor::cat(&[self.b3x3_2[0].forward(&t)?, self.b3x3_2[1].forward(&t)?], 1)?;
        let t = chain(x, &self.b3x3dbl)?;
        let c = Tensor::cat(&[self.b3x3dbl_3[0].forward(&t)?, self.b3x3dbl_3[1].forward(&t)?], 1)?;
        let pooled = if self.max_pool { max_pool2d(x, 3, 1, 1)? } else { avg_pool3_exclude_pad(x)? };
        let d = self.pool.forward(&pooled)?;
        Tensor::cat(&[a, b, c, d], 1)
    }
}

fn chain(x: &Tensor, convs: &[BasicConv2d]) -> Result<Tensor> {
    convs.iter().try_fold(x.clone(), |t, c| c.forward(&t))
}

/// pytorch-fid's `InceptionV3` in FID mode, from the input of `Conv2d_1a_3x3` (already resized and
/// scaled to [−1, 1]) to the four feature blocks.
pub struct FidInception {
    stem0: [BasicConv2d; 3],
    stem1: [BasicConv2d; 2],
    mixed5: [InceptionA; 3],
    mixed6a: InceptionB,
    mixed6: [InceptionC; 4],
    mixed7a: InceptionD,
    mixed7: [InceptionE; 2],
    /// The 1008-way classifier (`fc.weight` [1008, 2048], `fc.bias`), for the Inception Score; FID never
    /// reads it, and a file without it still computes FID.
    fc: Option<(Tensor, Tensor)>,
}

/// The outputs of the blocks a forward computed, up to the last one asked for.
#[derive(Debug, Default)]
pub struct Blocks {
    /// [N, 64, h, w] after the first max pool.
    pub block0: Option<Tensor>,
    /// [N, 192, h, w] after the second max pool.
    pub block1: Option<Tensor>,
    /// [N, 288, h, w] after Mixed_5d (for tests).
    pub mixed_5d: Option<Tensor>,
    /// [N, 768, h, w] after Mixed_6e.
    pub block2: Option<Tensor>,
    /// [N, 2048, h, w] after Mixed_7c, before pool3.
    pub mixed_7c: Option<Tensor>,
    /// [N, 7, h, w]: the first 7 channels of Mixed_6d's 1×1 branch (BasicConv2d output, after its ReLU),
    /// the TF graph's `mixed_6/conv` that the ADM evaluator's sFID reads. Only with `blocks_spatial`.
    pub spatial: Option<Tensor>,
}

impl FidInception {
    /// Builds the network from the official key names (`fc.*` and `*.num_batches_tracked` are not read).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let sq = |name: &str, i, o, k, s, p| BasicConv2d::square(vb.pp(name), i, o, k, s, p);
        Ok(FidInception {
            stem0: [
                sq("Conv2d_1a_3x3", 3, 32, 3, 2, 0)?,
                sq("Conv2d_2a_3x3", 32, 32, 3, 1, 0)?,
                sq("Conv2d_2b_3x3", 32, 64, 3, 1, 1)?,
            ],
            stem1: [sq("Conv2d_3b_1x1", 64, 80, 1, 1, 0)?, sq("Conv2d_4a_3x3", 80, 192, 3, 1, 0)?],
            mixed5: [
                InceptionA::new(vb.pp("Mixed_5b"), 192, 32)?,
                InceptionA::new(vb.pp("Mixed_5c"), 256, 64)?,
                InceptionA::new(vb.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed6a: InceptionB::new(vb.pp("Mixed_6a"), 288)?,
            mixed6: [
                InceptionC::new(vb.pp("Mixed_6b"), 768, 128)?,
                InceptionC::new(vb.pp("Mixed_6c"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6d"), 768, 160)?,
                InceptionC::new(vb.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed7a: InceptionD::new(vb.pp("Mixed_7a"), 768)?,
            mixed7: [InceptionE::new(vb.pp("Mixed_7b"), 1280, false)?, InceptionE::new(vb.pp("Mixed_7c"), 2048, true)?],
            fc: if vb.contains_tensor("fc.weight") {
                Some((
                    vb.get((1008, 2048), "fc.weight")?.to_dtype(DType::F32)?,
                    vb.get(1008, "fc.bias")?.to_dtype(DType::F32)?,
                ))
            } else {
                None
            },
        })
    }

    /// The 1008 `fc` logits of pool3, [N, 1008] (the Inception Score's classifier).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.fc.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(
                "the Inception weights hold no fc.weight / fc.bias (needed for the Inception Score)".into(),
            )
        })?;
        self.features(x, Tap::Dims2048)?.matmul(&w.t()?)?.broadcast_add(b)
    }

    /// Runs the blocks up to `last` on `x` [N, 3, H, W] in [−1, 1].
    pub fn blocks(&self, x: &Tensor, last: Tap) -> Result<Blocks> {
        self.run_blocks(x, last, false)
    }

    /// `blocks` to pool3, also keeping the sFID tap (`Blocks::spatial`).
    pub fn blocks_spatial(&self, x: &Tensor) -> Result<Blocks> {
        self.run_blocks(x, Tap::Dims2048, true)
    }

    fn run_blocks(&self, x: &Tensor, last: Tap, spatial: bool) -> Result<Blocks> {
        let mut out = Blocks::default();
        let x = max_pool2d(&chain(x, &self.stem0)?, 3, 2, 0)?;
        out.block0 = Some(x.clone());
        if last.block() == 0 {
            return Ok(out);
        }
        let x = max_pool2d(&chain(&x, &self.stem1)?, 3, 2, 0)?;
        out.block1 = Some(x.clone());
        if last.block() == 1 {
            return Ok(out);
        }
        let x = self.mixed5.iter().try_fold(x, |t, m| m.forward(&t))?;
        out.mixed_5d = Some(x.clone());
        let mut x = self.mixed6a.forward(&x)?;
        for (i, m) in self.mixed6.iter().enumerate() {
            if spatial && i == 2 {
                // Mixed_6d's branch1x1 on the block's input: TF's mixed_6/conv
                out.spatial = Some(m.b1x1.forward(&x)?.narrow(1, 0, 7)?);
            }
            x = m.forward(&x)?;
        }
        out.block2 = Some(x.clone());
        if last.block() == 2 {
            return Ok(out);
        }
        let x = self.mixed7a.forward(&x)?;
        let x = self.mixed7.iter().try_fold(x, |t, m| m.forward(&t))?;
        out.mixed_7c = Some(x);
        Ok(out)
    }

    /// pool3 [N, 2048] and the sFID features [N, 7·17·17 at 299²], flattened channels-last as the ADM
    /// evaluator reads TF's NHWC `mixed_6/conv[..., :7]` (the Fréchet distance does not depend on the order).
    pub fn features_spatial(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let parts = par_batch(x, |x| {
            let b = self.blocks_spatial(x)?;
            let m7c = b.mixed_7c.ok_or_else(|| candle_core::Error::Msg("no pool3".into()))?;
            let s = b.spatial.ok_or_else(|| candle_core::Error::Msg("no spatial tap".into()))?;
            Ok((m7c.flatten_from(2)?.mean(D::Minus1)?, s.permute((0, 2, 3, 1))?.flatten_from(1)?))
        })?;
        let (pool3, spatial): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
        Ok((Tensor::cat(&pool3, 0)?, Tensor::cat(&spatial, 0)?))
    }

    /// The features pytorch-fid takes at `tap`: the block output's spatial mean, [N, dims].
    pub fn features(&self, x: &Tensor, tap: Tap) -> Result<Tensor> {
        par_batch_cat(x, |x| {
            let b = self.blocks(x, tap)?;
            let t = match tap {
                Tap::Dims64 => b.block0,
                Tap::Dims192 => b.block1,
                Tap::Dims768 => b.block2,
                Tap::Dims2048 => b.mixed_7c,
            };
            let t = t.ok_or_else(|| candle_core::Error::Msg("the forward stopped before the tap".into()))?;
            t.flatten_from(2)?.mean(D::Minus1)
        })
    }
}
