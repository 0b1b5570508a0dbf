//! From images to FID statistics: loading the Inception weights, listing image folders, and extracting
//! features batch by batch (images decoded in parallel, memory flat in the number of images).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_nn::Weights;
use gen_runtime::imageio::RgbImage;
use gen_runtime::{Error, Result};
use rayon::prelude::*;

use crate::inception::{FidInception, Tap};
use crate::preprocess::{Protocol, INCEPTION_SIZE};

/// The file pytorch-fid downloads, and where users get it.
pub const INCEPTION_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
pub const INCEPTION_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// Loads the FID Inception from pytorch-fid's `.pth` (read by the safe reader) or a safetensors copy.
/// `fc.*` and `*.num_batches_tracked` are ignored; any other missing or mis-shaped tensor is an error
/// naming it.
pub fn load_inception(path: &Path, dev: &Device) -> Result<FidInception> {
    if !path.exists() {
        return Err(Error::format(
            path,
            format!(
                "Inception weights not found: download {INCEPTION_FILE} from {INCEPTION_URL} and pass it with \
                 --inception (or use --features fmnist-classifier, which needs no download)"
            ),
        ));
    }
    let tensors: HashMap<String, Tensor> = if path.extension().is_some_and(|e| e == "safetensors") {
        gen_runtime::io::load_safetensors(path, &Device::Cpu)?
    } else {
        gen_runtime::pth::load_state_dict(path, None)?
    };
    let weights = Weights::new(path.display().to_string(), tensors);
    Ok(FidInception::new(weights.var_builder(DType::F32, dev))?)
}

/// Image files below `dir` (recursive), sorted by path: `.png`, `.jpg`, `.jpeg` in any case. Returns
/// them and the number of other files skipped.
pub fn list_images(dir: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let mut images = Vec::new();
    let mut skipped = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                images.push(path);
            } else {
                skipped += 1;
            }
        }
    }
    images.sort();
    if images.is_empty() {
        return Err(Error::format(dir, "holds no images (.png, .jpg, .jpeg)"));
    }
    Ok((images, skipped))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Where images come from: files (decoded lazily, in parallel) or images already in memory.
pub enum ImageSource<'a> {
    Files(&'a [PathBuf]),
    Memory(&'a [RgbImage]),
}

impl ImageSource<'_> {
    pub fn len(&self) -> usize {
        match self {
            ImageSource::Files(f) => f.len(),
            ImageSource::Memory(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `prepare` applied to images `range`, decoded and prepared in parallel.
    pub fn prepared(
        &self,
        range: std::ops::Range<usize>,
        prepare: &(dyn Fn(&RgbImage) -> Vec<f32> + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        Ok(match self {
            ImageSource::Files(files) => files[range]
                .par_iter()
                .map(|p| gen_runtime::imageio::load_rgb(p).map(|(img, _)| prepare(&img)))
                .collect::<Result<_>>()?,
            ImageSource::Memory(images) => images[range].par_iter().map(prepare).collect(),
        })
    }

    /// The network inputs of images `range`, [n, 3, 299, 299], decoded and resized in parallel.
    fn batch(&self, range: std::ops::Range<usize>, protocol: Protocol, dev: &Device) -> Result<Tensor> {
        let inputs = self.prepared(range, &|img| protocol.input(img))?;
        let n = inputs.len();
        let flat: Vec<f32> = inputs.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 3, INCEPTION_SIZE, INCEPTION_SIZE), dev)?)
    }
}

/// The features of `images` at `tap` under `protocol`, batch by batch: `on_batch` gets each batch's
/// vectors (row-major [n, dims]) and the number of images done.
pub fn extract(
    model: &FidInception,
    images: &ImageSource,
    protocol: Protocol,
    tap: Tap,
    batch_size: usize,
    dev: &Device,
    mut on_batch: impl FnMut(&[f32], usize),
) -> Result<()> {
    in_batches(
        images.len(),
        batch_size,
        |range| Ok(vec![model.features(&images.batch(range, protocol, dev)?, tap)?]),
        |out, done| on_batch(&out[0], done),
    )
}

/// Runs `net` over `0..len` in batches and hands each batch's outputs (row-major f32 on the CPU) to
/// `on_batch` with the count done.
fn in_batches(
    len: usize,
    batch_size: usize,
    net: impl Fn(std::ops::Range<usize>) -> Result<Vec<Tensor>>,
    mut on_batch: impl FnMut(&[Vec<f32>], usize),
) -> Result<()> {
    let mut start = 0;
    while start < len {
        let end = (start + batch_size.max(1)).min(len);
        let outs = net(start..end)?
            .into_iter()
            .map(|t| Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        on_batch(&outs, end);
        start = end;
    }
    Ok(())
}

/// The Fashion-MNIST classifier's features (its penultimate layer) of `images`, batch by batch.
pub fn extract_classifier(
    model: &crate::classifier::Classifier,
    images: &ImageSource,
    batch_size: usize,
    dev: &Device,
    mut on_batch: impl FnMut(&[f32], usize),
) -> Result<()> {
    in_batches(
        images.len(),
        batch_size,
        |range| {
            let x = crate::classifier::batch(&images.prepared(range, &crate::classifier::input)?, dev)?;
            Ok(vec![model.forward(&x)?.0])
        },
        |out, done| on_batch(&out[0], done),
    )
}

/// The Inception's 1008 `fc` logits of `images` under `protocol`, batch by batch.
pub fn extract_logits(
    model: &FidInception,
    images: &ImageSource,
    protocol: Protocol,
    batch_size: usize,
    dev: &Device,
    mut on_batch: impl FnMut(&[f32], usize),
) -> Result<()> {
    in_batches(
        images.len(),
        batch_size,
        |range| Ok(vec![model.logits(&images.batch(range, protocol, dev)?)?]),
        |out, done| on_batch(&out[0], done),
    )
}

/// pool3 features and the sFID tap (`FidInception::features_spatial`) of `images`, batch by batch:
/// `on_batch` gets (pool3 rows, spatial rows, images done).
pub fn extract_spatial(
    model: &FidInception,
    images: &ImageSource,
    protocol: Protocol,
    batch_size: usize,
    dev: &Device,
    mut on_batch: impl FnMut(&[f32], &[f32], usize),
) -> Result<()> {
    in_batches(
        images.len(),
        batch_size,
        |range| {
            let (pool, spatial) = model.features_spatial(&images.batch(range, protocol, dev)?)?;
            Ok(vec![pool, spatial])
        },
        |out, done| on_batch(&out[0], &out[1], done),
    )
}
