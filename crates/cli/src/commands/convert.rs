//! `gen convert`: an official VQGAN-LC checkpoint → a model folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use gen_tokenizer::{read_weights, write_model_dir};

use crate::args::at_least_one;

#[derive(Args)]
pub struct ConvertArgs {
    /// Official checkpoint (`vqgan_checkpoint-*.pth`).
    #[arg(long)]
    pub from: PathBuf,
    /// The codebook it was trained with (`codebook-100K.pth`).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// Output model folder.
    #[arg(long)]
    pub to: PathBuf,
    /// Training image size (default: the checkpoint's `args.image_size`, else 256).
    #[arg(long, value_parser = at_least_one)]
    pub resolution: Option<usize>,
    /// Store only the projected codebook (a 100k × 768 raw codebook is 300 MB); such a folder can
    /// tokenize and decode but not train the projector.
    #[arg(long)]
    pub inference_only: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let w = read_weights(&a.from, a.codebook.as_deref(), a.resolution)?;
    let n = write_model_dir(&w, &a.to, !a.inference_only, "Weights under the official state-dict names.")?;
    eprintln!(
        "wrote {} ({} tensors; discriminator and LPIPS weights dropped; projected codebook stored)",
        a.to.display(),
        n
    );
    Ok(())
}
