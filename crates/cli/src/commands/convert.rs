//! `gen convert`: an official VQGAN-LC checkpoint → a model folder; or, with `--weights-only`, any
//! `.pth` state dict (pytorch-fid's Inception, torchvision's VGG16, the LPIPS lins) → a safetensors file
//! that loads without the pickle reader.

use std::path::PathBuf;

use anyhow::{bail, Result};
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
    /// Copy the state dict of `--from` (a `.pth`) to the safetensors file `--to`, under the same names
    /// (BatchNorm `num_batches_tracked` counters dropped): for `--inception`, `--lpips-vgg`, `--lpips-lin`.
    #[arg(long, conflicts_with_all = ["codebook", "resolution", "inference_only"])]
    pub weights_only: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if a.weights_only {
        if a.to.extension().is_none_or(|e| e != "safetensors") {
            bail!("--to {}: --weights-only writes a .safetensors file", a.to.display());
        }
        let mut tensors: Vec<(String, candle_core::Tensor)> = gen_runtime::pth::PthFile::open(&a.from)?
            .tensors(None)?
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
        tensors.sort_by(|x, y| x.0.cmp(&y.0));
        gen_runtime::io::save_safetensors(&a.to, &tensors, None)?;
        eprintln!("wrote {} ({} tensors from {})", a.to.display(), tensors.len(), a.from.display());
        return Ok(());
    }
    let w = read_weights(&a.from, a.codebook.as_deref(), a.resolution)?;
    let n = write_model_dir(&w, &a.to, !a.inference_only, "Weights under the official state-dict names.")?;
    eprintln!(
        "wrote {} ({} tensors; discriminator and LPIPS weights dropped; projected codebook stored)",
        a.to.display(),
        n
    );
    Ok(())
}
