//! `gen reconstruct`: images → tokens → images, with the official preprocessing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gen_runtime::{imageio, progress};

use super::images::{load_batch, output_names};
use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    /// Input images (PNG or JPEG; gray and RGBA are converted to RGB).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for `<name>.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a grid PNG: the preprocessed inputs on the top row of each pair, reconstructions below.
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

pub fn run(a: ReconstructArgs) -> Result<()> {
    let names = output_names(&a.inputs, &a.out)?;
    let (model, dev, dtype) = a.model.open()?;
    let (size, quiet, batch) = (model.config.resolution, a.model.run.quiet, a.model.run.batch_size);
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create folder", a.out.display()))?;
    let pb = progress::bar(a.inputs.len() as u64, "reconstruct", quiet);
    let (mut shown, mut recons) = (Vec::new(), Vec::new());
    for (paths, outs) in a.inputs.chunks(batch).zip(names.chunks(batch)) {
        let x = load_batch(paths, size, &dev, dtype, quiet)?;
        let (xrec, _) = model.reconstruct(&x)?;
        for (i, out) in outs.iter().enumerate() {
            let img = imageio::from_tensor(&xrec.get(i)?)?;
            imageio::save_png(out, &img)?;
            if a.grid.is_some() {
                shown.push(imageio::from_tensor(&x.get(i)?)?);
                recons.push(img);
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    if let Some(path) = &a.grid {
        // pairs of rows: up to 8 inputs, then their reconstructions
        let cols = shown.len().clamp(1, 8);
        let tiles: Vec<_> =
            shown.chunks(cols).zip(recons.chunks(cols)).flat_map(|(i, r)| i.iter().chain(r).cloned()).collect();
        let g = imageio::grid(&tiles, cols).context("reconstructions differ in size")?;
        imageio::save_png(path, &g)?;
    }
    if !quiet {
        eprintln!("wrote {} reconstructions to {}", a.inputs.len(), a.out.display());
    }
    Ok(())
}
