//! `gen train-prior`: trains the GPT prior on token shards (`gen tokenize`) in a run folder that
//! resumes exactly, and writes the trained prior as a model folder paired with its tokenizer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gen_prior::train::{EmbeddingInit, PriorConfig, PriorTrainer, TokenSet};

use super::train_steps::{drive_loss, Finished};
use crate::args::{at_least_one, DeviceArgs};

#[derive(Args)]
pub struct TrainPriorArgs {
    /// Token shards to train on (`gen tokenize --out DIR`).
    #[arg(long)]
    pub shards: PathBuf,
    /// The run's config (`configs/prior/*.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder (config copy, log.jsonl, loss.png, checkpoints/, and the trained model in model/).
    #[arg(long)]
    pub out: PathBuf,
    /// Shards for the validation loss at every checkpoint (the same tokenizer's).
    #[arg(long)]
    pub val_shards: Option<PathBuf>,
    /// The tokenizer the shards were made with, recorded in the model folder (its sha256 must match the
    /// shards').
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint (refused if the config or shards changed).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in all (the schedule still spans the config's steps); resume later.
    #[arg(long, value_parser = at_least_one)]
    pub until: Option<usize>,
    #[command(flatten)]
    pub run: DeviceArgs,
}

pub fn run(a: TrainPriorArgs) -> Result<()> {
    a.run.training_on_cpu("train-prior")?;
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("cannot read {}", a.config.display()))?;
    let cfg = PriorConfig::parse(&text, &a.config)?;
    let data = TokenSet::read(&a.shards, None)?;
    if let Some(t) = &a.tokenizer {
        data.manifest.check_tokenizer(&a.shards, &gen_tokenizer::tokenizer_sha256(t)?)?;
    }
    // the tokenizer itself is loaded only for a codebook-initialised embedding
    let codebook = match (&a.tokenizer, cfg.model.embedding_init) {
        (Some(t), EmbeddingInit::Codebook) => {
            let tok = gen_tokenizer::load_tokenizer(t, None, None, candle_core::DType::F32, &candle_core::Device::Cpu)?;
            Some(tok.quantizer.codebook()?)
        }
        _ => None,
    };
    let val = a.val_shards.as_ref().map(|v| TokenSet::read(v, Some(cfg.train.val_images))).transpose()?;
    let mut trainer = PriorTrainer::open(cfg, data, val, codebook.as_ref(), &a.out, a.resume)?;
    let steps = trainer.config.prior.train.steps;
    let Some(Finished { secs, last }) = drive_loss(&mut trainer, a.until, steps, a.run.quiet)? else {
        return Ok(());
    };
    let g = &trainer.config.gpt;
    let t = &trainer.config.prior.train;
    let card = format!(
        "# GPT prior (GPT-LC architecture)\n\nTrained by `gen train-prior --shards {} --config {}` ({steps} steps of batch {}, \
         {:.0} s in this call) on {} images.\n\n- {} layers, {} heads, width {}, block {}; vocabulary {} ({} codes + {} classes{})\n\
         - {} parameters; head {}; pkeep {}, class dropout {}, label smoothing {}\n",
        a.shards.display(),
        a.config.display(),
        t.batch_size,
        secs,
        trainer.config.images,
        g.n_layer,
        g.n_head,
        g.n_embd,
        g.block_size,
        g.vocab(),
        g.n_codes,
        g.n_classes,
        if g.null_class { " + the null class" } else { "" },
        g.parameter_count(),
        if g.tied_head { "tied to the token embedding" } else { "untied" },
        t.pkeep,
        t.class_dropout,
        t.label_smoothing
    );
    let model_dir = a.out.join("model");
    trainer.write_model(&model_dir, a.tokenizer.as_deref(), &card)?;
    println!("trained {steps} steps in {secs:.0} s ({last}); model in {}", model_dir.display());
    Ok(())
}
