//! `gen sample`: class label → image. The GPT prior draws the image tokens (batched, KV-cached,
//! seeded), the paired tokenizer decodes them, and the samples are written as one PNG grid.
//!
//! `--model gpt` is the shipped demo prior (`models/fmnist/gpt`); a folder is any GPT model folder; a
//! file is an official GPT-LC container (`transformer_{epoch}.pt`, DeepSpeed `mp_rank_00_model_states.pt`)
//! whose `vqgan.*` half is the tokenizer unless `--tokenizer` names another.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use gen_data::classes;
use gen_data::tokens::TokenFile;
use gen_prior::sample::{generate, Request, Sampling};
use gen_prior::{read_gpt, GptHints, GptWeights};
use gen_runtime::{imageio, progress, Rng};
use gen_tokenizer::{read_weights, tokenizer_from_state_dict, tokenizer_sha256, TokenizerWeights, VqModel};

use crate::args::{at_least_one, DeviceArgs};

/// Where `--model gpt` looks (run from the project folder).
pub const DEMO_GPT: &str = "models/fmnist/gpt";

#[derive(Args)]
pub struct SampleArgs {
    /// `gpt`, `dit`, `sit`, `ldm` (the shipped demo models), a model folder, or an official checkpoint
    /// file (GPT-LC containers; DiT-LC / SiT-LC `.pt` with --kind; LDM-LC Lightning `.ckpt`).
    #[arg(long, default_value = "gpt")]
    pub model: String,
    /// The class to draw (0-based id).
    #[arg(long, required_unless_present_any = ["prompt", "all_classes"])]
    pub class: Option<usize>,
    /// The class by name instead of id ("golden retriever", "sneaker"); the closest name wins.
    #[arg(long, conflicts_with = "class")]
    pub prompt: Option<String>,
    /// Resolve --prompt by CLIP instead of by spelling: a folder with a Hugging Face CLIP's
    /// model.safetensors and tokenizer.json (openai/clip-vit-large-patch14); the class whose
    /// "a photo of a {name}" embeds closest to the prompt wins.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Every class: --num-samples of each, one row per class in the grid.
    #[arg(long, conflicts_with_all = ["class", "prompt"])]
    pub all_classes: bool,
    /// Samples per class.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub num_samples: usize,
    /// Sample i of class c draws from its own generator seeded by (seed, c, i): the same image on every
    /// run, whatever the batch or the other classes drawn with it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A named sampling setting; --temperature / --top-k / --top-p / --cfg-scale override its values.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Divides the logits (> 0; default 1).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Keep the k most likely tokens (1 = greedy).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to probability p, in (0, 1].
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Classifier-free guidance scale (models trained with a null class).
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// DiT / SiT / LDM: the sampler (ddpm, ddim for DiT and LDM; euler, heun, dopri5, sde for SiT).
    #[arg(long)]
    pub sampler: Option<String>,
    /// DiT / SiT / LDM: chain steps (DDPM / DDIM), integration points (Euler / Heun / SDE) or output
    /// times (dopri5).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's η (0: deterministic).
    #[arg(long)]
    pub eta: Option<f64>,
    /// Guide only the first three latent channels, as the official DiT/SiT code does (default: all).
    #[arg(long)]
    pub official_guidance: bool,
    /// What a checkpoint file holds when its keys cannot tell: dit or sit (LDM files are recognised).
    #[arg(long, value_enum)]
    pub kind: Option<GeneratorKind>,
    /// Sample with the live weights of a checkpoint instead of its EMA average.
    #[arg(long)]
    pub live_weights: bool,
    /// The tokenizer that decodes the tokens (default: the one paired with the model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The codebook of an official tokenizer checkpoint (`codebook-100K.pth`).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// The tokenizer's image size, for an official checkpoint (default 256).
    #[arg(long, value_parser = at_least_one)]
    pub resolution: Option<usize>,
    /// The GPT's or DiT's / SiT's head count, when its weights are of no known size.
    #[arg(long, value_parser = at_least_one)]
    pub heads: Option<usize>,
    /// An LDM checkpoint's attention head width (`num_head_channels`; not stored in the weights; both
    /// official configs use 32).
    #[arg(long, value_parser = at_least_one)]
    pub head_channels: Option<usize>,
    /// Class names, one per line (default: the model's, or ImageNet's for 1,000 classes).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// The PNG to write (a grid when --num-samples > 1).
    #[arg(long, default_value = "sample.png")]
    pub out: PathBuf,
    /// Also write every sample as its own PNG, `DIR/<class>/<i>.png` (what `gen eval-classes` and
    /// `gen fid` read).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Also write the sampled token ids (a `gen decode` token file).
    #[arg(long)]
    pub tokens_out: Option<PathBuf>,
    #[command(flatten)]
    pub run: DeviceArgs,
}

