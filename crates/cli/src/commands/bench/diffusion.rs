//! Diffusion items: DiT-XL/2 on the official DiT-LC latent (8 × 16 × 16, 1,000 classes) and the official
//! LDM-LC f16 UNet, random weights, batch 8: a training step (forward and backward of the ε loss, no
//! optimizer) and a sampling step (one guided network call: the batch doubled to [cond; uncond]). The
//! baseline (`bench/diffusion_bench.py`) is diffusers' `DiTTransformer2DModel` and `UNet2DConditionModel`
//! in the same configurations.

use std::rc::Rc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use gen_diffusion::dit::{Dit, DitConfig};
use gen_diffusion::ldm::{Ldm, LdmConfig};
use gen_diffusion::Denoiser;
use gen_nn::{Params, RandomWeights, Weights};
use gen_runtime::Rng;

use super::{Ctx, Item, Timed};

pub(super) const ITEMS: &[Item] = &[
    ("dit_xl2_train_b8", |c| dit(c, true)),
    ("dit_xl2_sample_b8", |c| dit(c, false)),
    ("ldm_f16_train_b8", |c| ldm(c, true)),
    ("ldm_f16_sample_b8", |c| ldm(c, false)),
];

const BATCH: usize = 8;

/// Random weights as trainable variables (a training step needs their gradients).
fn weights(build: impl Fn(candle_nn::VarBuilder) -> candle_core::Result<()>, train: bool) -> Result<Weights> {
    let rw = RandomWeights::new(0);
    build(rw.var_builder(DType::F32, &Device::Cpu))?;
    let tensors = rw.tensors();
    if !train {
        return Ok(Weights::new("random", tensors));
    }
    let (_params, vars) = Params::from_tensors(&tensors, |_| true)?;
    Ok(Weights::new("random", vars))
}

fn inputs(c: usize, side: usize, n: usize, steps: bool) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let mut rng = Rng::new(1);
    let x = rng.randn((n, c, side, side), 1.0, &Device::Cpu)?;
    let noise = rng.randn((n, c, side, side), 1.0, &Device::Cpu)?;
    let t: Vec<f32> = (0..n).map(|i| if steps { (i * 997 % 1000) as f32 } else { 500.0 }).collect();
    let y: Vec<u32> = (0..n).map(|i| (i * 131 % 1000) as u32).collect();
    Ok((x, noise, Tensor::from_vec(t, n, &Device::Cpu)?, Tensor::from_vec(y, n, &Device::Cpu)?))
}

/// A training step: ε-MSE on the first C output channels, backward through every weight.
fn train_step(m: Rc<dyn Denoiser>, c: usize, side: usize) -> Result<Timed> {
    let (x, noise, t, y) = inputs(c, side, BATCH, true)?;
    Ok(Box::new(move || {
        let out = m.forward(&x, &t, &y)?.narrow(1, 0, c)?;
        let loss = (out - &noise)?.sqr()?.mean_all()?;
        loss.backward()?;
        Ok(())
    }))
}

fn dit(_: &mut Ctx, train: bool) -> Result<Timed> {
    let cfg = DitConfig::official_lc();
    eprintln!("bench: building DiT-XL/2 ({} parameters) with random weights…", cfg.parameter_count());
    let w = weights(|vb| Dit::new(vb, &cfg).map(|_| ()), train)?;
    let m = Rc::new(Dit::new(w.var_builder(DType::F32, &Device::Cpu), &cfg)?);
    if train {
        return train_step(m, 8, 16);
    }
    let (x, _, t, y) = inputs(8, 16, 2 * BATCH, false)?;
    Ok(Box::new(move || {
        m.forward(&x, &t, &y)?;
        Ok(())
    }))
}

fn ldm(_: &mut Ctx, train: bool) -> Result<Timed> {
    let cfg = LdmConfig::official_f16();
    eprintln!("bench: building the LDM-LC f16 UNet with random weights…");
    let w = weights(|vb| Ldm::new(vb, &cfg).map(|_| ()), train)?;
    let m = Rc::new(Ldm::new(w.var_builder(DType::F32, &Device::Cpu), &cfg)?);
    if train {
        return train_step(m, 8, 16);
    }
    let (x, _, t, y) = inputs(8, 16, 2 * BATCH, false)?;
    Ok(Box::new(move || {
        m.forward(&x, &t, &y)?;
        Ok(())
    }))
}
