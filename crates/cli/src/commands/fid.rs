//! `gen fid`: the Fréchet Inception Distance between two sets of images, statistics or features, exactly
//! as pytorch-fid (or clean-fid's "clean" mode) computes it; `--save-stats` / `--save-features` for one
//! set; `--part i/n` and `--merge` to spread feature extraction over machines.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gen_eval::classifier::{load_classifier, Classifier};
use gen_eval::features::{
    extract, extract_classifier, extract_spatial, list_images, load_inception, ImageSource, INCEPTION_FILE,
};
use gen_eval::features_file::{merge_parts, part_range, FeaturesFile};
use gen_eval::preprocess::Protocol;
use gen_eval::stats_file::{npz_kind, read_image_batch, read_stats, write_stats, NpzKind};
use gen_eval::{frechet_distance, FidInception, FrechetOptions, Gaussian, StatsAccumulator, Tap};
use gen_runtime::progress;

use crate::args::DeviceArgs;

#[derive(Args)]
pub struct FidArgs {
    /// The two sides: image folders (recursive; PNG and JPEG), statistics files (`.npz` with mu and
    /// sigma: pytorch-fid, clean-fid, ADM reference batches), ADM sample batches (`.npz` arr_0) or
    /// feature files (`.safetensors` from --save-features). With --save-stats / --save-features, one
    /// side; with --merge, the feature files of the parts.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The protocol: pytorch-fid (bilinear resize to 299) or clean (clean-fid's PIL bicubic resize); both
    /// feed the FID Inception.
    #[arg(long, value_enum, default_value_t = Mode::PytorchFid)]
    pub mode: Mode,
    /// The feature space: the FID Inception (a user-supplied download), or the Fashion-MNIST classifier
    /// shipped in models/fmnist/classifier (its 128-d penultimate layer; no download).
    #[arg(long, value_enum, default_value_t = Features::Inception)]
    pub features: Features,
    /// The classifier model folder for --features fmnist-classifier.
    #[arg(long, default_value = "models/fmnist/classifier")]
    pub classifier: PathBuf,
    /// pytorch-fid's feature layer: 64, 192, 768 or 2048 (pool3). With --features fmnist-classifier the
    /// classifier's width is used.
    #[arg(long, default_value_t = 2048)]
    pub dims: usize,
    /// The FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a safetensors copy.
    #[arg(long, default_value = INCEPTION_FILE)]
    pub inception: PathBuf,
    /// Write the statistics of the one input (a compressed npz: pytorch-fid's layout, or clean-fid's with
    /// --mode clean) instead of comparing.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Write the raw features of the one input (or of its --part) as a features file.
    #[arg(long)]
    pub save_features: Option<PathBuf>,
    /// Extract only part i of n (0-based) of the input folder's sorted images; needs --save-features.
    #[arg(long, value_parser = parse_part)]
    pub part: Option<(usize, usize)>,
    /// The inputs are the feature files of the parts of one set: join them (then --save-stats or
    /// --save-features).
    #[arg(long)]
    pub merge: bool,
    /// Also print improved precision and recall (Kynkäänniemi et al., k = 3) of the second input
    /// against the first.
    #[arg(long)]
    pub precision_recall: bool,
    /// Also print sFID (the ADM evaluator's spatial FID: the first 7 channels of Mixed_6d's 1×1 branch,
    /// TF's `mixed_6/conv`); ADM reference batches give their `mu_s`/`sigma_s`.
    #[arg(long)]
    pub sfid: bool,
    /// Print the Inception Score (10 splits, the Inception's 1008-way fc) of the one input instead.
    #[arg(long)]
    pub inception_score: bool,
    /// Decimals printed.
    #[arg(long, default_value_t = 4)]
    pub digits: usize,
    #[command(flatten)]
    pub run: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Features {
    /// pytorch-fid's FID Inception (`--inception`).
    Inception,
    /// The shipped Fashion-MNIST classifier (`--classifier`).
    FmnistClassifier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// pytorch-fid 0.3.0: ToTensor, bilinear to 299 (align_corners=False), 2x − 1, pool3 of the FID Inception.
    PytorchFid,
    /// clean-fid 0.1.35 "clean": PIL bicubic to 299 per channel (antialiased), clip, (x − 128)/128; into
    /// the FID Inception (clean-fid's own TorchScript network is a separate download, see README).
    Clean,
}

impl Mode {
    pub fn protocol(self) -> Protocol {
        match self {
            Mode::PytorchFid => Protocol::PytorchFid,
            Mode::Clean => Protocol::Clean,
        }
    }
}

/// `--part i/n`.
fn parse_part(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not i/n with 0 ≤ i < n (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// One side's statistics, how many images made them (None for a statistics file), and the raw
/// features when precision / recall needs them.
struct Side {
    gaussian: Gaussian,
    images: Option<usize>,
    features: Option<Vec<f32>>,
    /// The sFID statistics, with --sfid.
    spatial: Option<Gaussian>,
}

pub fn run(mut a: FidArgs) -> Result<()> {
    if a.features == Features::FmnistClassifier {
        // the classifier's own width; its preprocessing (gray, 28×28) replaces the protocol's
        a.dims = gen_runtime::ModelDir::open(&a.classifier, gen_runtime::ModelKind::Classifier)
            .and_then(|d| d.architecture::<gen_eval::classifier::ClassifierConfig>())
            .map(|c| c.features)?;
    }
    let tap = match a.features {
        Features::Inception => {
            Tap::from_dims(a.dims).with_context(|| format!("--dims {}: expected 64, 192, 768 or 2048", a.dims))?
        }
        Features::FmnistClassifier => Tap::Dims2048, // unused
    };
    let writes = a.save_stats.is_some() || a.save_features.is_some();
    if a.part.is_some() && a.save_features.is_none() {
        bail!("--part writes the features of a slice: give --save-features OUT.safetensors");
    }
    if a.merge {
        return merge(&a);
    }
    if a.inception_score {
        return inception_score(&a);
    }
    if a.sfid && (a.features != Features::Inception || a.dims != 2048) {
        bail!("--sfid goes with the Inception's pool3 (--features inception --dims 2048)");
    }
    match (writes, a.inputs.len()) {
        (true, n) if n != 1 => bail!("--save-stats / --save-features write one input; {n} were given"),
        (false, n) if n != 2 => bail!("give two inputs to compare (or --save-stats OUT.npz with one); {n} were given"),
        _ => {}
    }
    let (dev, _) = a.run.open()?;
    let mut net: Option<Extractor> = None;
    if let Some(out) = &a.save_features {
        let file = features_of(&a.inputs[0], &a, tap, &dev, &mut net)?;
        file.write(out, a.part.unwrap_or((0, 1)))?;
        if !a.run.quiet {
            eprintln!(
                "wrote the features of images {}..{} of {} to {}",
                file.start,
                file.start + file.rows(),
                file.total,
                out.display()
            );
        }
        return Ok(());
    }
    let mut sides = Vec::new();
    for input in &a.inputs {
        sides.push(side(input, &a, tap, &dev, &mut net)?);
    }
    if let Some(out) = &a.save_stats {
        save_stats(&a, out, &sides[0].gaussian)?;
        return Ok(());
    }
    let (x, y) = (&sides[0], &sides[1]);
    let fid = frechet_distance(&x.gaussian, &y.gaussian, FrechetOptions::default())
        .with_context(|| format!("{} vs {}", a.inputs[0].display(), a.inputs[1].display()))?;
    let count = |s: &Side| s.images.map_or("statistics".to_string(), |n| format!("{n} images"));
    println!("FID {fid:.prec$} ({}, {} / {})", describe(&a), count(x), count(y), prec = a.digits);
    if a.sfid {
        let (Some(sx), Some(sy)) = (&x.spatial, &y.spatial) else { bail!("--sfid: a side has no spatial statistics") };
        let sfid = frechet_distance(sx, sy, FrechetOptions::default()).context("sFID")?;
        println!(
            "sFID {sfid:.prec$} (mode {}, mixed_6/conv {}-d)",
            a.mode.protocol().name(),
            sx.dims(),
            prec = a.digits
        );
    }
    if a.precision_recall {
        let (Some(fx), Some(fy)) = (&x.features, &y.features) else {
            bail!("--precision-recall needs features: give image folders or feature files, not statistics");
        };
        let (p, r) = gen_eval::precision_recall::precision_recall(fx, fy, a.dims, 3).map_err(anyhow::Error::msg)?;
        println!("precision {p:.prec$}, recall {r:.prec$} (k = 3, {} against {})", count(y), count(x), prec = a.digits);
    }
    Ok(())
}

/// `--inception-score`: IS of the one input (a folder or an ADM sample batch).
fn inception_score(a: &FidArgs) -> Result<()> {
    if a.inputs.len() != 1 || a.features != Features::Inception {
        bail!("--inception-score takes one input of images and the Inception features");
    }
    let path = &a.inputs[0];
    if !path.exists() {
        bail!("{}: no such folder or file", path.display());
    }
    let (dev, _) = a.run.open()?;
    let (images, _, n) = images_of(path, a)?;
    let model = load_inception(&a.inception, &dev)?;
    let source = images.source();
    let pb = progress::bar(n as u64, "inception score", a.run.quiet);
    let mut logits = Vec::with_capacity(n * 1008);
    gen_eval::features::extract_logits(&model, &source, a.mode.protocol(), a.run.batch_size, &dev, |l, done| {
        logits.extend_from_slice(l);
        pb.set_position(done as u64);
    })
    .with_context(|| format!("{}", path.display()))?;
    pb.finish_and_clear();
    let (mean, std) = gen_eval::inception_score::inception_score(&logits, 1008, 10).map_err(anyhow::Error::msg)?;
    println!(
        "IS {mean:.prec$} ± {std:.prec$} (mode {}, {n} images, 10 splits)",
        a.mode.protocol().name(),
        prec = a.digits
    );
    Ok(())
}

/// How the features were made, as printed: `mode pytorch-fid, inception 2048-d`.
fn describe(a: &FidArgs) -> String {
    match a.features {
        Features::Inception => format!("mode {}, inception {}-d", a.mode.protocol().name(), a.dims),
        Features::FmnistClassifier => format!("features fmnist-classifier {}-d", a.dims),
    }
}

/// The feature space's name in feature files.
fn space_name(a: &FidArgs) -> String {
    match a.features {
        Features::Inception => a.mode.protocol().name().to_string(),
        Features::FmnistClassifier => "fmnist-classifier".to_string(),
    }
}

fn save_stats(a: &FidArgs, out: &Path, g: &Gaussian) -> Result<()> {
    // clean-fid keeps mu in f32 (its features are f32); pytorch-fid writes both in f64
    write_stats(out, g, a.mode == Mode::Clean)?;
    if !a.run.quiet {
        eprintln!("wrote the statistics ({} dims) to {}", g.dims(), out.display());
    }
    Ok(())
}

/// `--merge`: the parts' feature files joined in order, written as statistics or features.
fn merge(a: &FidArgs) -> Result<()> {
    let mut parts = a.inputs.iter().map(|p| Ok((p.clone(), FeaturesFile::read(p)?))).collect::<Result<Vec<_>>>()?;
    let merged = merge_parts(&mut parts)?;
    if merged.dims != a.dims {
        bail!("--merge: the parts have {} dimensions, --dims is {}", merged.dims, a.dims);
    }
    match (&a.save_stats, &a.save_features) {
        (None, None) => bail!("--merge joins feature files: give --save-stats OUT.npz or --save-features OUT"),
        (stats, features) => {
            if let Some(out) = features {
                merged.write(out, (0, 1))?;
            }
            if let Some(out) = stats {
                save_stats(a, out, &gaussian_of(&merged, &a.inputs[0])?)?;
            }
        }
    }
    Ok(())
}

/// The statistics of a whole set's features.
fn gaussian_of(f: &FeaturesFile, path: &Path) -> Result<Gaussian> {
    let mut acc = StatsAccumulator::new(f.dims);
    acc.add(&f.features);
    acc.finish().with_context(|| format!("{}: fewer than 2 feature vectors", path.display()))
}

/// The images of a folder (the `--part` of it) or of an ADM sample batch, and the set's size.
enum Images {
    Files(Vec<PathBuf>),
    Memory(Vec<gen_runtime::imageio::RgbImage>),
}

impl Images {
    fn source(&self) -> ImageSource<'_> {
        match self {
            Images::Files(f) => ImageSource::Files(f),
            Images::Memory(m) => ImageSource::Memory(m),
        }
    }
}

fn images_of(path: &Path, a: &FidArgs) -> Result<(Images, usize, usize)> {
    let (images, total) = if path.is_dir() {
        let (found, skipped) = list_images(path)?;
        if skipped > 0 && !a.run.quiet {
            eprintln!("note: {}: skipped {skipped} files that are not PNG or JPEG images", path.display());
        }
        let total = found.len();
        (Images::Files(found), total)
    } else {
        let batch = read_image_batch(path)?;
        let total = batch.len();
        (Images::Memory(batch), total)
    };
    let range = a.part.map_or(0..total, |(i, n)| part_range(i, n, total));
    let start = range.start;
    let images = match images {
        Images::Files(f) => Images::Files(f[range].to_vec()),
        Images::Memory(m) => Images::Memory(m[range].to_vec()),
    };
    Ok((images, start, total))
}

/// The feature network of `a` (loaded once, on first use).
fn extractor<'n>(net: &'n mut Option<Extractor>, a: &FidArgs, dev: &Device) -> Result<&'n Extractor> {
    if net.is_none() {
        *net = Some(match a.features {
            Features::Inception => Extractor::Inception(Box::new(load_inception(&a.inception, dev)?)),
            Features::FmnistClassifier => Extractor::Classifier(load_classifier(&a.classifier, dev)?),
        });
    }
    net.as_ref().context("the feature network")
}

