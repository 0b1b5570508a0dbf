//! `gen tokenize`: images → token (or latent) shards for training the generators, and `gen shards
//! merge`, which joins the manifests of a `--part i/n` job.
//!
//! Shards of `--shard-size` images are numbered over the whole data set; `--part i/n` tokenizes the i-th
//! of n contiguous runs of shards (a cluster scheduler's array job), writing `manifest-part-i-of-n.json`.
//! A shard file that exists is complete (written under a temp name, renamed), so a rerun skips it:
//! tokenizing resumes where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand};
use gen_data::shards::{self, Manifest, Payload, Shard, ShardEntry, ShardKind, FORMAT_VERSION, MANIFEST};
use gen_runtime::{imageio, io, progress};
use gen_tokenizer::{tokenizer_sha256, VqModel};

use super::datasets::{Data, DataArgs};
use super::tokenizer_args::TokenizerArgs;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: TokenizerArgs,
    #[command(flatten)]
    pub images: DataArgs,
    /// The shard folder (created; complete shards already in it are kept).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the continuous latents `quant_conv(encoder(x))` (for DiT, SiT, LDM) instead of token ids.
    #[arg(long)]
    pub latents: bool,
    /// Store latents in f16 (half the disk; tokens are always U32).
    #[arg(long, requires = "latents")]
    pub f16: bool,
    /// Reproduce the official DiT-LC / SiT-LC `train.py` quirk: `x·2 − 1` applied to images already in
    /// [−1, 1], so the tokenizer sees [−3, 1]. Only to match latents of an official run; off by default.
    #[arg(long, requires = "latents")]
    pub official_double_scale: bool,
    /// Images per shard.
    #[arg(long, default_value_t = 4096, value_parser = crate::args::at_least_one)]
    pub shard_size: usize,
    /// Tokenize only part i of n (0-based), for a cluster array job; `gen shards merge` joins the parts.
    #[arg(long, value_parser = parse_part)]
    pub part: Option<(usize, usize)>,
}

/// `i/n` with i < n.
fn parse_part(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("'{s}' is not i/n (e.g. 0/4)"))?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| format!("'{i}' is not a number"))?,
        n.trim().parse().map_err(|_| format!("'{n}' is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("part {i}/{n}: expected 0 ≤ i < n"));
    }
    Ok((i, n))
}

#[derive(Args)]
pub struct ShardsArgs {
    #[command(subcommand)]
    pub command: ShardsCommand,
}

#[derive(Subcommand)]
pub enum ShardsCommand {
    /// Join the part manifests of `gen tokenize --part i/n` into the folder's manifest.json.
    Merge {
        /// The shard folder the parts wrote into.
        dir: PathBuf,
    },
}

