//! `gen train-classifier`: trains the Fashion-MNIST classifier (the demo domain's class judge and FID
//! feature space) on the shared training module, reports its test accuracy per class, and writes the
//! model folder (f16 weights, MODEL_CARD.md with the command, time and accuracy).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use gen_data::fmnist::{FashionMnist, DEFAULT_DIR};
use gen_eval::classifier::Classifier;
use gen_eval::classifier_train::{evaluate, train, TrainConfig};
use gen_nn::Weights;
use gen_runtime::model_dir::{ModelKind, NewModelDir};

use crate::args::at_least_one;

#[derive(Args)]
pub struct TrainClassifierArgs {
    /// The run folder (config.toml, log.jsonl, checkpoints/).
    #[arg(long)]
    pub run: PathBuf,
    /// Continue the run from its latest checkpoint (bit-exact on the same machine and thread count).
    #[arg(long)]
    pub resume: bool,
    /// Where to write the trained model folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 6, value_parser = at_least_one)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many steps (the learning-rate schedule still spans --epochs).
    #[arg(long, value_parser = at_least_one)]
    pub steps: Option<usize>,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// CPU threads.
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
}

pub fn run(a: TrainClassifierArgs) -> Result<()> {
    let cfg = TrainConfig {
        seed: a.seed,
        epochs: a.epochs as u64,
        batch_size: a.batch_size,
        lr: a.lr,
        max_steps: a.steps.map(|s| s as u64),
        checkpoint_every: a.checkpoint_every,
        ..TrainConfig::default()
    };
    let started = Instant::now();
    let tensors = train(&a.run, &a.data, &cfg, a.resume)?;
    let seconds = started.elapsed().as_secs_f64();
    let weights = Weights::new("trained", tensors.clone());
    let model = Classifier::new(weights.var_builder(DType::F32, &Device::Cpu), &cfg.model)?;
    let test = FashionMnist::load(&a.data, "t10k")?;
    let per_class = evaluate(&model, &test, 500)?;
    let (correct, total) = per_class.iter().fold((0, 0), |(c, t), (pc, pt)| (c + pc, t + pt));
    let mean_of_classes = per_class.iter().map(|(c, t)| *c as f64 / *t as f64).sum::<f64>() / per_class.len() as f64;
    let mut table = String::from("| class | test accuracy |\n|---|---|\n");
    for (name, (c, t)) in cfg.model.classes.iter().zip(&per_class) {
        table.push_str(&format!("| {name} | {:.2}% ({c}/{t}) |\n", 100.0 * *c as f64 / *t as f64));
    }
    table.push_str(&format!(
        "| **all** | {:.2}% ({correct}/{total}); mean over classes {:.2}% |\n",
        100.0 * correct as f64 / total as f64,
        100.0 * mean_of_classes
    ));
    print!("{table}");
    let f16: Vec<(String, candle_core::Tensor)> = {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        names.into_iter().map(|k| Ok((k.clone(), tensors[k].to_dtype(DType::F16)?))).collect::<Result<_>>()?
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let card = format!(
        "# Fashion-MNIST classifier\n\nThe demo domain's class judge and FID feature space (`gen fid --features \
         fmnist-classifier`): conv 1→{w} → GroupNorm → ReLU → max-pool → conv {w}→{w2} → GroupNorm → ReLU → \
         max-pool → fc {f} (the features) → fc 10. Weights in f16.\n\nTrained with `{command}` on the 60,000 \
         training images ({} epochs, batch {}, AdamW lr {} with warmup + cosine, left–right flips, seed {}) in \
         {:.0} s on this machine's CPU.\n\nAccuracy on the 10,000 test images:\n\n{table}",
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.seed,
        seconds,
        w = cfg.model.width,
        w2 = 2 * cfg.model.width,
        f = cfg.model.features,
    );
    NewModelDir {
        kind: ModelKind::Classifier,
        architecture: &cfg.model,
        extra: vec![],
        tables: vec![],
        tensors: &f16,
        metadata: HashMap::from([("format".to_string(), "gen-classifier".to_string())]),
        card,
    }
    .write(&a.out)?;
    eprintln!("wrote {} ({seconds:.0} s of training)", a.out.display());
    Ok(())
}
