//! `gen utilization`: how much of its codebook a tokenizer uses on a set of images (the paper's
//! utilisation rate), with perplexity and a usage-histogram PNG.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Args;
use gen_runtime::imageio;
use gen_runtime::{plot, progress};
use gen_tokenizer::usage::CodeUsage;

use super::datasets::{Data, DataArgs};
use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct UtilizationArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    #[command(flatten)]
    pub images: DataArgs,
    /// The usage histogram (codes sorted from the most used down).
    #[arg(long, default_value = "usage-histogram.png")]
    pub histogram: PathBuf,
}

pub fn run(a: UtilizationArgs) -> Result<()> {
    let quiet = a.model.run.quiet;
    let data = Data::open(&a.images.data, a.images.count, quiet)?;
    let n = data.len();
    if n == 0 {
        bail!("--data {}: no images", a.images.data);
    }
    let (model, dev, dtype) = a.model.open()?;
    let size = model.config.resolution;
    let mut usage = CodeUsage::new(model.quantizer.codebook_size()?);
    let bar = progress::bar(n as u64, "encode", quiet);
    let batch = a.model.run.batch_size;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let x = (start..end)
            .map(|i| Ok(imageio::to_tensor(&imageio::preprocess(&data.image(i)?, size), &dev)?))
            .collect::<Result<Vec<_>>>()?;
        let q = model.encode(&Tensor::stack(&x, 0)?.to_dtype(dtype)?)?;
        usage.add(&q.indices.flatten_all()?.to_vec1::<u32>()?);
        bar.set_position(end as u64);
        start = end;
    }
    bar.finish_and_clear();
    let sorted: Vec<f64> = usage.sorted_counts().iter().map(|&c| c as f64).collect();
    plot::bar_chart(&a.histogram, "code usage (codes sorted by count)", "code rank", "tokens", &sorted)?;
    let codes = usage.counts.len();
    println!(
        "utilisation {:.2}% ({} of {codes} codes active), perplexity {:.1}, over {} tokens of {n} images at {size}²; histogram {}",
        100.0 * usage.utilization(),
        usage.active(),
        usage.perplexity(),
        usage.tokens(),
        a.histogram.display()
    );
    Ok(())
}