pub fn run_shards(a: ShardsArgs) -> Result<()> {
    match a.command {
        ShardsCommand::Merge { dir } => {
            let m = shards::merge_parts(&dir)?;
            println!("merged {} shards ({} images) into {}", m.shards.len(), m.len(), dir.join(MANIFEST).display());
            Ok(())
        }
    }
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let quiet = a.model.run.quiet;
    let data = Data::open(&a.images.data, a.images.count, quiet)?;
    let n = data.len();
    if n == 0 {
        bail!("--data {}: no images", a.images.data);
    }
    let (labels, class_names) = data.labels(&a.images.data)?;
    let (model, dev, dtype) = a.model.open()?;
    let sha = tokenizer_sha256(&a.model.tokenizer)?;
    let g = model.config.latent_size();
    let kind = if a.latents { ShardKind::Latents } else { ShardKind::Tokens };
    let mut header = Manifest {
        format: kind.format().into(),
        format_version: FORMAT_VERSION,
        grid: [g, g],
        vocab: (!a.latents).then(|| model.quantizer.codebook_size()).transpose()?,
        channels: a.latents.then_some(model.config.embed_dim),
        tokenizer_sha256: sha,
        num_classes: class_names.len(),
        class_names,
        shards: vec![],
    };
    let total = n.div_ceil(a.shard_size);
    let (part, parts) = a.part.unwrap_or((0, 1));
    let mine = part * total / parts..(part + 1) * total / parts;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let images_in = |s: usize| s * a.shard_size..((s + 1) * a.shard_size).min(n);
    let todo: usize = mine.clone().map(|s| images_in(s).len()).sum();
    let bar = progress::bar(todo as u64, if a.latents { "latents" } else { "tokenize" }, quiet);
    let (mut made, mut kept) = (0, 0);
    for s in mine.clone() {
        let file = Manifest::shard_file(s);
        let range = images_in(s);
        let entry = match existing_shard(&a.out.join(&file), &header, range.len())? {
            Some(e) => {
                kept += 1;
                e
            }
            None => {
                let shard = encode_shard(
                    &model,
                    &data,
                    range.clone(),
                    &labels[range.clone()],
                    a.latents,
                    a.f16,
                    a.official_double_scale,
                    &dev,
                    dtype,
                    &a.model.run,
                )?;
                made += 1;
                shard.write(&a.out, &file, &header)?
            }
        };
        header.shards.push(entry);
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    let name = if a.part.is_some() { shards::part_manifest(part, parts) } else { MANIFEST.to_string() };
    header.write(&a.out, &name)?;
    if !quiet {
        eprintln!(
            "wrote {} ({} shards: {made} new, {kept} already complete; {} images, {} {g}×{g} per image)",
            a.out.join(&name).display(),
            mine.len(),
            header.len(),
            if a.latents { "latents" } else { "tokens" },
        );
    }
    Ok(())
}

/// A complete shard from an earlier run: its entry, read from the file's own metadata; `None` when absent.
/// A shard of another tokenizer or size is an error (a rerun into the wrong folder).
fn existing_shard(path: &Path, header: &Manifest, n: usize) -> Result<Option<ShardEntry>> {
    if !path.exists() {
        return Ok(None);
    }
    let meta = io::safetensors_metadata(path)?;
    let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
    if field("format") != header.format || field("tokenizer_sha256") != header.tokenizer_sha256 {
        bail!(
            "{}: a shard of another run is in the way (format {}, tokenizer {}…): use a new --out folder",
            path.display(),
            field("format"),
            &field("tokenizer_sha256").chars().take(12).collect::<String>()
        );
    }
    Ok(Some(ShardEntry {
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        n,
        payload_sha256: field("payload_sha256"),
    }))
}

/// Tokens (or latents) of the images `range`, batch by batch, each batch split over the cores.
#[allow(clippy::too_many_arguments)]
fn encode_shard(
    model: &VqModel,
    data: &Data,
    range: std::ops::Range<usize>,
    labels: &[u32],
    latents: bool,
    f16: bool,
    double_scale: bool,
    dev: &candle_core::Device,
    dtype: DType,
    run: &crate::args::DeviceArgs,
) -> Result<Shard> {
    let size = model.config.resolution;
    let batch = run.batch_size.max(rayon::current_num_threads());
    let mut parts: Vec<Tensor> = Vec::new();
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(batch) {
        let x = chunk
            .iter()
            .map(|&i| Ok(imageio::to_tensor(&imageio::preprocess(&data.image(i)?, size), dev)?))
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::stack(&x, 0)?.to_dtype(dtype)?;
        let x = if double_scale { x.affine(2.0, -1.0)? } else { x };
        let outs = gen_nn::batch::par_batch(&x, |xs| {
            if latents {
                model.encode_latent(xs)
            } else {
                Ok(model.encode(xs)?.indices)
            }
        })?;
        parts.push(Tensor::cat(&outs, 0)?.to_device(&candle_core::Device::Cpu)?);
    }
    let all = Tensor::cat(&parts, 0)?;
    let payload = if latents {
        Payload::Latents(all.to_dtype(if f16 { DType::F16 } else { DType::F32 })?)
    } else {
        Payload::Tokens(all.flatten_all()?.to_vec1::<u32>()?)
    };
    Ok(Shard { payload, labels: labels.to_vec() })
}