/// The latent generators a checkpoint file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GeneratorKind {
    Dit,
    Sit,
    Ldm,
}

/// Sampling settings with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The official evaluation: temperature 1, top-k 100,000 (no filtering), no guidance.
    Official,
    /// Top-k 10,000 at temperature 1: what VQGAN-LC's users found the paper's FID 15.4 needs (issue #7).
    PaperFid,
    /// Greedy decoding (top-k 1).
    Greedy,
}

impl Preset {
    fn sampling(self) -> Sampling {
        match self {
            Preset::Official => Sampling::default(),
            Preset::PaperFid => Sampling { top_k: Some(10_000), ..Sampling::default() },
            Preset::Greedy => Sampling::greedy(),
        }
    }
}

/// The preset, else the model folder's recommendation, else the official setting; then the flags.
fn sampling(a: &SampleArgs, recommended: Option<&Sampling>) -> Sampling {
    let mut s = match (a.preset, recommended) {
        (Some(p), _) => p.sampling(),
        (None, Some(r)) => r.clone(),
        (None, None) => Sampling::default(),
    };
    if let Some(t) = a.temperature {
        s.temperature = t;
    }
    if a.top_k.is_some() {
        s.top_k = a.top_k;
    }
    if a.top_p.is_some() {
        s.top_p = a.top_p;
    }
    if a.cfg_scale.is_some() {
        s.cfg_scale = a.cfg_scale;
    }
    s
}

/// `gpt` → the demo folder; anything else is a path.
fn model_path(spec: &str) -> Result<PathBuf> {
    match spec {
        "gpt" => {
            let p = PathBuf::from(DEMO_GPT);
            if !p.exists() {
                bail!("--model gpt: {DEMO_GPT} not found (run gen from the project folder, or pass the model folder)");
            }
            Ok(p)
        }
        "dit" | "sit" | "ldm" => {
            let p = PathBuf::from(format!("models/fmnist/{spec}"));
            if !p.exists() {
                bail!(
                    "--model {spec}: {} not found (run gen from the project folder, or pass the model folder)",
                    p.display()
                );
            }
            Ok(p)
        }
        other => Ok(PathBuf::from(other)),
    }
}

/// The tokenizer that decodes this GPT's tokens, and where it came from (for messages).
fn paired_tokenizer(a: &SampleArgs, gpt: &GptWeights) -> Result<(TokenizerWeights, String)> {
    let check_sha = |path: &Path| -> Result<()> {
        if let Some(want) = &gpt.tokenizer_sha256 {
            let have = tokenizer_sha256(path)?;
            if &have != want {
                bail!(
                    "{}: this tokenizer (sha256 {}…) is not the one {} was trained with ({}…)",
                    path.display(),
                    &have[..12],
                    gpt.source.display(),
                    &want[..want.len().min(12)]
                );
            }
        }
        Ok(())
    };
    if let Some(t) = &a.tokenizer {
        check_sha(t)?;
        return Ok((read_weights(t, a.codebook.as_deref(), a.resolution)?, t.display().to_string()));
    }
    if let Some(t) = &gpt.tokenizer_path {
        check_sha(t)?;
        return Ok((read_weights(t, a.codebook.as_deref(), a.resolution)?, t.display().to_string()));
    }
    if let Some(tensors) = &gpt.tokenizer_tensors {
        let w = tokenizer_from_state_dict(&gpt.source, tensors.clone(), a.codebook.as_deref(), a.resolution)
            .with_context(|| {
                format!("the vqgan.* half of {} is not a usable tokenizer (pass --tokenizer)", gpt.source.display())
            })?;
        return Ok((w, format!("the vqgan.* half of {}", gpt.source.display())));
    }
    bail!("{}: no tokenizer is paired with this model: pass --tokenizer", gpt.source.display())
}

