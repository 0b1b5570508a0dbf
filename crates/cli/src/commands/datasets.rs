//! Image sources of the tokenizer commands (`rfid`, `utilization`): a folder or a Fashion-MNIST split.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use gen_data::fmnist::{FashionMnist, CLASS_NAMES, DEFAULT_DIR};
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

impl Data {
    /// Each image's class and the class names: Fashion-MNIST's ten, or an image folder's classes
    /// ([`folder_classes`]); a folder without class subfolders is one class, `images`.
    pub(crate) fn labels(&self, spec: &str) -> Result<(Vec<u32>, Vec<String>)> {
        Ok(match self {
            Data::Fmnist(ds, n) => (
                ds.labels[..*n].iter().map(|&l| u32::from(l)).collect(),
                CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
            ),
            Data::Files(files) => match folder_classes(Path::new(spec), files)? {
                Some(labelled) => labelled,
                None => (vec![0; files.len()], vec!["images".to_string()]),
            },
        })
    }
}

/// ImageFolder classes (torchvision's layout, ImageNet's): the first folder below `root` names an
/// image's class, classes in sorted order. `None` when no image is inside a subfolder; an image outside
/// the class folders while others are inside is an error naming it.
pub(crate) fn folder_classes(root: &Path, files: &[PathBuf]) -> Result<Option<(Vec<u32>, Vec<String>)>> {
    let class_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
        parts.next().map(|_| first)
    };
    let mut names: Vec<String> = files.iter().filter_map(|p| class_of(p)).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(None);
    }
    let mut labels = Vec::with_capacity(files.len());
    for p in files {
        let Some(class) = class_of(p) else {
            bail!("--data {}: {} is not inside a class subfolder (one folder per class)", root.display(), p.display());
        };
        labels.push(names.binary_search(&class).unwrap_or(0) as u32);
    }
    Ok(Some((labels, names)))
}
