//! `gen eval-classes`: how often the Fashion-MNIST classifier recognises the intended class of labelled
//! images (a class-conditional generator's samples, or any folder), per class, beside the classifier's
//! own accuracy on the real test images of that class (the bound a generator can reach).
//!
//! Labels come from the file names `gen export-fmnist` writes (`00042-ankle_boot.png`: the class after the
//! first `-`) or from a parent folder named after the class.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, D};
use clap::Args;
use gen_data::fmnist::{FashionMnist, DEFAULT_DIR};
use gen_eval::classifier::{batch, input, load_classifier};
use gen_eval::classifier_train::evaluate;
use gen_eval::features::list_images;

use crate::args::DeviceArgs;

#[derive(Args)]
pub struct EvalClassesArgs {
    /// The classifier model folder.
    #[arg(long, default_value = "models/fmnist/classifier")]
    pub classifier: PathBuf,
    /// Labelled images (recursive).
    #[arg(long)]
    pub images: PathBuf,
    /// Fashion-MNIST, for the classifier's accuracy on real test images (skipped if absent).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub data: PathBuf,
    #[command(flatten)]
    pub run: DeviceArgs,
}

/// A class name as it appears in file and folder names: `T-shirt/top` → `t-shirt-top`.
pub fn slug(class: &str) -> String {
    class.replace('/', "-").replace(' ', "_").to_lowercase()
}

fn label_of(path: &Path, slugs: &[String]) -> Option<usize> {
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    let from_name = stem.split_once('-').map(|(_, rest)| rest.to_string());
    let parent = path.parent().and_then(|p| p.file_name()).map(|p| p.to_string_lossy().to_lowercase());
    slugs.iter().position(|s| from_name.as_deref() == Some(s.as_str()) || parent.as_deref() == Some(s.as_str()))
}

pub fn run(a: EvalClassesArgs) -> Result<()> {
    let (dev, _) = a.run.open()?;
    let model = load_classifier(&a.classifier, &dev)?;
    let classes = model.config.classes.clone();
    let slugs: Vec<String> = classes.iter().map(|c| slug(c)).collect();
    let (files, _) = list_images(&a.images)?;
    let labelled: Vec<(PathBuf, usize)> =
        files.into_iter().filter_map(|p| label_of(&p, &slugs).map(|l| (p, l))).collect();
    if labelled.is_empty() {
        bail!(
            "{}: no image is labelled (name files like 00042-{}.png, or put them in a folder named after the class)",
            a.images.display(),
            slugs[9]
        );
    }
    let mut per_class = vec![(0usize, 0usize); classes.len()];
    for chunk in labelled.chunks(a.run.batch_size) {
        let inputs = chunk
            .iter()
            .map(|(p, _)| gen_runtime::imageio::load_rgb(p).map(|(img, _)| input(&img)))
            .collect::<gen_runtime::Result<Vec<_>>>()?;
        let (_, logits) = model.forward(&batch(&inputs, &dev)?)?;
        let pred = logits.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
        for ((_, label), p) in chunk.iter().zip(pred) {
            per_class[*label].1 += 1;
            if p as usize == *label {
                per_class[*label].0 += 1;
            }
        }
    }
    let real = if a.data.exists() {
        let test = FashionMnist::load(&a.data, "t10k")?;
        Some(evaluate(&model, &test, 500).context("the classifier on the real test images")?)
    } else {
        None
    };
    let pct = |(c, t): (usize, usize)| if t == 0 { f64::NAN } else { 100.0 * c as f64 / t as f64 };
    println!("| class | images | accuracy | classifier on real test images |");
    println!("|---|---|---|---|");
    let (mut sum, mut k, mut sum_real) = (0.0, 0usize, 0.0);
    for (i, name) in classes.iter().enumerate() {
        let r = real.as_ref().map(|r| pct(r[i]));
        let real_text = r.map_or("–".to_string(), |v| format!("{v:.2}%"));
        if per_class[i].1 > 0 {
            sum += pct(per_class[i]);
            sum_real += r.unwrap_or(f64::NAN);
            k += 1;
        }
        let acc = if per_class[i].1 == 0 { "–".to_string() } else { format!("{:.2}%", pct(per_class[i])) };
        println!("| {name} | {} | {acc} | {real_text} |", per_class[i].1);
    }
    let real_mean = if real.is_some() { format!("{:.2}%", sum_real / k as f64) } else { "–".into() };
    println!("| **mean over the {k} classes present** | {} | {:.2}% | {real_mean} |", labelled.len(), sum / k as f64);
    Ok(())
}
