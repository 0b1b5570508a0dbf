//! LPIPS (Zhang et al. 2018), VGG16 trunk with the v0.1 linear layers: VQGAN-LC's `models/lpips.py`
//! (the tokenizer's perceptual loss) and the `lpips` package's `LPIPS(net='vgg', version='0.1')`. The two
//! differ only in the normalisation eps (1e-7 and 1e-10).
//!
//! Images are in [−1, 1]. Trunk keys are torchvision's `features.{i}.weight|bias` (a user-supplied
//! `vgg16-397923af.pth`), the linear layers `lin{k}.model.1.weight` (LPIPS `weights/v0.1/vgg.pth`, the same
//! file as VQGAN-LC's `models/vgg.pth`). The backward is Candle's autograd through our conv and max-pool
//! kernels, so the loss trains a decoder.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use gen_nn::kernels::max_pool2d;
use gen_nn::Conv2d;
use gen_runtime::Rng;

/// VQGAN-LC's eps (`models/lpips.py`); the `lpips` package uses `LPIPS_PACKAGE_EPS`.
pub const VQGAN_LC_EPS: f64 = 1e-7;
pub const LPIPS_PACKAGE_EPS: f64 = 1e-10;

/// The scaling layer's constants (`ScalingLayer`: `(x − shift) / scale`), f32 as in torch.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// VGG16 `features` indices of the 13 convs, and the slices they belong to (a max-pool starts slices 2..5).
const CONVS: [(usize, usize, usize, usize); 13] = [
    // (features index, in, out, slice)
    (0, 3, 64, 1),
    (2, 64, 64, 1),
    (5, 64, 128, 2),
    (7, 128, 128, 2),
    (10, 128, 256, 3),
    (12, 256, 256, 3),
    (14, 256, 256, 3),
    (17, 256, 512, 4),
    (19, 512, 512, 4),
    (21, 512, 512, 4),
    (24, 512, 512, 5),
    (26, 512, 512, 5),
    (28, 512, 512, 5),
];
const TAP_CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];

/// The LPIPS network: VGG16 `features[0:30]` (taps relu1_2 … relu5_3) and five 1×1 linear layers.
pub struct Lpips {
    convs: Vec<(Conv2d, usize)>,
    lins: Vec<Tensor>, // [1, C_k, 1, 1]
    shift: Tensor,     // [1, 3, 1, 1]
    scale: Tensor,
    eps: f64,
}

/// A distance per pair and its five per-layer terms.
pub struct LpipsOutput {
    /// [N, 1, 1, 1]
    pub dist: Tensor,
    /// Five [N, 1, 1, 1] terms (relu1_2 … relu5_3), summing to `dist`.
    pub layers: Vec<Tensor>,
}

impl Lpips {
    /// `trunk`: torchvision VGG16 names (`features.0.weight`, …); `lin`: `lin{k}.model.1.weight`.
    pub fn new(trunk: VarBuilder, lin: VarBuilder, eps: f64) -> Result<Self> {
        let convs = CONVS
            .iter()
            .map(|&(i, cin, cout, slice)| {
                Ok((Conv2d::new(trunk.pp(format!("features.{i}")), cin, cout, 3, 1, 1)?, slice))
            })
            .collect::<Result<Vec<_>>>()?;
        let lins = TAP_CHANNELS
            .iter()
            .enumerate()
            .map(|(k, &c)| lin.get((1, c, 1, 1), &format!("lin{k}.model.1.weight")))
            .collect::<Result<Vec<_>>>()?;
        let (dtype, dev) = (trunk.dtype(), trunk.device().clone());
        let constant = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), &dev)?.to_dtype(dtype);
        Ok(Lpips { convs, lins, shift: constant(SHIFT)?, scale: constant(SCALE)?, eps })
    }

    /// `ScalingLayer`: `(x − shift) / scale`, a true division as torch.
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)
    }

    /// The five trunk taps of scaled input `x`: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    pub fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut taps = Vec::with_capacity(5);
        let mut h = self.scale_input(x)?;
        let mut slice = 1;
        for (i, (conv, s)) in self.convs.iter().enumerate() {
            if *s != slice {
                taps.push(h.clone()); // the previous slice ended here
                h = max_pool2d(&h, 2, 2, 0)?; // each later slice starts with a 2×2 max-pool
                slice = *s;
            }
            h = conv.forward(&h)?.relu()?;
            if i == self.convs.len() - 1 {
                taps.push(h.clone());
            }
        }
        Ok(taps)
    }

    /// `lin_k((n0 − n1)²)` maps, [N, 1, H_k, W_k], for the taps of `x0` and `x1`.
    pub fn lin_maps(&self, x0: &Tensor, x1: &Tensor) -> Result<Vec<Tensor>> {
        self.lin_maps_dropout(x0, x1, None)
    }

    /// `lin_maps` with each `NetLinLayer`'s `nn.Dropout()` (p 0.5) active when `dropout` gives the draws:
    /// each squared difference is kept with probability ½ and doubled.
    fn lin_maps_dropout(&self, x0: &Tensor, x1: &Tensor, mut dropout: Option<&mut Rng>) -> Result<Vec<Tensor>> {
        let (f0, f1) = (self.features(x0)?, self.features(x1)?);
        f0.iter()
            .zip(&f1)
            .zip(&self.lins)
            .map(|((a, b), w)| {
                let mut d = (self.normalize(a)? - self.normalize(b)?)?.sqr()?;
                if let Some(rng) = dropout.as_deref_mut() {
                    let keep = rng.rand_uniform(d.shape(), 0.0, 1.0, d.device())?.ge(0.5)?.to_dtype(d.dtype())?;
                    d = (d * (keep * 2.0)?)?;
                }
                gen_nn::kernels::conv2d(&d, w, None, 1, 0)
            })
            .collect()
    }

    /// The distance of each pair: the five lin maps' spatial means, summed.
    pub fn forward(&self, x0: &Tensor, x1: &Tensor) -> Result<LpipsOutput> {
        self.forward_dropout(x0, x1, None)
    }

    fn forward_dropout(&self, x0: &Tensor, x1: &Tensor, dropout: Option<&mut Rng>) -> Result<LpipsOutput> {
        let layers = self
            .lin_maps_dropout(x0, x1, dropout)?
            .iter()
            .map(|m| m.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2))
            .collect::<Result<Vec<_>>>()?;
        let mut dist = layers[0].clone();
        for l in &layers[1..] {
            dist = (dist + l)?;
        }
        Ok(LpipsOutput { dist, layers })
    }

    /// VQGAN-LC's perceptual loss: the mean distance over the batch (a scalar).
    pub fn loss(&self, x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
        self.forward(x0, x1)?.dist.mean_all()
    }

    /// The perceptual loss as official tokenizer training computes it: `model.train(True)` undoes
    /// `LPIPS().eval()`, so the linear layers' dropout is active (draws from `rng`).
    pub fn loss_train(&self, x0: &Tensor, x1: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        self.forward_dropout(x0, x1, Some(rng))?.dist.mean_all()
    }

    /// `normalize_tensor`: `x / (√(Σ_c x²) + eps)` per position.
    fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        x.broadcast_div(&(norm + self.eps)?)
    }

    pub fn dtype(&self) -> DType {
        self.shift.dtype()
    }
}
