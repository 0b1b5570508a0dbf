//! Image sources of the tokenizer commands (`rfid`, `utilization`): a folder or a Fashion-MNIST split.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use gen_data::fmnist::{FashionMnist, DEFAULT_DIR};
use gen_eval::features::list_images;
use gen_runtime::imageio::{self, RgbImage};

/// `--data` and `--count`.
#[derive(Args)]
pub struct DataArgs {
    /// The images: a folder (recursive; PNG and JPEG), or `fmnist:test` / `fmnist:train` (Fashion-MNIST).
    #[arg(long)]
    pub data: String,
    /// Use only the first N images.
    #[arg(long)]
    pub count: Option<usize>,
}

/// Images loaded lazily, one at a time: a folder's files or a Fashion-MNIST split (its first `count`).
pub(crate) enum Data {
    Files(Vec<PathBuf>),
    Fmnist(FashionMnist, usize),
}

impl Data {
    pub(crate) fn open(spec: &str, count: Option<usize>, quiet: bool) -> Result<Data> {
        let data = match spec.strip_prefix("fmnist:") {
            Some(split) => {
                let split = match split {
                    "test" | "t10k" => "t10k",
                    "train" => "train",
                    other => bail!("--data fmnist:{other}: expected fmnist:test or fmnist:train"),
                };
                let ds = FashionMnist::load(std::path::Path::new(DEFAULT_DIR), split)?;
                let n = count.unwrap_or(ds.len()).min(ds.len());
                Data::Fmnist(ds, n)
            }
            None => {
                let (mut files, skipped) = list_images(std::path::Path::new(spec))?;
                if skipped > 0 && !quiet {
                    eprintln!("note: {spec}: skipped {skipped} files that are not PNG or JPEG images");
                }
                files.truncate(count.unwrap_or(files.len()));
                Data::Files(files)
            }
        };
        Ok(data)
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Data::Files(f) => f.len(),
            Data::Fmnist(_, n) => *n,
        }
    }

    pub(crate) fn image(&self, i: usize) -> Result<RgbImage> {
        Ok(match self {
            Data::Files(f) => imageio::load_rgb(&f[i])?.0,
            Data::Fmnist(ds, _) => ds.rgb(i),
        })
    }
}
