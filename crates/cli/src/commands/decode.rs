//! `gen decode`: token ids → images.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gen_data::tokens::TokenFile;
use gen_runtime::{imageio, progress};

use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    /// Token file written by `gen encode` (or any safetensors with `tokens [N, h·w]`).
    pub tokens: PathBuf,
    /// Output folder for `00000.png`, …
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: DecodeArgs) -> Result<()> {
    let (model, dev, _) = a.model.open()?;
    // every id is checked against the codebook before the first image is written
    let file = TokenFile::read(&a.tokens, Some(model.quantizer.codebook_size()?))?;
    let tokens = file.tensor(&dev)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create folder", a.out.display()))?;
    let (n, quiet) = (file.ids.len(), a.model.run.quiet);
    let pb = progress::bar(n as u64, "decode", quiet);
    let mut start = 0;
    while start < n {
        let len = a.model.run.batch_size.min(n - start);
        let imgs = model.decode_indices(&tokens.narrow(0, start, len)?, Some(file.grid))?;
        for i in 0..len {
            let img = imageio::from_tensor(&imgs.get(i)?)?;
            imageio::save_png(&a.out.join(format!("{:05}.png", start + i)), &img)?;
            pb.inc(1);
        }
        start += len;
    }
    pb.finish_and_clear();
    if !quiet {
        eprintln!("wrote {n} images to {}", a.out.display());
    }
    Ok(())
}
