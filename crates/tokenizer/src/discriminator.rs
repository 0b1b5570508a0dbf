//! The GAN half of tokenizer training: taming's `NLayerDiscriminator` (PatchGAN) as VQGAN-LC builds it
//! (`input_nc 3, n_layers 2, ndf 64, use_actnorm False`, `weights_init`), and the hinge losses of
//! `VQModel.hinge_d_loss` / the generator's `−mean(logits_fake)`.
//!
//! Layout (keys `discriminator.main.{i}`, as the official checkpoints hold them):
//! `0` Conv(3→64, 4, s2, p1, bias) · LeakyReLU(0.2) · `2` Conv(64→128, 4, s2, p1) · `3` BatchNorm ·
//! LeakyReLU · `5` Conv(128→256, 4, s1, p1) · `6` BatchNorm · LeakyReLU · `8` Conv(256→1, 4, s1, p1, bias).
//! The official training runs it in train mode throughout (batch statistics; running statistics updated).

use std::collections::HashMap;

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{BatchNorm2d, Conv2d};
use gen_runtime::Rng;

/// One hidden layer: a conv without bias, then BatchNorm.
struct Hidden {
    conv: Conv2d,
    norm: BatchNorm2d,
}

pub struct Discriminator {
    first: Conv2d,
    hidden: Vec<Hidden>,
    last: Conv2d,
}

/// The official sizes.
pub const NDF: usize = 64;
pub const N_LAYERS: usize = 2;

/// (key index of each hidden conv, its input and output channels) for `n_layers`, ndf.
fn hidden_layers(ndf: usize, n_layers: usize) -> Vec<(usize, usize, usize, usize)> {
    // (conv index, cin, cout, stride): n_layers − 1 stride-2 layers, then one stride-1 layer
    let mut out = Vec::new();
    let mut mult = 1;
    for n in 1..=n_layers {
        let prev = mult;
        mult = (1 << n).min(8);
        let stride = if n < n_layers { 2 } else { 1 };
        out.push((2 + 3 * (n - 1), ndf * prev, ndf * mult, stride));
    }
    out
}

