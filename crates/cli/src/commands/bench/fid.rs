//! Evaluator items: the FID Inception's pool3 features, and the 2048-d Fréchet distance.

use anyhow::Result;
use candle_core::{DType, Device};
use gen_eval::{frechet_distance, FidInception, FrechetOptions, StatsAccumulator, Tap};
use gen_nn::{RandomWeights, Weights};
use gen_runtime::Rng;

use super::{rand, Item, Timed};

pub(super) const ITEMS: &[Item] = &[("fid_inception_b8", |_| inception(8)), ("fid_frechet_2048", |_| frechet(2048))];

/// pool3 features of `b` images already at 299² (the network alone; preprocessing is not timed).
fn inception(b: usize) -> Result<Timed> {
    // random weights, with positive running variances so the folded BatchNorm is finite
    let rw = RandomWeights::new(0);
    FidInception::new(rw.var_builder(DType::F32, &Device::Cpu))?;
    let tensors = rw
        .tensors()
        .into_iter()
        .map(|(k, t)| if k.ends_with("running_var") { Ok((k, (t.abs()? + 1.0)?)) } else { Ok((k, t)) })
        .collect::<Result<_>>()?;
    let net = FidInception::new(Weights::new("random", tensors).var_builder(DType::F32, &Device::Cpu))?;
    let x = rand(&mut Rng::new(1), &[b, 3, 299, 299], 0.5)?;
    Ok(Box::new(move || {
        net.features(&x, Tap::Dims2048)?;
        Ok(())
    }))
}

/// The Fréchet distance between the statistics of two sets of 4096 random `d`-dim features.
fn frechet(d: usize) -> Result<Timed> {
    let mut rng = Rng::new(2);
    let mut stats = |shift: f64| -> Result<gen_eval::Gaussian> {
        let mut acc = StatsAccumulator::new(d);
        for _ in 0..8 {
            let f: Vec<f32> = (0..512 * d).map(|_| (rng.normal() + shift) as f32).collect();
            acc.add(&f);
        }
        acc.finish().ok_or_else(|| anyhow::anyhow!("no statistics from 4096 samples"))
    };
    let (a, b) = (stats(0.0)?, stats(0.1)?);
    Ok(Box::new(move || {
        frechet_distance(&a, &b, FrechetOptions::default())?;
        Ok(())
    }))
}