/// The class names: `--classes`, the model's own, or the usual ones for its class count.
pub(super) fn class_names(a: &SampleArgs, n: usize, own: &[String]) -> Result<Vec<String>> {
    let names = match &a.classes {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let names: Vec<String> = text.lines().map(str::to_owned).filter(|l| !l.trim().is_empty()).collect();
            if names.len() != n {
                bail!("--classes {}: {} names for a model of {n} classes", p.display(), names.len());
            }
            names
        }
        None if !own.is_empty() => own.to_vec(),
        None => classes::default_for(n).unwrap_or_else(|| (0..n).map(|i| format!("class {i}")).collect()),
    };
    Ok(names)
}

/// `--class` checked against the range, or `--prompt` resolved by name.
pub(super) fn pick_class(a: &SampleArgs, names: &[String]) -> Result<usize> {
    let n = names.len();
    if a.clip.is_some() && a.prompt.is_none() {
        bail!("--clip resolves --prompt TEXT by CLIP: give the prompt, or drop --clip");
    }
    if let Some(p) = &a.prompt {
        if let Some(dir) = &a.clip {
            let clip = gen_clip::prompt::ClipPrompts::open(dir, &candle_core::Device::Cpu)?;
            let short: Vec<String> = names.iter().map(|s| classes::short_name(s).to_string()).collect();
            let (c, cos) = clip.nearest_class(p, &short)?;
            eprintln!("--prompt {p:?}: CLIP picks class {c} ({}), cosine {cos:.3}", short[c]);
            return Ok(c);
        }
        let Some((c, _)) = classes::resolve(p, names) else { bail!("--prompt is empty") };
        return Ok(c);
    }
    let c = a.class.unwrap_or(0);
    if c >= n && !a.all_classes {
        let some: Vec<String> =
            names.iter().take(3).enumerate().map(|(i, s)| format!("{i} = {}", classes::short_name(s))).collect();
        bail!("--class {c} is out of range: this model has classes 0 to {} ({}, …)", n - 1, some.join(", "));
    }
    Ok(c)
}

/// Whether `path` is a DiT / SiT / LDM (a folder of that kind, or a file with `--kind`) rather than a GPT.
fn is_generator(a: &SampleArgs, path: &Path) -> bool {
    if a.kind.is_some() {
        return true;
    }
    let kind = std::fs::read_to_string(path.join("config.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("kind").and_then(|k| k.as_str()).map(str::to_owned));
    matches!(kind.as_deref(), Some("dit" | "sit" | "ldm")) || (path.is_file() && gen_diffusion_file(path))
}

/// A checkpoint file that is an LDM (its keys say so; DiT / SiT files need `--kind`).
fn gen_diffusion_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("ckpt"))
}

