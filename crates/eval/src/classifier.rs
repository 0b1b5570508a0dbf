//! The Fashion-MNIST classifier: the demo domain's class judge and FID feature extractor (a feature space
//! that needs no download). A small CNN on 28×28 gray images:
//! conv 1→32 (3×3) → GroupNorm(8) → ReLU → max-pool 2 → conv 32→64 → GroupNorm(8) → ReLU → max-pool 2
//! → flatten [64·7·7] → fc 128 → ReLU (the features) → fc 10 (the logits).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::kernels::{group_norm, max_pool2d};
use gen_nn::{Conv2d, Linear};
use gen_runtime::imageio::{self, RgbImage};
use serde::{Deserialize, Serialize};

/// Fashion-MNIST's pixel mean and standard deviation (of x / 255 over the training split).
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;
pub const SIDE: usize = 28;

/// The architecture table of the model folder (`[classifier]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub arch: String,
    pub classes: Vec<String>,
    pub width: usize,
    pub features: usize,
}

impl ClassifierConfig {
    pub fn fmnist() -> Self {
        ClassifierConfig { arch: "fmnist-cnn".into(), classes: gen_classes(), width: 32, features: 128 }
    }

    pub fn validate(&self) -> gen_runtime::Result<()> {
        if self.arch != "fmnist-cnn" {
            return Err(gen_runtime::Error::config(
                "arch",
                format!("'{}' is unknown (expected fmnist-cnn)", self.arch),
            ));
        }
        if self.classes.len() < 2 || self.width == 0 || self.features == 0 || !self.width.is_multiple_of(8) {
            return Err(gen_runtime::Error::config(
                "classes/width/features",
                "need at least 2 classes, a width that is a positive multiple of 8 and at least 1 feature",
            ));
        }
        Ok(())
    }
}

fn gen_classes() -> Vec<String> {
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub struct Classifier {
    conv1: Conv2d,
    norm1: (Tensor, Tensor),
    conv2: Conv2d,
    norm2: (Tensor, Tensor),
    fc1: Linear,
    fc2: Linear,
    pub config: ClassifierConfig,
}

impl Classifier {
    pub fn new(vb: VarBuilder, config: &ClassifierConfig) -> Result<Self> {
        let w = config.width;
        let norm = |name: &str, c: usize| -> Result<(Tensor, Tensor)> {
            Ok((vb.pp(name).get(c, "weight")?, vb.pp(name).get(c, "bias")?))
        };
        Ok(Classifier {
            conv1: Conv2d::new(vb.pp("conv1"), 1, w, 3, 1, 1)?,
            norm1: norm("norm1", w)?,
            conv2: Conv2d::new(vb.pp("conv2"), w, 2 * w, 3, 1, 1)?,
            norm2: norm("norm2", 2 * w)?,
            fc1: Linear::new(vb.pp("fc1"), 2 * w * 7 * 7, config.features)?,
            fc2: Linear::new(vb.pp("fc2"), config.features, config.classes.len())?,
            config: config.clone(),
        })
    }

    /// x [N, 1, 28, 28] (normalised) → the second block's map [N, 2·width, 7, 7]: one 64-d vector per
    /// 4×4 patch, the demo domain's counterpart of CLIP's patch tokens for codebook initialisation.
    pub fn feature_map(&self, x: &Tensor) -> Result<Tensor> {
        let gn = |t: &Tensor, (w, b): &(Tensor, Tensor)| group_norm(t, w, b, 8, 1e-5, false)?.relu();
        let h = max_pool2d(&gn(&self.conv1.forward(x)?, &self.norm1)?, 2, 2, 0)?; // [N, w, 14, 14]
        max_pool2d(&gn(&self.conv2.forward(&h)?, &self.norm2)?, 2, 2, 0) // [N, 2w, 7, 7]
    }

    /// x [N, 1, 28, 28] (normalised) → (features [N, F], logits [N, classes]).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.feature_map(x)?;
        let f = self.fc1.forward(&h.flatten_from(1)?)?.relu()?;
        let logits = self.fc2.forward(&f)?;
        Ok((f, logits))
    }
}

/// A 28×28 gray image as the network input, [1, 28, 28]: PIL's `convert('L')` luma
/// (`(299 R + 587 G + 114 B) / 1000`), the official centre crop/resize to 28 when the size differs, then
/// `(x / 255 − mean) / std`.
pub fn input(img: &RgbImage) -> Vec<f32> {
    let img = if (img.width, img.height) == (SIDE, SIDE) { img.clone() } else { imageio::preprocess(img, SIDE) };
    img.data
        .chunks_exact(3)
        .map(|p| {
            let l = (299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000;
            (l as f32 / 255.0 - MEAN) / STD
        })
        .collect()
}

/// Gray bytes [28·28] (the IDX data) as the network input.
pub fn input_gray(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&v| (f32::from(v) / 255.0 - MEAN) / STD).collect()
}

/// Stacks inputs into [N, 1, 28, 28].
pub fn batch(inputs: &[Vec<f32>], dev: &Device) -> Result<Tensor> {
    let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (inputs.len(), 1, SIDE, SIDE), dev)?.to_dtype(DType::F32)
}

/// Loads a classifier model folder (`kind = "classifier"`; f16 or f32 weights).
pub fn load_classifier(dir: &std::path::Path, dev: &Device) -> gen_runtime::Result<Classifier> {
    let folder = gen_runtime::ModelDir::open(dir, gen_runtime::ModelKind::Classifier)?;
    let config: ClassifierConfig = folder.architecture()?;
    config.validate().map_err(|e| e.at(&folder.config_path()))?;
    let weights = gen_nn::Weights::new(folder.weights_path().display().to_string(), folder.load_weights()?);
    Ok(Classifier::new(weights.var_builder(DType::F32, dev), &config)?)
}
