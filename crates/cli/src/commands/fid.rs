//! `gen fid`: the Fréchet Inception Distance between two sets of images or statistics, exactly as
//! pytorch-fid computes it; or `--save-stats` for one set.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gen_eval::features::{list_images, load_inception, statistics, ImageSource, INCEPTION_FILE};
use gen_eval::preprocess::Protocol;
use gen_eval::stats_file::{npz_kind, read_image_batch, read_stats, write_stats, NpzKind};
use gen_eval::{frechet_distance, FidInception, FrechetOptions, Gaussian, Tap};
use gen_runtime::progress;

use crate::args::DeviceArgs;

#[derive(Args)]
pub struct FidArgs {
    /// The two sides: image folders (recursive; PNG and JPEG), statistics files (`.npz` with mu and
    /// sigma: pytorch-fid, clean-fid, ADM reference batches) or ADM sample batches (`.npz` arr_0).
    /// With --save-stats, one side.
    #[arg(required = true, num_args = 1..=2)]
    pub inputs: Vec<PathBuf>,
    /// The protocol: pytorch-fid (bilinear resize to 299) or clean (clean-fid's PIL bicubic resize); both
    /// feed the FID Inception.
    #[arg(long, value_enum, default_value_t = Mode::PytorchFid)]
    pub mode: Mode,
    /// pytorch-fid's feature layer: 64, 192, 768 or 2048 (pool3).
    #[arg(long, default_value_t = 2048)]
    pub dims: usize,
    /// The FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a safetensors copy.
    #[arg(long, default_value = INCEPTION_FILE)]
    pub inception: PathBuf,
    /// Write the statistics of the one input (pytorch-fid's compressed npz: mu, sigma in f64) instead.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Decimals printed.
    #[arg(long, default_value_t = 4)]
    pub digits: usize,
    #[command(flatten)]
    pub run: DeviceArgs,
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

/// One side's statistics and how many images made them (None for a statistics file).
struct Side {
    gaussian: Gaussian,
    images: Option<usize>,
}

pub fn run(a: FidArgs) -> Result<()> {
    let tap = Tap::from_dims(a.dims).with_context(|| format!("--dims {}: expected 64, 192, 768 or 2048", a.dims))?;
    match (&a.save_stats, a.inputs.len()) {
        (Some(_), 2) => bail!("--save-stats writes the statistics of one input; give one folder"),
        (None, 1) => bail!("give two inputs to compare (or --save-stats OUT.npz with one)"),
        _ => {}
    }
    let (dev, _) = a.run.open()?;
    let mut net: Option<FidInception> = None;
    let mut sides = Vec::new();
    for input in &a.inputs {
        sides.push(side(input, &a, tap, &dev, &mut net)?);
    }
    if let Some(out) = &a.save_stats {
        // clean-fid keeps mu in f32 (its features are f32); pytorch-fid writes both in f64
        write_stats(out, &sides[0].gaussian, a.mode == Mode::Clean)?;
        if !a.run.quiet {
            eprintln!("wrote the statistics of {} ({} dims) to {}", a.inputs[0].display(), a.dims, out.display());
        }
        return Ok(());
    }
    let (x, y) = (&sides[0], &sides[1]);
    let fid = frechet_distance(&x.gaussian, &y.gaussian, FrechetOptions::default())
        .with_context(|| format!("{} vs {}", a.inputs[0].display(), a.inputs[1].display()))?;
    let count = |s: &Side| s.images.map_or("statistics".to_string(), |n| format!("{n} images"));
    println!(
        "FID {fid:.prec$} (mode {}, inception {}-d, {} / {})",
        a.mode.protocol().name(),
        a.dims,
        count(x),
        count(y),
        prec = a.digits
    );
    Ok(())
}

/// The statistics of one input: read from a file, or computed from its images.
fn side(path: &Path, a: &FidArgs, tap: Tap, dev: &Device, net: &mut Option<FidInception>) -> Result<Side> {
    if !path.exists() {
        bail!("{}: no such folder or file", path.display());
    }
    let batch: Vec<gen_runtime::imageio::RgbImage>;
    let files: Vec<PathBuf>;
    let source = if path.is_dir() {
        let (found, skipped) = list_images(path)?;
        if skipped > 0 && !a.run.quiet {
            eprintln!("note: {}: skipped {skipped} files that are not PNG or JPEG images", path.display());
        }
        files = found;
        ImageSource::Files(&files)
    } else if npz_kind(path)? == NpzKind::Stats {
        let gaussian = read_stats(path)?;
        if gaussian.dims() != a.dims {
            bail!("{}: the statistics have {} dimensions, --dims is {}", path.display(), gaussian.dims(), a.dims);
        }
        return Ok(Side { gaussian, images: None });
    } else {
        batch = read_image_batch(path)?;
        ImageSource::Memory(&batch)
    };
    let n = source.len();
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
    if net.is_none() {
        *net = Some(load_inception(&a.inception, dev)?);
    }
    let model = net.as_ref().context("the Inception network")?;
    let pb = progress::bar(n as u64, "fid features", a.run.quiet);
    let acc =
        statistics(model, &source, a.mode.protocol(), tap, a.run.batch_size, dev, |done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let gaussian = acc.finish().context("fewer than 2 images")?;
    Ok(Side { gaussian, images: Some(n) })
}
