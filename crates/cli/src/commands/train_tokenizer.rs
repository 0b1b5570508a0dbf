//! `gen train-tokenizer`: trains VQGAN-LC or one of its baselines (VQGAN, EMA, FC, SimVQ) with the
//! official recipe, in a run folder that resumes exactly, and writes the trained tokenizer as a model folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use gen_data::fmnist::{FashionMnist, DEFAULT_DIR};
use gen_eval::features::list_images;
use gen_tokenizer::train::data::TrainImages;
use gen_tokenizer::train::{TokenizerTrainer, TrainConfig};
use gen_tokenizer::write_model_dir;

use super::train_steps::{drive, Finished, StepRange};
use crate::args::{at_least_one, DeviceArgs};

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// The run's config (`configs/tokenizer/*.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// `fmnist:train` / `fmnist:test`, or a folder of images (recursive; PNG and JPEG).
    #[arg(long)]
    pub data: String,
    /// The run folder (config copy, log.jsonl, checkpoints/, and the trained model in model/).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its newest checkpoint (refused if the config changed).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in all (the schedule still spans the config's steps); resume later.
    #[arg(long, value_parser = at_least_one)]
    pub until: Option<usize>,
    /// torchvision VGG16 weights for the perceptual term; without them training leaves it out.
    #[arg(long, requires = "lpips_lin")]
    pub lpips_vgg: Option<PathBuf>,
    /// LPIPS v0.1 linear layers (`vgg.pth`).
    #[arg(long, requires = "lpips_vgg")]
    pub lpips_lin: Option<PathBuf>,
    #[command(flatten)]
    pub run: DeviceArgs,
}

fn open_data(spec: &str) -> Result<TrainImages> {
    if let Some(split) = spec.strip_prefix("fmnist:") {
        let split = match split {
            "train" => "train",
            "test" | "t10k" => "t10k",
            other => bail!("--data fmnist:{other}: expected fmnist:train or fmnist:test"),
        };
        return Ok(TrainImages::Fmnist(FashionMnist::load(Path::new(DEFAULT_DIR), split)?));
    }
    let (files, skipped) = list_images(Path::new(spec))?;
    if skipped > 0 {
        eprintln!("note: {spec}: skipped {skipped} files that are not PNG or JPEG images");
    }
    Ok(TrainImages::Files(files))
}

pub fn run(a: TrainTokenizerArgs) -> Result<()> {
    a.run.training_in_f32("train-tokenizer")?;
    let (dev, _) = a.run.open()?;
    let cfg = TrainConfig::load(&a.config)?;
    let data = open_data(&a.data)?;
    let lpips = match (&a.lpips_vgg, &a.lpips_lin) {
        (Some(vgg), Some(lin)) => Some(super::rfid::load_lpips(vgg, lin, &dev)?),
        _ => {
            if cfg.loss.rate_p > 0.0 && !a.run.quiet {
                eprintln!(
                    "note: no --lpips-vgg/--lpips-lin given: training without the perceptual term (loss.rate_p = {} unused)",
                    cfg.loss.rate_p
                );
            }
            None
        }
    };
    let mut trainer = TokenizerTrainer::open(cfg, &a.out, a.resume, lpips, &dev)?;
    let steps = trainer.cfg.train.steps;
    let range = StepRange::new(trainer.progress.step, a.until, steps);
    let finished = drive(range, a.run.quiet, |until, on_step| {
        trainer.train(&data, until, |step, f| {
            let get = |k: &str| f.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            let summary = format!(
                "step {step}: loss {:.4}, rec {:.4}, codes used {:.1}%",
                get("loss"),
                get("rec_loss"),
                100.0 * get("window_utilization")
            );
            on_step(step, summary)
        })?;
        Ok(trainer.progress.step)
    })?;
    // the plots show whatever ran, also when this call stopped before the last step
    gen_tokenizer::train::write_plots(&a.out)?;
    let Some(Finished { secs, last }) = finished else {
        return Ok(());
    };
    let model_dir = a.out.join("model");
    let note = format!(
        "Trained by `gen train-tokenizer --config {} --data {}` ({} steps of batch {}).",
        a.config.display(),
        a.data,
        steps,
        trainer.cfg.train.batch_size
    );
    write_model_dir(&trainer.weights()?, &model_dir, false, &note)?;
    println!("trained {steps} steps in {secs:.0} s ({last}); model in {}", model_dir.display());
    Ok(())
}
