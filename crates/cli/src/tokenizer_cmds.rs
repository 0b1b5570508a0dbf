//! The tokenizer subcommands: reconstruct, encode, decode, convert.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use gen_runtime::imageio::{self, SourceMode};
use gen_runtime::{io, progress, DeviceSpec};
use gen_tokenizer::{load_tokenizer, read_weights, write_model_dir, VqModel};

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder (config.toml + model.safetensors) or an official VQGAN-LC `.pth` checkpoint.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Codebook for an official checkpoint (`codebook-100K.pth`, a bare [N, D] tensor).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// Image size the model works at (default: the model's own, 256 for official checkpoints).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// auto | cpu | cuda | cuda:<i>
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32 | f16 | bf16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// No progress bar, no device line.
    #[arg(long)]
    pub quiet: bool,
}

impl ModelArgs {
    fn open(&self) -> Result<(VqModel, Device, DType)> {
        let spec: DeviceSpec = self.device.parse()?;
        let dev = gen_runtime::open_device(spec, self.quiet)?;
        let dtype = gen_runtime::parse_dtype(&self.dtype)?;
        if dtype == DType::BF16 && dev.is_cpu() {
            bail!("--dtype bf16 is not supported on the CPU (Candle has no BF16 conv there); use f32 or f16");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let model = load_tokenizer(&self.tokenizer, self.codebook.as_deref(), self.resolution, dtype, &dev)?;
        Ok((model, dev, dtype))
    }
}

#[derive(Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input images (PNG or JPEG; gray and RGBA are converted to RGB).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for `<name>.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a grid PNG: the preprocessed inputs on the top row of each pair, reconstructions below.
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

#[derive(Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output safetensors file (`tokens U32 [N, h·w]`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the token ids, one line per image.
    #[arg(long)]
    pub print: bool,
}

#[derive(Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token file written by `gen encode` (or any safetensors with `tokens [N, h·w]`).
    pub tokens: PathBuf,
    /// Output folder for `00000.png`, …
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Official checkpoint (`vqgan_checkpoint-*.pth`).
    #[arg(long)]
    pub from: PathBuf,
    /// The codebook it was trained with (`codebook-100K.pth`).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// Output model folder.
    #[arg(long)]
    pub to: PathBuf,
    /// Training image size (default: the checkpoint's `args.image_size`, else 256).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Store only the projected codebook (a 100k × 768 raw codebook is 300 MB); such a folder can
    /// tokenize and decode but not train the projector.
    #[arg(long)]
    pub inference_only: bool,
}

/// Loads and preprocesses one batch of images as the official evaluation does: [B, 3, S, S].
/// Batches are loaded one at a time, so memory does not grow with the number of inputs.
fn load_batch(paths: &[PathBuf], size: usize, dev: &Device, dtype: DType, quiet: bool) -> Result<Tensor> {
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

fn out_name(input: &Path, out: &Path) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    out.join(format!("{stem}.png"))
}

pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let (model, dev, dtype) = a.model.open()?;
    let size = model.config.resolution;
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create folder", a.out.display()))?;
    let pb = progress::bar(a.inputs.len() as u64, "reconstruct", a.model.quiet);
    let (mut shown, mut recons) = (Vec::new(), Vec::new());
    for paths in a.inputs.chunks(a.model.batch_size) {
        let x = load_batch(paths, size, &dev, dtype, a.model.quiet)?;
        let (xrec, _) = model.reconstruct(&x)?;
        for (i, p) in paths.iter().enumerate() {
            let img = imageio::from_tensor(&xrec.get(i)?)?;
            imageio::save_png(&out_name(p, &a.out), &img)?;
            if a.grid.is_some() {
                shown.push(imageio::from_tensor(&x.get(i)?)?);
                recons.push(img);
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    if let Some(path) = &a.grid {
        // pairs of rows: up to 8 inputs, then their reconstructions
        let cols = shown.len().clamp(1, 8);
        let tiles: Vec<_> =
            shown.chunks(cols).zip(recons.chunks(cols)).flat_map(|(i, r)| i.iter().chain(r).cloned()).collect();
        let g = imageio::grid(&tiles, cols).context("reconstructions differ in size")?;
        imageio::save_png(path, &g)?;
    }
    if !a.model.quiet {
        eprintln!("wrote {} reconstructions to {}", a.inputs.len(), a.out.display());
    }
    Ok(())
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    if a.out.is_none() && !a.print {
        bail!("nothing to do: give --out FILE and/or --print");
    }
    let (model, dev, dtype) = a.model.open()?;
    let pb = progress::bar(a.inputs.len() as u64, "encode", a.model.quiet);
    let mut all = Vec::new();
    for paths in a.inputs.chunks(a.model.batch_size) {
        let q = model.encode(&load_batch(paths, model.config.resolution, &dev, dtype, a.model.quiet)?)?;
        all.push(q.indices.to_device(&Device::Cpu)?);
        pb.inc(paths.len() as u64);
    }
    pb.finish_and_clear();
    let tokens = Tensor::cat(&all, 0)?;
    if a.print {
        for (p, row) in a.inputs.iter().zip(tokens.to_vec2::<u32>()?) {
            let ids: Vec<String> = row.iter().map(u32::to_string).collect();
            println!("{}\t{}", p.display(), ids.join(" "));
        }
    }
    if let Some(out) = &a.out {
        let g = model.config.latent_size();
        let meta = HashMap::from([
            ("format".to_string(), "gen-tokens".to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("grid".to_string(), format!("{g},{g}")),
            ("vocab".to_string(), model.quantizer.codebook_size()?.to_string()),
        ]);
        io::save_safetensors(out, &[("tokens".to_string(), tokens)], Some(meta))?;
        if !a.model.quiet {
            eprintln!("wrote tokens [{}, {}] to {}", a.inputs.len(), g * g, out.display());
        }
    }
    Ok(())
}

pub fn decode(a: DecodeArgs) -> Result<()> {
    let (model, dev, _) = a.model.open()?;
    let file = io::load_safetensors(&a.tokens, &Device::Cpu)?;
    let tokens = file.get("tokens").with_context(|| format!("{}: no tensor named 'tokens'", a.tokens.display()))?;
    if tokens.rank() != 2 {
        bail!("{}: 'tokens' has shape {:?}, expected [N, h·w]", a.tokens.display(), tokens.dims());
    }
    let tokens = match tokens.dtype() {
        DType::U32 | DType::I64 | DType::U8 => tokens.to_dtype(DType::I64)?,
        d => bail!("{}: 'tokens' has dtype {d:?}, expected an integer type", a.tokens.display()),
    };
    let ids: Vec<i64> = tokens.flatten_all()?.to_vec1()?;
    let vocab = model.quantizer.codebook_size()?;
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= vocab) {
        bail!("{}: token {bad} at position {i} is out of range for a codebook of {vocab} entries", a.tokens.display());
    }
    let grid = io::safetensors_metadata(&a.tokens)?.get("grid").and_then(|g| {
        let (h, w) = g.split_once(',')?;
        Some((h.trim().parse().ok()?, w.trim().parse().ok()?))
    });
    let tokens = tokens.to_dtype(DType::U32)?.to_device(&dev)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create folder", a.out.display()))?;
    let n = tokens.dim(0)?;
    let pb = progress::bar(n as u64, "decode", a.model.quiet);
    let mut start = 0;
    while start < n {
        let len = a.model.batch_size.min(n - start);
        let imgs = model.decode_indices(&tokens.narrow(0, start, len)?, grid)?;
        for i in 0..len {
            let img = imageio::from_tensor(&imgs.get(i)?)?;
            imageio::save_png(&a.out.join(format!("{:05}.png", start + i)), &img)?;
            pb.inc(1);
        }
        start += len;
    }
    pb.finish_and_clear();
    if !a.model.quiet {
        eprintln!("wrote {n} images to {}", a.out.display());
    }
    Ok(())
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let w = read_weights(&a.from, a.codebook.as_deref(), a.resolution)?;
    let n = write_model_dir(&w, &a.to, !a.inference_only, "Weights under the official state-dict names.")?;
    eprintln!(
        "wrote {} ({} tensors; discriminator and LPIPS weights dropped; projected codebook stored)",
        a.to.display(),
        n
    );
    Ok(())
}