pub fn run(a: SampleArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    if is_generator(&a, &path) {
        return super::sample_diffusion::run(&a, &path);
    }
    let (dev, dtype) = a.run.open()?;
    let quiet = a.run.quiet;
    // an explicit tokenizer's codebook size tells an official file's codes from its classes
    let given = a.tokenizer.as_ref().map(|t| read_weights(t, a.codebook.as_deref(), a.resolution)).transpose()?;
    let hints = GptHints { n_codes: given.as_ref().map(|t| t.config.codebook_size), n_head: a.heads };
    let gw = read_gpt(&path, &hints)?;
    let names = class_names(&a, gw.config.n_classes, &gw.config.class_names)?;
    let class = pick_class(&a, &names)?;
    let s = sampling(&a, gw.sampling.as_ref());
    let (tw, tok_from) = paired_tokenizer(&a, &gw)?;
    let (mut tokenizer, _) = tw.build(dtype, &dev)?;
    tokenizer.quantizer.freeze_projection()?;
    let codes = tokenizer.quantizer.codebook_size()?;
    if codes != gw.config.n_codes {
        bail!(
            "{} predicts {} image tokens but {tok_from} has a codebook of {codes}: they are not a pair",
            gw.source.display(),
            gw.config.n_codes
        );
    }
    let (gpt, _) = gw.build(dtype, &dev)?;
    s.validate(&gpt)?;
    let side = tokenizer.config.latent_size();
    let steps = side * side;
    if steps > gpt.config.max_tokens() {
        bail!("the tokenizer's {side}×{side} grid needs {steps} tokens; the model holds {}", gpt.config.max_tokens());
    }
    let wanted: Vec<usize> = if a.all_classes { (0..names.len()).collect() } else { vec![class] };
    let jobs: Vec<(usize, usize)> = wanted.iter().flat_map(|&c| (0..a.num_samples).map(move |i| (c, i))).collect();
    let tokens = draw(&gpt, &jobs, &a, &s, steps, quiet)?;
    let images = decode(&tokenizer, &tokens, side, a.run.batch_size, &dev)?;
    write_images(&a, &jobs, &images, &names)?;
    if let Some(t) = &a.tokens_out {
        TokenFile { ids: tokens, grid: (side, side), vocab: Some(codes) }.write(t)?;
    }
    let what = if a.all_classes {
        format!("{} classes", names.len())
    } else {
        format!("class {class} ({})", classes::short_name(&names[class]))
    };
    let plural = if a.num_samples == 1 { "" } else { "s" };
    let each = if a.all_classes { " each" } else { "" };
    println!("{what}: {} sample{plural}{each} (seed {}) → {}", a.num_samples, a.seed, a.out.display());
    Ok(())
}

/// The PNG grid (`--out`; one row per class with `--all-classes`) and, with `--out-dir`, every sample as
/// `DIR/<class>/<index>.png`.
pub(super) fn write_images(
    a: &SampleArgs,
    jobs: &[(usize, usize)],
    images: &[imageio::RgbImage],
    names: &[String],
) -> Result<()> {
    let cols = if a.all_classes { a.num_samples } else { (images.len() as f64).sqrt().ceil() as usize };
    let picture = if images.len() == 1 { images[0].clone() } else { imageio::grid(images, cols).context("grid")? };
    imageio::save_png(&a.out, &picture)?;
    if let Some(dir) = &a.out_dir {
        for (&(c, i), img) in jobs.iter().zip(images) {
            let folder = dir.join(super::eval_classes::slug(classes::short_name(&names[c])));
            std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
            imageio::save_png(&folder.join(format!("{i:05}.png")), img)?;
        }
    }
    Ok(())
}

/// The token ids of every (class, index) job, `--batch-size` sequences decoded together.
fn draw(
    gpt: &gen_prior::Gpt,
    jobs: &[(usize, usize)],
    a: &SampleArgs,
    s: &Sampling,
    steps: usize,
    quiet: bool,
) -> Result<Vec<Vec<u32>>> {
    let bar = progress::bar((jobs.len() * steps) as u64, "sample", quiet);
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(a.run.batch_size) {
        let classes: Vec<usize> = chunk.iter().map(|j| j.0).collect();
        let mut rngs: Vec<Rng> =
            chunk.iter().map(|&(c, i)| Rng::for_item(a.seed, ((c as u64) << 32) | i as u64)).collect();
        let req = Request { classes: &classes, prefix: None, steps };
        out.extend(generate(gpt, &req, s, &mut rngs, |_| bar.inc(chunk.len() as u64))?);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Tokens → images through the tokenizer's projected codebook and decoder.
fn decode(
    tok: &VqModel,
    tokens: &[Vec<u32>],
    side: usize,
    batch: usize,
    dev: &Device,
) -> Result<Vec<imageio::RgbImage>> {
    let mut images = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(batch.max(1)) {
        let flat: Vec<u32> = chunk.concat();
        let ids = Tensor::from_vec(flat, (chunk.len(), side * side), &Device::Cpu)?.to_device(dev)?;
        let x = tok.decode_indices(&ids, Some((side, side)))?;
        for i in 0..chunk.len() {
            images.push(imageio::from_tensor(&x.get(i)?)?);
        }
    }
    Ok(images)
}