/// Runs the feature network over images, with a progress bar: `on_batch` gets each batch's features and,
/// with `--sfid`, its spatial features (empty otherwise).
fn run_features(
    images: &Images,
    path: &Path,
    a: &FidArgs,
    tap: Tap,
    dev: &Device,
    net: &mut Option<Extractor>,
    mut on_batch: impl FnMut(&[f32], &[f32]),
) -> Result<()> {
    let source = images.source();
    let pb = progress::bar(source.len() as u64, "fid features", a.run.quiet);
    let (protocol, batch) = (a.mode.protocol(), a.run.batch_size);
    match extractor(net, a, dev)? {
        Extractor::Inception(m) if a.sfid => extract_spatial(m, &source, protocol, batch, dev, |f, s, done| {
            on_batch(f, s);
            pb.set_position(done as u64);
        }),
        Extractor::Inception(m) => extract(m, &source, protocol, tap, batch, dev, |f, done| {
            on_batch(f, &[]);
            pb.set_position(done as u64);
        }),
        Extractor::Classifier(m) => extract_classifier(m, &source, batch, dev, |f, done| {
            on_batch(f, &[]);
            pb.set_position(done as u64);
        }),
    }
    .with_context(|| format!("{}", path.display()))?;
    pb.finish_and_clear();
    Ok(())
}

