//! `gen encode`: images → token ids (a token file, and/or printed).

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use gen_data::tokens::TokenFile;
use gen_runtime::progress;

use super::images::load_batch;
use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output safetensors file (`tokens U32 [N, h·w]`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the token ids, one line per image.
    #[arg(long)]
    pub print: bool,
}

pub fn run(a: EncodeArgs) -> Result<()> {
    if a.out.is_none() && !a.print {
        bail!("nothing to do: give --out FILE and/or --print");
    }
    let (model, dev, dtype) = a.model.open()?;
    let quiet = a.model.run.quiet;
    let pb = progress::bar(a.inputs.len() as u64, "encode", quiet);
    let mut all = Vec::new();
    for paths in a.inputs.chunks(a.model.run.batch_size) {
        let q = model.encode(&load_batch(paths, model.config.resolution, &dev, dtype, quiet)?)?;
        all.push(q.indices.to_device(&Device::Cpu)?);
        pb.inc(paths.len() as u64);
    }
    pb.finish_and_clear();
    let ids = Tensor::cat(&all, 0)?.to_vec2::<u32>()?;
    if a.print {
        for (p, row) in a.inputs.iter().zip(&ids) {
            let text: Vec<String> = row.iter().map(u32::to_string).collect();
            println!("{}\t{}", p.display(), text.join(" "));
        }
    }
    if let Some(out) = &a.out {
        let g = model.config.latent_size();
        let file = TokenFile { ids, grid: (g, g), vocab: Some(model.quantizer.codebook_size()?) };
        file.write(out)?;
        if !quiet {
            eprintln!("wrote tokens [{}, {}] to {}", a.inputs.len(), g * g, out.display());
        }
    }
    Ok(())
}
