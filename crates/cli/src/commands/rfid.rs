//! `gen rfid`: a tokenizer's reconstruction quality in one table — rFID (inputs vs reconstructions, in the
//! chosen FID protocol), PSNR and SSIM (RGB and Y), LPIPS (when the VGG16 and LPIPS weights are given) and
//! codebook utilisation — as VQGAN-LC's `eval_reconstruction.py` reports them.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use gen_eval::features::{extract, load_inception, ImageSource, INCEPTION_FILE};
use gen_eval::lpips::{Lpips, VQGAN_LC_EPS};
use gen_eval::quality::{psnr, ssim, Channels};
use gen_eval::{frechet_distance, FrechetOptions, Tap};
use gen_nn::Weights;
use gen_runtime::imageio::{self, RgbImage};
use gen_runtime::progress;

use super::datasets::{Data, DataArgs};
use super::fid::{Features, Mode};
use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct RfidArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    #[command(flatten)]
    pub images: DataArgs,
    /// FID protocol for rFID (VQGAN-LC reports clean-fid's "clean").
    #[arg(long, value_enum, default_value_t = Mode::Clean)]
    pub mode: Mode,
    /// The rFID's feature space: the FID Inception, or the shipped Fashion-MNIST classifier's 128-d
    /// penultimate layer (the demo domain; no download).
    #[arg(long, value_enum, default_value_t = Features::Inception)]
    pub features: Features,
    /// The classifier model folder (`--features fmnist-classifier`).
    #[arg(long, default_value = "models/fmnist/classifier")]
    pub classifier: PathBuf,
    /// The FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or a safetensors copy).
    #[arg(long, default_value = INCEPTION_FILE)]
    pub inception: PathBuf,
    /// torchvision VGG16 weights (`vgg16-397923af.pth`) for LPIPS; LPIPS is skipped without them.
    #[arg(long, requires = "lpips_lin")]
    pub lpips_vgg: Option<PathBuf>,
    /// LPIPS v0.1 linear layers (`vgg.pth` of the lpips package, or VQGAN-LC's `models/vgg.pth`).
    #[arg(long, requires = "lpips_vgg")]
    pub lpips_lin: Option<PathBuf>,
}

/// The rFID's feature network.
enum Net {
    Inception(Box<gen_eval::FidInception>),
    Classifier(gen_eval::classifier::Classifier),
}

/// Running sums of the per-image metrics.
#[derive(Default)]
struct Sums {
    psnr: f64,
    psnr_y: f64,
    ssim: f64,
    ssim_y: f64,
    lpips: f64,
    n: usize,
}

