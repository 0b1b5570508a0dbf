//! GPT items: the official GPT-LC size (24 × 16 × 1024, vocabulary 101,000) with random weights, one
//! image of 256 tokens (class 207) per sequence: our KV-cache sampler in f32 and f16 weights at batch 1
//! and 16, and the official-style full recompute (at batch 1 whole, at batch 16 one step in 32); and a
//! 2 GiB read, the bandwidth bound. The baseline (`bench/gpt_bench.py`) is Hugging Face `transformers`
//! GPT-2 of the same size with its KV cache.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use gen_nn::RandomWeights;
use gen_prior::sample::{generate, generate_recompute, Request, Sampling};
use gen_prior::{Gpt, GptConfig};
use gen_runtime::Rng;

use super::{Ctx, Item, Timed};

pub(super) const ITEMS: &[Item] = &[
    ("gpt_kv_f32_b1", |c| kv(c, DType::F32, 1)),
    ("gpt_kv_f32_b16", |c| kv(c, DType::F32, 16)),
    ("gpt_kv_f16_b1", |c| kv(c, DType::F16, 1)),
    ("gpt_kv_bf16_b1", |c| kv(c, DType::BF16, 1)),
    ("gpt_recompute_f32_b1", |c| recompute(c, 1)),
    ("gpt_recompute_f32_b16_1in32", |c| recompute_sampled(c, 16)),
    ("mem_read_2gib", |_| read_bandwidth()),
];

/// The bandwidth bound of batch-1 decoding: one parallel pass reading 2 GiB of f32 (about the official
/// size's f32 weights); GB/s = 2.147 / seconds. No baseline.
fn read_bandwidth() -> Result<Timed> {
    use rayon::prelude::*;
    let data = vec![1.0f32; 512 << 20];
    Ok(Box::new(move || {
        let sum: f32 = data
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for x in c.chunks_exact(16) {
                    for i in 0..16 {
                        acc[i] += x[i];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        anyhow::ensure!(sum > 0.0, "the read was optimised away");
        Ok(())
    }))
}

/// Tokens per image (16 × 16).
const STEPS: usize = 256;

fn model(c: &mut Ctx, dtype: DType) -> Result<std::rc::Rc<Gpt>> {
    if let Some((d, m)) = &c.gpt {
        if *d == dtype {
            return Ok(m.clone());
        }
    }
    c.gpt = None; // one copy of the 2 GB of weights at a time
    eprintln!("bench: building GPT-LC (509,422,592 parameters) with random weights in {dtype:?}…");
    let rw = RandomWeights::new(0);
    let m = std::rc::Rc::new(Gpt::new(rw.var_builder(dtype, &Device::Cpu), &GptConfig::official())?);
    c.gpt = Some((dtype, m.clone()));
    Ok(m)
}

/// Plain multinomial sampling at temperature 1 (the official evaluation setting).
fn kv(c: &mut Ctx, dtype: DType, batch: usize) -> Result<Timed> {
    let m = model(c, dtype)?;
    Ok(Box::new(move || {
        let classes = vec![207; batch];
        let mut rngs: Vec<Rng> = (0..batch as u64).map(|i| Rng::for_item(0, i)).collect();
        generate(
            &m,
            &Request { classes: &classes, prefix: None, steps: STEPS },
            &Sampling::default(),
            &mut rngs,
            |_| {},
        )?;
        Ok(())
    }))
}

fn recompute(c: &mut Ctx, batch: usize) -> Result<Timed> {
    let m = model(c, DType::F32)?;
    Ok(Box::new(move || {
        let classes = vec![207; batch];
        let mut rngs: Vec<Rng> = (0..batch as u64).map(|i| Rng::for_item(0, i)).collect();
        generate_recompute(
            &m,
            &Request { classes: &classes, prefix: None, steps: STEPS },
            &Sampling::default(),
            &mut rngs,
        )?;
        Ok(())
    }))
}

/// The official sampler at batch 16 would take most of an hour here, so this item times 8 of its 256
/// steps, one per 32: the steps at prefix lengths 16, 48, …, 240 (each bin's midpoint, within half a
/// token), network over the whole prefix and the last position's logits. The table's time × 32
/// estimates one batch of images: a step's cost is affine in its prefix length but for the attention
/// scores, which the midpoint rule leaves within a few percent.
fn recompute_sampled(c: &mut Ctx, batch: usize) -> Result<Timed> {
    let m = model(c, DType::F32)?;
    Ok(Box::new(move || {
        let cfg = &m.config;
        for len in (0..STEPS / 32).map(|i| 32 * i + 16) {
            // the class token, then arbitrary image tokens (the cost does not depend on their values)
            let ids: Vec<u32> = (0..batch * len)
                .map(|j| if j % len == 0 { cfg.class_token(Some(207)) } else { (j * 7919 % cfg.n_codes) as u32 })
                .collect();
            let ids = Tensor::from_vec(ids, (batch, len), m.device())?;
            let logits = m.forward(&ids)?.narrow(1, len - 1, 1)?.squeeze(1)?.narrow(1, 0, cfg.n_codes)?;
            std::hint::black_box(logits.to_vec2::<f32>()?);
        }
        Ok(())
    }))
}
