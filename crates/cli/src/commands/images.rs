//! Image inputs of the model commands: one batch loaded at a time, and output names that never collide.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use gen_runtime::imageio::{self, SourceMode};

/// Loads and preprocesses one batch of images as the official evaluation does: [B, 3, S, S].
/// Batches are loaded one at a time, so memory does not grow with the number of inputs.
pub fn load_batch(paths: &[PathBuf], size: usize, dev: &Device, dtype: DType, quiet: bool) -> Result<Tensor> {
    let images = paths
        .iter()
        .map(|p| {
            let (img, mode) = imageio::load_rgb(p)?;
            if mode == SourceMode::Converted && !quiet {
                eprintln!("note: {}: converted to RGB", p.display());
            }
            if img.width.min(img.height) < size && !quiet {
                eprintln!(
                    "note: {}: {}×{} is smaller than {size}²; upscaled as the official preprocessing does",
                    p.display(),
                    img.width,
                    img.height
                );
            }
            let t = imageio::to_tensor(&imageio::preprocess(&img, size), dev)?;
            Ok(t.to_dtype(dtype)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&images, 0)?)
}

/// `<out>/<stem>.png` for each input; two different inputs that would write the same file are an error
/// naming both, before anything is written (one file given twice writes the same output twice).
pub fn output_names(inputs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    let mut names = Vec::with_capacity(inputs.len());
    for input in inputs {
        let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let name = out.join(format!("{stem}.png"));
        let same_file =
            |a: &Path, b: &Path| a == b || a.canonicalize().is_ok_and(|a| b.canonicalize().is_ok_and(|b| a == b));
        if let Some(first) = seen.insert(name.clone(), input).filter(|first| !same_file(first, input)) {
            bail!(
                "{} and {} would both be written to {}; rename one or run them separately",
                first.display(),
                input.display(),
                name.display()
            );
        }
        names.push(name);
    }
    Ok(names)
}
