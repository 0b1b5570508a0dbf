//! `gen init-codebook`: a frozen VQGAN-LC codebook from k-means centres of a pretrained encoder's patch
//! features, per class (the official recipe) or over all images (data without labels).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gen_clip::vision::{clip_batch, load_clip_vision, ClipVision};
use gen_data::fmnist::{FashionMnist, CLASS_NAMES, DEFAULT_DIR};
use gen_eval::classifier::{batch, input, input_gray, load_classifier, Classifier};
use gen_eval::features::list_images;
use gen_runtime::imageio::RgbImage;
use gen_runtime::{progress, Rng};
use gen_tokenizer::codebook::{build, Group, KMeansConfig};

use crate::args::{at_least_one, DeviceArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoder {
    /// The shipped Fashion-MNIST classifier's second-block map: 64-d vectors on a 7×7 grid (no download).
    FmnistClassifier,
    /// CLIP's vision tower, the official recipe: ViT-L/14 at 224², patch tokens after ln_post and the
    /// projection (768-d), class token dropped, 16×16 pooled 4×4 (user-supplied weights, `--clip`).
    Clip,
}

#[derive(Args)]
pub struct InitCodebookArgs {
    /// The feature extractor.
    #[arg(long, value_enum, default_value_t = Encoder::FmnistClassifier)]
    pub encoder: Encoder,
    /// The classifier model folder (`--encoder fmnist-classifier`).
    #[arg(long, default_value = "models/fmnist/classifier")]
    pub classifier: PathBuf,
    /// CLIP weights (`--encoder clip`): openai/clip-vit-large-patch14's model.safetensors (Hugging Face).
    #[arg(long, default_value = "clip-vit-large-patch14.safetensors")]
    pub clip: PathBuf,
    /// `fmnist:train` / `fmnist:test`, or a folder of images (recursive; with `--per-class`, one
    /// subfolder per class, as torchvision's ImageFolder).
    #[arg(long)]
    pub data: String,
    /// Use only the first N images.
    #[arg(long, value_parser = at_least_one)]
    pub count: Option<usize>,
    /// Codebook entries in all (per class: split evenly, the first classes one more when it does not divide).
    #[arg(long, value_parser = at_least_one)]
    pub size: usize,
    /// Cluster each class on its own (the official recipe; the default).
    #[arg(long, conflicts_with = "global")]
    pub per_class: bool,
    /// Cluster all features at once (for data without labels).
    #[arg(long)]
    pub global: bool,
    /// Average-pool the feature map by this factor first (default: 4 for CLIP's 16×16 tokens, the official
    /// recipe; 1 for the classifier's 7×7 map).
    #[arg(long, value_parser = at_least_one)]
    pub pool: Option<usize>,
    /// Cluster at most this many feature vectors per group, drawn at random with the seed (default: all).
    #[arg(long, value_parser = at_least_one)]
    pub max_points: Option<usize>,
    /// Lloyd rounds at most, per group.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub max_iter: usize,
    /// Stop when the squared centre shift ≤ tol × the features' mean variance (scikit-learn's rule).
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The codebook: `.safetensors` (with the record of how it was made) or `.pth` (the official raw
    /// tensor layout of `codebook-100K.pth`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: DeviceArgs,
}

/// Images and their group (class index, or 0 for `--global`).
enum Images {
    Fmnist(FashionMnist),
    Files(Vec<(PathBuf, usize)>),
}

impl Images {
    fn len(&self) -> usize {
        match self {
            Images::Fmnist(ds) => ds.len(),
            Images::Files(f) => f.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Images::Fmnist(ds) => {
                let px = ds.rows * ds.cols;
                ds.labels.truncate(n);
                ds.images.truncate(n * px);
            }
            Images::Files(f) => f.truncate(n),
        }
    }

    /// Images `range` as RGB, and their groups.
    fn rgb(&self, range: std::ops::Range<usize>) -> Result<(Vec<RgbImage>, Vec<usize>)> {
        use rayon::prelude::*;
        Ok(match self {
            Images::Fmnist(ds) => {
                (range.clone().map(|i| ds.rgb(i)).collect(), range.map(|i| usize::from(ds.labels[i])).collect())
            }
            Images::Files(files) => {
                let x = files[range.clone()]
                    .par_iter()
                    .map(|(p, _)| Ok(gen_runtime::imageio::load_rgb(p)?.0))
                    .collect::<Result<Vec<_>>>()?;
                (x, files[range].iter().map(|(_, g)| *g).collect())
            }
        })
    }

    /// The classifier inputs and groups of images `range`.
    fn inputs(&self, range: std::ops::Range<usize>) -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        use rayon::prelude::*;
        Ok(match self {
            Images::Fmnist(ds) => {
                let px = ds.rows * ds.cols;
                let x = range.clone().map(|i| input_gray(&ds.images[i * px..(i + 1) * px])).collect();
                (x, range.map(|i| usize::from(ds.labels[i])).collect())
            }
            Images::Files(files) => {
                let x = files[range.clone()]
                    .par_iter()
                    .map(|(p, _)| Ok(input(&gen_runtime::imageio::load_rgb(p)?.0)))
                    .collect::<Result<Vec<_>>>()?;
                (x, files[range].iter().map(|(_, g)| *g).collect())
            }
        })
    }
}

/// The images of `--data` and the group names.
fn open_data(spec: &str, global: bool) -> Result<(Images, Vec<String>)> {
    if let Some(split) = spec.strip_prefix("fmnist:") {
        let split = match split {
            "train" => "train",
            "test" | "t10k" => "t10k",
            other => bail!("--data fmnist:{other}: expected fmnist:train or fmnist:test"),
        };
        let ds = FashionMnist::load(Path::new(DEFAULT_DIR), split)?;
        let names = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
        return Ok((Images::Fmnist(ds), names));
    }
    let root = Path::new(spec);
    let (files, _) = list_images(root)?;
    if global {
        return Ok((Images::Files(files.into_iter().map(|p| (p, 0)).collect()), vec!["all".into()]));
    }
    let Some((labels, names)) = super::datasets::folder_classes(root, &files)? else {
        bail!("--data {spec}: --per-class needs one subfolder per class (ImageFolder layout); use --global for unlabeled images");
    };
    let labelled = files.into_iter().zip(labels).map(|(p, g)| (p, g as usize)).collect();
    Ok((Images::Files(labelled), names))
}

/// The feature extractor of `--encoder`.
enum Net {
    Classifier(Classifier),
    Clip(ClipVision),
}

impl Net {
    fn dim(&self) -> usize {
        match self {
            Net::Classifier(c) => 2 * c.config.width,
            Net::Clip(c) => c.config.output_dim,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Net::Classifier(_) => "fmnist-classifier",
            Net::Clip(_) => "clip-vit",
        }
    }

    /// Feature rows [n · cells, dim] of images `range` (image, y, x order) and their groups.
    fn features(
        &self,
        images: &Images,
        range: std::ops::Range<usize>,
        pool: usize,
        dev: &Device,
    ) -> Result<(Vec<f32>, Vec<usize>, usize)> {
        let (rows, labels, n) = match self {
            Net::Classifier(model) => {
                let (x, labels) = images.inputs(range)?;
                let map = model.feature_map(&batch(&x, dev)?)?;
                let map = if pool > 1 { map.avg_pool2d(pool)? } else { map };
                let (n, _, h, w) = map.dims4()?;
                if h == 0 || w == 0 {
                    bail!("--pool {pool}: the 7×7 feature map has no cell left after pooling");
                }
                (map.permute((0, 2, 3, 1))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?, labels, n)
            }
            Net::Clip(model) => {
                let (imgs, labels) = images.rgb(range)?;
                let x = clip_batch(&imgs, model.config.image_size, dev)?;
                let grid = model.config.image_size / model.config.patch;
                if pool > grid {
                    bail!("--pool {pool}: CLIP's {grid}×{grid} token grid has no cell left after pooling");
                }
                let n = imgs.len();
                (model.pooled_features(&x, pool)?.flatten_all()?.to_vec1::<f32>()?, labels, n)
            }
        };
        Ok((rows, labels, n))
    }
}

/// The patch feature vectors of every image, per group: [n, dim] rows.
fn extract(
    net: &Net,
    images: &Images,
    groups: usize,
    pool: usize,
    a: &InitCodebookArgs,
    dev: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); groups];
    let bar = progress::bar(images.len() as u64, "features", a.run.quiet);
    let d = net.dim();
    let mut start = 0;
    while start < images.len() {
        let end = (start + a.run.batch_size).min(images.len());
        let (rows, labels, n) = net.features(images, start..end, pool, dev)?;
        let per = rows.len() / (n.max(1) * d);
        for (i, &g) in labels.iter().enumerate().take(n) {
            let group = if groups == 1 { 0 } else { g };
            out[group].extend_from_slice(&rows[i * per * d..(i + 1) * per * d]);
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(out)
}

/// At most `max` of the `features.len() / d` rows, drawn without replacement, kept in their order.
fn subsample(features: Vec<f32>, d: usize, max: usize, rng: &mut Rng) -> Vec<f32> {
    let n = features.len() / d;
    if n <= max {
        return features;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..max {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut keep = idx[..max].to_vec();
    keep.sort_unstable();
    keep.iter().flat_map(|&i| features[i * d..(i + 1) * d].iter().copied()).collect()
}

pub fn run(a: InitCodebookArgs) -> Result<()> {
    let (dev, _) = a.run.open()?;
    let net = match a.encoder {
        Encoder::FmnistClassifier => Net::Classifier(load_classifier(&a.classifier, &dev)?),
        Encoder::Clip => Net::Clip(load_clip_vision(&a.clip, &dev)?),
    };
    let pool = a.pool.unwrap_or(if a.encoder == Encoder::Clip { 4 } else { 1 });
    let (mut images, names) = open_data(&a.data, a.global)?;
    if let Some(n) = a.count {
        images.truncate(n);
    }
    if images.len() == 0 {
        bail!("--data {}: no images", a.data);
    }
    let names = if a.global { vec!["all".to_string()] } else { names };
    let dim = net.dim();
    let t0 = Instant::now();
    let features = extract(&net, &images, names.len(), pool, &a, &dev)?;
    let extract_s = t0.elapsed().as_secs_f64();
    let mut rng = Rng::new(a.seed ^ 0x5eed);
    let groups: Vec<Group> = names
        .iter()
        .zip(features)
        .map(|(name, f)| {
            let features = match a.max_points {
                Some(max) => subsample(f, dim, max, &mut rng),
                None => f,
            };
            Group { name: name.clone(), features }
        })
        .collect();
    if let Some(empty) = groups.iter().find(|g| g.features.is_empty()) {
        bail!("--data {}: class '{}' has no images", a.data, empty.name);
    }
    let cfg = KMeansConfig { k: 0, max_iter: a.max_iter, tol: a.tol, seed: a.seed };
    let bar = progress::bar(groups.len() as u64, "k-means", a.run.quiet);
    let t1 = Instant::now();
    let mut current = usize::MAX;
    let grouping = if a.global { "global" } else { "per-class" };
    let codebook = build(&groups, dim, a.size, &cfg, net.name(), grouping, |g, round| {
        if g != current {
            if current != usize::MAX {
                bar.inc(1);
            }
            current = g;
        }
        bar.set_message(format!(
            "{}: round {}, inertia {:.4e}, {} moved",
            groups[g].name, round.iteration, round.inertia, round.moved
        ));
    })
    .with_context(|| format!("--size {}", a.size))?;
    bar.finish_and_clear();
    let kmeans_s = t1.elapsed().as_secs_f64();
    codebook.write(&a.out)?;
    let not_converged = codebook.info.groups.iter().filter(|g| !g.converged).count();
    println!(
        "wrote {}: {} × {} codebook ({} {} × ~{} centres from {} features; features {:.1} s, k-means {:.1} s{})",
        a.out.display(),
        codebook.size(),
        dim,
        codebook.info.groups.len(),
        if a.global { "group" } else { "classes" },
        a.size / codebook.info.groups.len(),
        codebook.info.encoder,
        extract_s,
        kmeans_s,
        if not_converged > 0 {
            format!("; {not_converged} groups stopped at --max-iter {}", a.max_iter)
        } else {
            String::new()
        }
    );
    Ok(())
}
