//! `gen export-fmnist`: Fashion-MNIST images as PNG files (the demo domain).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use gen_data::fmnist::{FashionMnist, CLASS_NAMES, DEFAULT_DIR, SPLITS};
use gen_runtime::imageio;

#[derive(Args)]
pub struct ExportFmnistArgs {
    /// Folder with the IDX files (Debian package `dataset-fashion-mnist`).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// train | t10k
    #[arg(long, default_value = "t10k")]
    pub split: String,
    /// First image index.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Number of images.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Output folder for `<index>-<class>.png`.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportFmnistArgs) -> Result<()> {
    if !SPLITS.contains(&a.split.as_str()) {
        bail!("--split '{}': expected {}", a.split, SPLITS.join(" or "));
    }
    let ds = FashionMnist::load(&a.dir, &a.split)?;
    if a.start.checked_add(a.count).is_none_or(|end| end > ds.len()) {
        bail!("--start {} --count {}: the {} split has {} images", a.start, a.count, a.split, ds.len());
    }
    for i in a.start..a.start + a.count {
        let class = super::eval_classes::slug(CLASS_NAMES[ds.labels[i] as usize]);
        imageio::save_png(&a.out.join(format!("{i:05}-{class}.png")), &ds.rgb(i))?;
    }
    eprintln!("wrote {} Fashion-MNIST images to {}", a.count, a.out.display());
    Ok(())
}
