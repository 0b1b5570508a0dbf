//! Training the Fashion-MNIST classifier on the shared training module (gen-train): run folder,
//! `log.jsonl`, atomic checkpoints, bit-exact `--resume`, NaN stop. The trainer is the loss below plus
//! this config.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use gen_data::fmnist::FashionMnist;
use gen_nn::{Params, Weights};
use gen_runtime::{Error, Result, Rng};
use gen_train::{AdamW, AdamWConfig, LoopConfig, LrSchedule, RunDir, StepOutput, Trainer};
use serde::{Deserialize, Serialize};

use crate::classifier::{batch, input_gray, Classifier, ClassifierConfig, SIDE};

/// The resolved config of a training run (written to the run's `config.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Flip each training image left–right with probability ½.
    pub flip: bool,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Stop after this many steps (a short run; the schedule still spans `epochs`). Where a run stops is
    /// not part of its identity: a run stopped early resumes with a later stop.
    #[serde(skip)]
    pub max_steps: Option<u64>,
    pub model: ClassifierConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            epochs: 6,
            batch_size: 128,
            lr: 2e-3,
            min_lr: 1e-5,
            weight_decay: 1e-4,
            warmup_steps: 200,
            flip: true,
            log_every: 50,
            checkpoint_every: 500,
            max_steps: None,
            model: ClassifierConfig::fmnist(),
        }
    }
}

/// Initial weights as torch initialises them (Kaiming-uniform convs and linears, GroupNorm 1 / 0), from
/// our seeded RNG.
fn init(cfg: &ClassifierConfig, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    let w = cfg.width;
    let mut t = HashMap::new();
    let mut uniform = |name: &str, shape: &[usize], fan_in: usize, t: &mut HashMap<String, Tensor>| -> Result<()> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        t.insert(name.to_string(), rng.rand_uniform(shape, -bound, bound, &Device::Cpu)?);
        Ok(())
    };
    for (name, cin, cout) in [("conv1", 1, w), ("conv2", w, 2 * w)] {
        uniform(&format!("{name}.weight"), &[cout, cin, 3, 3], cin * 9, &mut t)?;
        uniform(&format!("{name}.bias"), &[cout], cin * 9, &mut t)?;
    }
    for (name, cin, cout) in [("fc1", 2 * w * 7 * 7, cfg.features), ("fc2", cfg.features, cfg.classes.len())] {
        uniform(&format!("{name}.weight"), &[cout, cin], cin, &mut t)?;
        uniform(&format!("{name}.bias"), &[cout], cin, &mut t)?;
    }
    for (name, c) in [("norm1", w), ("norm2", 2 * w)] {
        t.insert(format!("{name}.weight"), Tensor::ones(c, DType::F32, &Device::Cpu)?);
        t.insert(format!("{name}.bias"), Tensor::zeros(c, DType::F32, &Device::Cpu)?);
    }
    Ok(t)
}

/// The order of epoch `epoch`'s training images: a shuffle seeded by (seed, epoch), so a resumed run
/// draws the same batches.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    gen_train::order::shuffled(n, gen_train::order::epoch_seed(seed, epoch, 0))
}

/// Trains in `run_dir` (resuming its latest checkpoint when `resume`), and returns the trained model's
/// tensors.
pub fn train(run_dir: &Path, data_dir: &Path, cfg: &TrainConfig, resume: bool) -> Result<HashMap<String, Tensor>> {
    cfg.model.validate()?;
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::invalid("batch_size and epochs must be at least 1"));
    }
    let data = FashionMnist::load(data_dir, "train")?;
    let n = data.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs;
    let (run, ckpt) =
        if resume { RunDir::resume(run_dir, cfg, &Device::Cpu)? } else { (RunDir::create(run_dir, cfg)?, None) };
    let mut rng = Rng::new(cfg.seed);
    let (params, tensors) = Params::from_tensors(&init(&cfg.model, &mut rng)?, |_| true)?;
    let model = Classifier::new(Weights::new("classifier", tensors).var_builder(DType::F32, &Device::Cpu), &cfg.model)?;
    let vars: Vec<(String, Var)> = params.vars;
    let opt =
        AdamW::new(vars.clone(), AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..AdamWConfig::default() })?
            .with_no_decay(
                vars.iter().map(|(n, _)| n.clone()).filter(|n| n.ends_with(".bias") || n.starts_with("norm")),
            )?;
    let schedule =
        LrSchedule::WarmupCosine { lr: cfg.lr, min_lr: cfg.min_lr, warmup_steps: cfg.warmup_steps, total_steps };
    let run_steps = cfg.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let loop_cfg =
        LoopConfig { total_steps: run_steps, log_every: cfg.log_every, checkpoint_every: cfg.checkpoint_every };
    let mut trainer = Trainer::new(run, vars.clone(), opt, schedule, loop_cfg, rng);
    if let Some(ckpt) = ckpt {
        trainer.restore(ckpt)?;
    }
    let mut order: Option<(u64, Vec<usize>)> = None;
    let px = SIDE * SIDE;
    trainer.run(|ctx| {
        if order.as_ref().is_none_or(|(e, _)| *e != *ctx.epoch) {
            order = Some((*ctx.epoch, permutation(n, cfg.seed, *ctx.epoch)));
        }
        let perm = &order.as_ref().expect("set above").1;
        let start = *ctx.cursor as usize;
        let idx = &perm[start..(start + cfg.batch_size).min(n)];
        let inputs: Vec<Vec<f32>> = idx
            .iter()
            .map(|&i| {
                let mut x = input_gray(&data.images[i * px..(i + 1) * px]);
                if cfg.flip && ctx.rng.below(2) == 1 {
                    x.chunks_exact_mut(SIDE).for_each(|row| row.reverse());
                }
                x
            })
            .collect();
        let labels: Vec<u32> = idx.iter().map(|&i| u32::from(data.labels[i])).collect();
        let x = batch(&inputs, &Device::Cpu)?;
        let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
        let (_, logits) = model.forward(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let correct = logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        *ctx.cursor += idx.len() as u64;
        if *ctx.cursor as usize >= n {
            *ctx.cursor = 0;
            *ctx.epoch += 1;
        }
        Ok(StepOutput {
            loss,
            metrics: vec![("batch_accuracy".into(), f64::from(correct) / idx.len() as f64)],
            grads: None,
        })
    })?;
    Ok(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())
}

/// Test-split accuracy per class and overall: (correct, count) per class.
pub fn evaluate(model: &Classifier, data: &FashionMnist, batch_size: usize) -> Result<Vec<(usize, usize)>> {
    let px = SIDE * SIDE;
    let mut per_class = vec![(0usize, 0usize); model.config.classes.len()];
    let mut start = 0;
    while start < data.len() {
        let end = (start + batch_size).min(data.len());
        let inputs: Vec<Vec<f32>> = (start..end).map(|i| input_gray(&data.images[i * px..(i + 1) * px])).collect();
        let (_, logits) = model.forward(&batch(&inputs, &Device::Cpu)?)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (k, i) in (start..end).enumerate() {
            let label = usize::from(data.labels[i]);
            per_class[label].1 += 1;
            if pred[k] as usize == label {
                per_class[label].0 += 1;
            }
        }
        start = end;
    }
    Ok(per_class)
}
