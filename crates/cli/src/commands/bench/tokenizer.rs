//! Tokenizer items: the official f16 VQGAN-LC with random weights, encode / round trip / training step.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use gen_nn::{Params, RandomWeights, Weights};
use gen_runtime::Rng;
use gen_tokenizer::{VqConfig, VqModel};

use super::{rand, BenchTokenizer, Ctx, Item, Timed};

pub(super) const ITEMS: &[Item] = &[
    ("tok_encoder_b1", |c| tok_encoder(c, 1)),
    ("tok_encoder_b4", |c| tok_encoder(c, 4)),
    ("tok_roundtrip_b1", |c| tok_roundtrip(c, 1)),
    ("tok_roundtrip_b4", |c| tok_roundtrip(c, 4)),
    ("tok_train_step_b4", tok_train_step),
    ("nearest_codes_100k", |_| nearest_codes()),
];

fn tokenizer(c: &mut Ctx) -> Result<std::rc::Rc<BenchTokenizer>> {
    if let Some(t) = &c.tokenizer {
        return Ok(t.clone());
    }
    eprintln!("bench: building the official f16 tokenizer with random weights (100,000 × 768 codebook)…");
    let cfg = VqConfig::f16();
    let rw = RandomWeights::new(0);
    let mut infer = VqModel::new(rw.var_builder(DType::F32, &Device::Cpu), &cfg)?;
    infer.quantizer.freeze_projection()?;
    let (params, tensors) = Params::from_tensors(&rw.tensors(), |n| n != "tok_embeddings.weight")?;
    let train = VqModel::new(Weights::new("random", tensors).var_builder(DType::F32, &Device::Cpu), &cfg)?;
    let t = std::rc::Rc::new((infer, train, params.vars));
    c.tokenizer = Some(t.clone());
    Ok(t)
}

fn tok_encoder(c: &mut Ctx, b: usize) -> Result<Timed> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[b, 3, 256, 256], 0.5)?;
    Ok(Box::new(move || {
        t.0.encode_latent(&x)?;
        Ok(())
    }))
}

fn tok_roundtrip(c: &mut Ctx, b: usize) -> Result<Timed> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[b, 3, 256, 256], 0.5)?;
    Ok(Box::new(move || {
        let q = t.0.encode(&x)?;
        t.0.decode(&q.z_q)?;
        Ok(())
    }))
}

/// One training step's forward and backward, as `gen train-tokenizer` runs it: the batch split into one
/// shard per thread (`gen_nn::batch::par_batch_grads`), gradients summed.
fn tok_train_step(c: &mut Ctx) -> Result<Timed> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[4, 3, 128, 128], 0.5)?;
    let vars: Vec<candle_core::Var> = t.2.iter().map(|(_, v)| v.clone()).collect();
    Ok(Box::new(move || {
        let train = &t.1; // the model is Sync; the Rc around it is not
        let (_, grads) = gen_nn::batch::par_batch_grads(&x, &vars, |xs, share| {
            let q = train.encode(xs)?;
            let xrec = train.decode(&q.z_q)?;
            (gen_nn::ops::l1_loss(xs, &xrec)? + (q.loss * 0.1)?)? * share
        })?;
        if grads.get(t.2[0].1.as_tensor()).is_none() {
            bail!("train step: parameter {} got no gradient", t.2[0].0);
        }
        Ok(())
    }))
}

/// The nearest-code search of `gen utilization` / `gen tokenize` on 1,000 demo images: 64,000 8-d
/// latents against a 100,000-entry projected codebook.
fn nearest_codes() -> Result<Timed> {
    let mut rng = Rng::new(2);
    let z = rand(&mut rng, &[64_000, 8], 1.0)?;
    let codebook = rand(&mut rng, &[100_000, 8], 1.0)?;
    Ok(Box::new(move || {
        gen_tokenizer::quantizer::nearest::nearest_codes(&z, &codebook)?;
        Ok(())
    }))
}