pub fn run(a: RfidArgs) -> Result<()> {
    let data = Data::open(&a.images.data, a.images.count, a.model.run.quiet)?;
    let n = data.len();
    if n < 2 {
        bail!("--data {}: {n} image; rFID needs at least 2", a.images.data);
    }
    let (model, dev, dtype) = a.model.open()?;
    let size = model.config.resolution;
    let vocab = model.quantizer.codebook_size()?;
    let net = match a.features {
        Features::Inception => Net::Inception(Box::new(load_inception(&a.inception, &dev)?)),
        Features::FmnistClassifier => Net::Classifier(gen_eval::classifier::load_classifier(&a.classifier, &dev)?),
    };
    let dims = match &net {
        Net::Inception(_) => 2048,
        Net::Classifier(c) => c.config.features,
    };
    let lpips = match (&a.lpips_vgg, &a.lpips_lin) {
        (Some(vgg), Some(lin)) => Some(load_lpips(vgg, lin, &dev)?),
        _ => None,
    };
    let (quiet, batch) = (a.model.run.quiet, a.model.run.batch_size);
    let protocol = a.mode.protocol();
    let mut real = gen_eval::StatsAccumulator::new(dims);
    let mut fake = gen_eval::StatsAccumulator::new(dims);
    let (mut used, mut sums) = (HashSet::new(), Sums::default());
    let pb = progress::bar(n as u64, "rfid", quiet);
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let inputs: Vec<RgbImage> =
            (start..end).map(|i| data.image(i).map(|img| imageio::preprocess(&img, size))).collect::<Result<_>>()?;
        let x = Tensor::stack(
            &inputs.iter().map(|img| imageio::to_tensor(img, &dev)).collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?
        .to_dtype(dtype)?;
        let (xrec, ids) = model.reconstruct(&x)?;
        used.extend(ids.flatten_all()?.to_vec1::<u32>()?);
        let recons: Vec<RgbImage> =
            (0..inputs.len()).map(|i| imageio::from_tensor(&xrec.get(i)?)).collect::<candle_core::Result<_>>()?;
        for (x_img, r_img) in inputs.iter().zip(&recons) {
            sums.psnr += psnr(x_img, r_img, Channels::Rgb).map_err(anyhow::Error::msg)?;
            sums.psnr_y += psnr(x_img, r_img, Channels::Y).map_err(anyhow::Error::msg)?;
            sums.ssim += ssim(x_img, r_img, Channels::Rgb).map_err(anyhow::Error::msg)?;
            sums.ssim_y += ssim(x_img, r_img, Channels::Y).map_err(anyhow::Error::msg)?;
            sums.n += 1;
        }
        if let Some(net) = &lpips {
            let d = net.forward(&x.to_dtype(DType::F32)?, &xrec.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?)?.dist;
            sums.lpips += d.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        for (acc, images) in [(&mut real, &inputs), (&mut fake, &recons)] {
            let source = ImageSource::Memory(images);
            match &net {
                Net::Inception(m) => extract(m, &source, protocol, Tap::Dims2048, batch, &dev, |f, _| acc.add(f))?,
                Net::Classifier(c) => {
                    gen_eval::features::extract_classifier(c, &source, batch, &dev, |f, _| acc.add(f))?
                }
            }
        }
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    let (gr, gf) = (real.finish().context("statistics")?, fake.finish().context("statistics")?);
    if n <= dims && !quiet {
        eprintln!("warning: {n} images for {dims} dimensions: the covariances are singular; rFID is computed anyway");
    }
    let rfid = frechet_distance(&gr, &gf, FrechetOptions::default())?;
    let k = sums.n as f64;
    println!("| metric | value |");
    println!("|---|---|");
    match &net {
        Net::Inception(_) => println!("| rFID ({}, inception 2048-d) | {rfid:.4} |", protocol.name()),
        Net::Classifier(_) => println!("| rFID (fmnist-classifier {dims}-d) | {rfid:.4} |"),
    }
    println!("| PSNR RGB / Y (dB) | {:.4} / {:.4} |", sums.psnr / k, sums.psnr_y / k);
    println!("| SSIM RGB / Y | {:.4} / {:.4} |", sums.ssim / k, sums.ssim_y / k);
    match lpips {
        Some(_) => println!("| LPIPS (VGG, v0.1) | {:.4} |", sums.lpips / k),
        None => println!("| LPIPS | – (give --lpips-vgg and --lpips-lin) |"),
    }
    println!(
        "| codebook utilisation | {:.2}% ({} of {vocab} codes) |",
        100.0 * used.len() as f64 / vocab as f64,
        used.len()
    );
    println!("| images | {n} at {size}² |");
    Ok(())
}

/// LPIPS from torchvision's VGG16 (`.pth` or safetensors) and the v0.1 linear layers.
pub(crate) fn load_lpips(vgg: &std::path::Path, lin: &std::path::Path, dev: &Device) -> Result<Lpips> {
    let read = |p: &std::path::Path| -> Result<std::collections::HashMap<String, Tensor>> {
        if !p.exists() {
            bail!("{}: not found (VGG16: torchvision's vgg16-397923af.pth; lins: the lpips package's weights/v0.1/vgg.pth)", p.display());
        }
        Ok(if p.extension().is_some_and(|e| e == "safetensors") {
            gen_runtime::io::load_safetensors(p, &Device::Cpu)?
        } else {
            gen_runtime::pth::load_state_dict(p, None)?
        })
    };
    let trunk = Weights::new(vgg.display().to_string(), read(vgg)?);
    let lins = Weights::new(lin.display().to_string(), read(lin)?);
    Ok(Lpips::new(trunk.var_builder(DType::F32, dev), lins.var_builder(DType::F32, dev), VQGAN_LC_EPS)?)
}
