//! `gen train --model dit|sit|ldm`: trains a latent generator on latent shards (`gen tokenize --latents`)
//! in a run folder that resumes exactly, and writes the EMA weights as a model folder paired with the
//! tokenizer.

use anyhow::{bail, Context, Result};
use clap::Args;
use gen_diffusion::train::{init::parameter_count, DiffusionTrainConfig, DiffusionTrainer, LatentStream, OpenMode};

use std::path::PathBuf;

use super::train_steps::{drive_loss, Finished};
use crate::args::{at_least_one, DeviceArgs};

#[derive(Args)]
pub struct TrainArgs {
    /// The generator: dit, sit or ldm (must match the config's `model.kind`).
    #[arg(long)]
    pub model: String,
    /// Latent shards to train on (`gen tokenize --latents --out DIR`).
    #[arg(long)]
    pub latents: PathBuf,
    /// The run's config (`configs/diffusion/*.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder (config copy, log.jsonl, loss.png, checkpoints/, and the trained model in model/).
    #[arg(long)]
    pub out: PathBuf,
    /// The tokenizer the latents were made with, recorded in the model folder (its sha256 must match).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint (refused if the config or shards changed).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in all (the schedule still spans the config's steps); resume later.
    #[arg(long, value_parser = at_least_one)]
    pub until: Option<usize>,
    /// Train nothing: write the newest checkpoint's EMA weights as a model folder, RUN/model-step-N, to
    /// judge a run part-way (needs --resume).
    #[arg(long, requires = "resume", conflicts_with = "until")]
    pub export_now: bool,
    #[command(flatten)]
    pub run: DeviceArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    a.run.training_on_cpu("train")?;
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("cannot read {}", a.config.display()))?;
    let cfg = DiffusionTrainConfig::parse(&text, &a.config)?;
    if cfg.kind() != a.model {
        bail!("--model {}: the config {} trains a {} (model.kind)", a.model, a.config.display(), cfg.kind());
    }
    let data = LatentStream::open(&a.latents, cfg.train.seed)?;
    if let Some(t) = &a.tokenizer {
        data.manifest.check_tokenizer(&a.latents, &gen_tokenizer::tokenizer_sha256(t)?)?;
    }
    let mode = match (a.export_now, a.resume) {
        (true, _) => OpenMode::Inspect,
        (false, true) => OpenMode::Resume,
        (false, false) => OpenMode::New,
    };
    let mut trainer = DiffusionTrainer::open(cfg, data, &a.out, mode)?;
    let steps = trainer.config.train.train.steps;
    if a.export_now {
        let step = trainer.trainer.progress.step;
        if step == 0 {
            bail!("--export-now: {} has no checkpoint yet", a.out.display());
        }
        let model_dir = a.out.join(format!("model-step-{step}"));
        trainer.write_model(&model_dir, a.tokenizer.as_deref(), &card(&a, &trainer, step, None)?)?;
        println!("exported step {step} of {steps}; model in {}", model_dir.display());
        return Ok(());
    }
    let Some(Finished { secs, last }) = drive_loss(&mut trainer, a.until, steps, a.run.quiet)? else {
        return Ok(());
    };
    let model_dir = a.out.join("model");
    trainer.write_model(&model_dir, a.tokenizer.as_deref(), &card(&a, &trainer, steps, Some(secs))?)?;
    println!("trained {steps} steps in {secs:.0} s ({last}); model in {}", model_dir.display());
    Ok(())
}

/// The model card of a run's weights after `step` steps (`secs`: this call's training time).
fn card(a: &TrainArgs, trainer: &DiffusionTrainer, step: u64, secs: Option<f64>) -> Result<String> {
    let c = &trainer.config;
    let t = &c.train.train;
    let (channels, side) = c.arch.latent();
    let time = secs.map(|s| format!(", {s:.0} s in this call")).unwrap_or_default();
    Ok(format!(
        "# {} on the {channels}×{side}×{side} latent\n\nTrained by `gen train --model {} --latents {} --config {}` ({step} of {} steps of batch {}\
         {time}) on {} images of {} classes.\n\n- {} parameters; EMA decay {}{} (the exported weights)\n\
         - architecture: `{}`\n",
        c.train.kind().to_uppercase(),
        a.model,
        a.latents.display(),
        a.config.display(),
        t.steps,
        t.batch_size,
        c.images,
        c.arch.num_classes(),
        parameter_count(&c.arch)?,
        t.ema.decay,
        if t.ema.warmup { " with LitEma warm-up" } else { "" },
        serde_json::to_string(&c.arch)?,
    ))
}