/// The network features come from.
enum Extractor {
    Inception(Box<FidInception>),
    Classifier(Classifier),
}

/// `--save-features`: the raw features of the input (or of its part).
fn features_of(path: &Path, a: &FidArgs, tap: Tap, dev: &Device, net: &mut Option<Extractor>) -> Result<FeaturesFile> {
    if !path.exists() {
        bail!("{}: no such folder or file", path.display());
    }
    let (images, start, total) = images_of(path, a)?;
    let mut features = Vec::new();
    run_features(&images, path, a, tap, dev, net, |f, _| features.extend_from_slice(f))?;
    Ok(FeaturesFile { features, dims: a.dims, mode: space_name(a), start, total })
}

/// The statistics of one input: read from a file, or computed from its images or features.
fn side(path: &Path, a: &FidArgs, tap: Tap, dev: &Device, net: &mut Option<Extractor>) -> Result<Side> {
    if !path.exists() {
        bail!("{}: no such folder or file", path.display());
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let f = FeaturesFile::read(path)?;
        if f.dims != a.dims {
            bail!("{}: the features have {} dimensions, --dims is {}", path.display(), f.dims, a.dims);
        }
        if f.start != 0 || f.rows() != f.total {
            bail!(
                "{}: holds images {}..{} of {}: join the parts with --merge first",
                path.display(),
                f.start,
                f.start + f.rows(),
                f.total
            );
        }
        if a.sfid {
            bail!("{}: a features file holds no spatial features for --sfid", path.display());
        }
        let gaussian = gaussian_of(&f, path)?;
        return Ok(Side {
            gaussian,
            images: Some(f.rows()),
            features: a.precision_recall.then_some(f.features),
            spatial: None,
        });
    }
    if !path.is_dir() && npz_kind(path)? == NpzKind::Stats {
        let gaussian = read_stats(path)?;
        if gaussian.dims() != a.dims {
            bail!("{}: the statistics have {} dimensions, --dims is {}", path.display(), gaussian.dims(), a.dims);
        }
        let spatial = if a.sfid { Some(gen_eval::stats_file::read_spatial_stats(path)?) } else { None };
        return Ok(Side { gaussian, images: None, features: None, spatial });
    }
    let (images, _, n) = images_of(path, a)?;
    if n < 2 {
        bail!("{}: {n} image; the covariance needs at least 2", path.display());
    }
    if n <= a.dims && !a.run.quiet {
        eprintln!(
            "warning: {}: {n} images for {} dimensions: the covariance is singular (rank ≤ {}); pytorch-fid computes \
             the FID anyway, and so do we",
            path.display(),
            a.dims,
            n - 1
        );
    }
    let mut acc = StatsAccumulator::new(a.dims);
    let mut kept = Vec::new();
    let mut spatial: Option<StatsAccumulator> = None;
    run_features(&images, path, a, tap, dev, net, |f, s| {
        acc.add(f);
        if a.precision_recall {
            kept.extend_from_slice(f);
        }
        if !s.is_empty() {
            let d = s.len() / (f.len() / a.dims).max(1);
            spatial.get_or_insert_with(|| StatsAccumulator::new(d)).add(s);
        }
    })?;
    let gaussian = acc.finish().context("fewer than 2 images")?;
    let spatial = spatial.map(|s| s.finish().context("fewer than 2 images")).transpose()?;
    Ok(Side { gaussian, images: Some(n), features: a.precision_recall.then_some(kept), spatial })
}