impl Discriminator {
    pub fn new(vb: VarBuilder, in_ch: usize, ndf: usize, n_layers: usize) -> Result<Self> {
        let main = vb.pp("main");
        let layers = hidden_layers(ndf, n_layers);
        let hidden = layers
            .iter()
            .map(|&(i, cin, cout, stride)| {
                Ok(Hidden {
                    conv: Conv2d::new_no_bias(main.pp(i), cin, cout, 4, stride, 1)?,
                    norm: BatchNorm2d::new(main.pp(i + 1), cout, 1e-5)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last_in = layers.last().map_or(ndf, |l| l.2);
        let last_index = layers.last().map_or(2, |l| l.0 + 3);
        Ok(Discriminator {
            first: Conv2d::new(main.pp(0), in_ch, ndf, 4, 2, 1)?,
            hidden,
            last: Conv2d::new(main.pp(last_index), last_in, 1, 4, 1, 1)?,
        })
    }

    /// Patch logits [B, 1, h, w]; `train` uses batch statistics and updates the running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, |norm, h| norm.forward_t(h, train))
    }

    /// Train-mode logits (batch statistics) that leave the running statistics alone: training never
    /// reads them (the official one runs the discriminator in train mode only), and batch shards run
    /// on several threads at once.
    pub fn forward_batch_stats(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, |norm, h| Ok(norm.forward_train(h)?.0))
    }

    fn run(&self, x: &Tensor, norm: impl Fn(&BatchNorm2d, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let leaky = |t: Tensor| -> Result<Tensor> { t.maximum(&(&t * 0.2)?) };
        let mut h = leaky(self.first.forward(x)?)?;
        for l in &self.hidden {
            h = leaky(norm(&l.norm, &l.conv.forward(&h)?)?)?;
        }
        self.last.forward(&h)
    }

    /// The BatchNorm running statistics by their official names (`main.{i}.running_mean`, …), to save.
    pub fn running_stats(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let layers = hidden_layers(NDF, self.hidden.len());
        let mut out = Vec::new();
        for (l, &(i, ..)) in self.hidden.iter().zip(&layers) {
            let s = l.norm.running_stats();
            out.push((format!("{prefix}main.{}.running_mean", i + 1), s.mean));
            out.push((format!("{prefix}main.{}.running_var", i + 1), s.var));
        }
        out
    }

    /// Restores what `running_stats` saved.
    pub fn set_running_stats(&self, prefix: &str, saved: &HashMap<String, Tensor>) -> Result<()> {
        let layers = hidden_layers(NDF, self.hidden.len());
        for (l, &(i, ..)) in self.hidden.iter().zip(&layers) {
            let get = |what: &str| {
                let key = format!("{prefix}main.{}.{what}", i + 1);
                saved.get(&key).cloned().ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))
            };
            l.norm.set_running_stats(gen_nn::RunningStats { mean: get("running_mean")?, var: get("running_var")? })?;
        }
        Ok(())
    }
}

/// The official `weights_init`: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0; the
/// two conv biases as torch draws them (U(±1/√fan_in)). Running statistics start at mean 0, var 1.
/// Names are relative to the discriminator (`main.…`).
pub fn init(in_ch: usize, ndf: usize, n_layers: usize, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    let dev = &Device::Cpu;
    let mut t = HashMap::new();
    let bias = |rng: &mut Rng, n: usize, fan_in: usize| {
        let b = 1.0 / (fan_in as f64).sqrt();
        rng.rand_uniform(n, -b, b, dev)
    };
    t.insert("main.0.weight".into(), rng.randn((ndf, in_ch, 4, 4), 0.02, dev)?);
    t.insert("main.0.bias".into(), bias(rng, ndf, in_ch * 16)?);
    let layers = hidden_layers(ndf, n_layers);
    for &(i, cin, cout, _) in &layers {
        t.insert(format!("main.{i}.weight"), rng.randn((cout, cin, 4, 4), 0.02, dev)?);
        t.insert(format!("main.{}.weight", i + 1), (rng.randn(cout, 0.02, dev)? + 1.0)?);
        t.insert(format!("main.{}.bias", i + 1), Tensor::zeros(cout, DType::F32, dev)?);
        t.insert(format!("main.{}.running_mean", i + 1), Tensor::zeros(cout, DType::F32, dev)?);
        t.insert(format!("main.{}.running_var", i + 1), Tensor::ones(cout, DType::F32, dev)?);
    }
    let (last_index, last_in) = layers.last().map_or((2, ndf), |l| (l.0 + 3, l.2));
    t.insert(format!("main.{last_index}.weight"), rng.randn((1, last_in, 4, 4), 0.02, dev)?);
    t.insert(format!("main.{last_index}.bias"), bias(rng, 1, last_in * 16)?);
    Ok(t)
}

/// `0.5 · (mean(relu(1 − real)) + mean(relu(1 + fake)))`.
pub fn hinge_d_loss(real: &Tensor, fake: &Tensor) -> Result<Tensor> {
    let r = (1.0 - real)?.relu()?.mean_all()?;
    let f = (fake + 1.0)?.relu()?.mean_all()?;
    (r + f)? * 0.5
}

/// The generator's adversarial loss: `−mean(logits_fake)`.
pub fn g_loss(fake: &Tensor) -> Result<Tensor> {
    fake.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gen_nn::Weights;

    #[test]
    fn the_official_layout_and_output_size() {
        let t = init(3, NDF, N_LAYERS, &mut Rng::new(0)).unwrap();
        let shape = |k: &str| t[k].dims().to_vec();
        assert_eq!(shape("main.0.weight"), [64, 3, 4, 4]);
        assert_eq!(shape("main.2.weight"), [128, 64, 4, 4]);
        assert_eq!(shape("main.3.running_var"), [128]);
        assert_eq!(shape("main.5.weight"), [256, 128, 4, 4]);
        assert_eq!(shape("main.6.weight"), [256]);
        assert_eq!(shape("main.8.weight"), [1, 256, 4, 4]);
        assert_eq!(shape("main.8.bias"), [1]);
        assert_eq!(t.len(), 14, "16 official keys less the two num_batches_tracked");
        let d = Discriminator::new(Weights::new("init", t).var_builder(DType::F32, &Device::Cpu), 3, NDF, N_LAYERS)
            .unwrap();
        // 32² → 16² → 8² → 7² → 6² patch logits
        let x = Rng::new(1).randn((2, 3, 32, 32), 1.0, &Device::Cpu).unwrap();
        assert_eq!(d.forward_t(&x, true).unwrap().dims(), [2, 1, 6, 6]);
        // train mode moved the running statistics
        let s = d.running_stats("");
        assert!(s[0].1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn hinge_losses() {
        let real = Tensor::new(&[2.0f32, 0.5, -1.0], &Device::Cpu).unwrap();
        let fake = Tensor::new(&[-2.0f32, 0.0, 1.0], &Device::Cpu).unwrap();
        // real: relu(1 − r) = [0, 0.5, 2] → 5/6; fake: relu(1 + f) = [0, 1, 2] → 1
        let d = hinge_d_loss(&real, &fake).unwrap().to_scalar::<f32>().unwrap();
        assert!((d - 0.5 * (2.5 / 3.0 + 1.0)).abs() < 1e-6);
        assert!((g_loss(&fake).unwrap().to_scalar::<f32>().unwrap() - 1.0 / 3.0).abs() < 1e-6);
    }
}
