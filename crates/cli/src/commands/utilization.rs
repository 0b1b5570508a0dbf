//! `gen utilization`: how much of its codebook a tokenizer uses on a set of images (the paper's
//! utilisation rate), with perplexity and a usage-histogram PNG; and, since that rate depends on how
//! many tokens the images hold, how far the split is from seeing every code the tokenizer reaches
//! (Chao1's estimate, the Good–Turing unseen mass, and optionally the curve of codes seen against tokens).

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Args;
use gen_runtime::imageio;
use gen_runtime::plot::{self, Series};
use gen_runtime::progress;
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
    /// Also plot the utilisation against the tokens seen so far (one point per batch), as a PNG.
    #[arg(long)]
    pub curve: Option<PathBuf>,
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
    let mut curve = vec![(0.0, 0.0)];
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let x = (start..end)
            .map(|i| Ok(imageio::to_tensor(&imageio::preprocess(&data.image(i)?, size), &dev)?))
            .collect::<Result<Vec<_>>>()?;
        let q = model.encode(&Tensor::stack(&x, 0)?.to_dtype(dtype)?)?;
        usage.add(&q.indices.flatten_all()?.to_vec1::<u32>()?);
        if a.curve.is_some() {
            // two passes over the counts per batch: only when the curve is asked for
            curve.push((usage.tokens() as f64, 100.0 * usage.utilization()));
        }
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
    let reach = usage.chao1();
    println!(
        "codes seen once {}, twice {}; Chao1 estimate of the codes this tokenizer reaches on such images {:.0} ({:.2}%); \
         next token on an unseen code (Good–Turing) {:.2}%",
        usage.used_exactly(1),
        usage.used_exactly(2),
        reach,
        100.0 * reach / codes as f64,
        100.0 * usage.unseen_mass()
    );
    if let Some(path) = &a.curve {
        let title = format!("codes in use against tokens seen ({codes} codes)");
        plot::line_chart(path, &title, "tokens", "utilisation (%)", &[Series::line("utilisation", curve)])?;
        println!("curve {}", path.display());
    }
    Ok(())
}
