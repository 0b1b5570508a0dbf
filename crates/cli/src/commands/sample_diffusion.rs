//! `gen sample` for the latent generators: class label → latent (DiT, SiT or LDM with its sampler and
//! classifier-free guidance, seeded per sample) → each position snapped to the nearest projected code
//! → the paired tokenizer's decoder → one PNG grid.

use std::path::Path;

use anyhow::{bail, Result};
use gen_data::classes;
use gen_data::tokens::TokenFile;
use gen_diffusion::ldm::load::WeightSet;
use gen_diffusion::load::{read_generator, GeneratorHints, GeneratorWeights};
use gen_diffusion::sampling::{GuideMode, SamplingSpec};
use gen_runtime::{imageio, progress, ModelKind};
use gen_tokenizer::{read_weights, tokenizer_sha256, TokenizerWeights};

use super::sample::{class_names, pick_class, write_images, GeneratorKind, Preset, SampleArgs};

/// The preset, else the model folder's recommendation, else the official setting; then the flags.
fn spec(a: &SampleArgs, kind: ModelKind, recommended: Option<&SamplingSpec>) -> Result<SamplingSpec> {
    if a.temperature.is_some() || a.top_k.is_some() || a.top_p.is_some() {
        bail!("--temperature, --top-k and --top-p are GPT settings; a {kind} takes --sampler, --steps, --cfg-scale and --eta");
    }
    let mut s = match (a.preset, recommended) {
        (Some(Preset::Official), _) => SamplingSpec::official(kind),
        (Some(p), _) => {
            bail!("--preset {}: a GPT preset; a {kind} knows only --preset official", format!("{p:?}").to_lowercase())
        }
        (None, Some(r)) => r.clone(),
        (None, None) => SamplingSpec::official(kind),
    };
    if let Some(name) = &a.sampler {
        s.sampler = name.parse().map_err(|e: String| anyhow::anyhow!("--sampler: {e}"))?;
    }
    if let Some(n) = a.steps {
        s.steps = n;
    }
    if let Some(c) = a.cfg_scale {
        s.cfg_scale = c;
    }
    if let Some(e) = a.eta {
        if !(e.is_finite() && e >= 0.0) {
            bail!("--eta {e} must be a finite number >= 0");
        }
        s.eta = e;
    }
    if a.official_guidance {
        s.guide = GuideMode::Official;
    }
    Ok(s)
}

/// The tokenizer that decodes this generator's latents: `--tokenizer` or the folder's pair (sha256 checked).
fn paired_tokenizer(a: &SampleArgs, g: &GeneratorWeights) -> Result<TokenizerWeights> {
    let path = match (&a.tokenizer, &g.tokenizer_path) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("{}: no tokenizer is paired with this model: pass --tokenizer", g.source.display()),
    };
    if let Some(want) = &g.tokenizer_sha256 {
        let have = tokenizer_sha256(&path)?;
        if &have != want {
            bail!(
                "{}: this tokenizer (sha256 {}…) is not the one {} was trained with ({}…)",
                path.display(),
                &have[..12],
                g.source.display(),
                &want[..want.len().min(12)]
            );
        }
    }
    Ok(read_weights(&path, a.codebook.as_deref(), a.resolution)?)
}

pub fn run(a: &SampleArgs, path: &Path) -> Result<()> {
    let (dev, dtype) = a.run.open()?;
    let hints = GeneratorHints {
        kind: a.kind.map(|k| match k {
            GeneratorKind::Dit => ModelKind::Dit,
            GeneratorKind::Sit => ModelKind::Sit,
            GeneratorKind::Ldm => ModelKind::Ldm,
        }),
        heads: a.heads,
        head_channels: a.head_channels,
        weights: Some(if a.live_weights { WeightSet::Live } else { WeightSet::Ema }),
    };
    let gw = read_generator(path, &hints)?;
    let kind = gw.arch.kind();
    let names = class_names(a, gw.arch.num_classes(), &gw.class_names)?;
    let class = pick_class(a, &names)?;
    let s = spec(a, kind, gw.sampling.as_ref())?;
    let tw = paired_tokenizer(a, &gw)?;
    let (tokenizer, _) = tw.build(dtype, &dev)?;
    let (channels, side) = gw.arch.latent();
    let (tc, ts) = (tokenizer.config.embed_dim, tokenizer.config.latent_size());
    if (tc, ts) != (channels, side) {
        bail!(
            "{} makes {channels}×{side}×{side} latents but the tokenizer decodes {tc}×{ts}×{ts}: they are not a pair",
            gw.source.display()
        );
    }
    let generator = gw.build(dtype, &dev)?;
    generator.check(&s)?;
    let wanted: Vec<usize> = if a.all_classes { (0..names.len()).collect() } else { vec![class] };
    let jobs: Vec<(usize, usize)> = wanted.iter().flat_map(|&c| (0..a.num_samples).map(move |i| (c, i))).collect();
    let batches = jobs.len().div_ceil(a.run.batch_size.max(1));
    let bar = progress::bar(batches as u64 * 1000, "sample", a.run.quiet);
    let (mut images, mut ids) = (Vec::with_capacity(jobs.len()), Vec::with_capacity(jobs.len()));
    for (k, chunk) in jobs.chunks(a.run.batch_size.max(1)).enumerate() {
        let labels: Vec<u32> = chunk.iter().map(|&(c, _)| c as u32).collect();
        let keys: Vec<u64> = chunk.iter().map(|&(c, i)| ((c as u64) << 32) | i as u64).collect();
        let z = generator.sample(&labels, &keys, &s, a.seed, &dev, &mut |done, total| {
            bar.set_position(k as u64 * 1000 + (done * 1000 / total.max(1)) as u64);
        })?;
        let (x, idx) = tokenizer.decode_latent(&z.to_dtype(tokenizer_dtype(&tokenizer))?)?;
        for i in 0..chunk.len() {
            images.push(imageio::from_tensor(&x.get(i)?)?);
            ids.push(idx.get(i)?.to_vec1::<u32>()?);
        }
    }
    bar.finish_and_clear();
    write_images(a, &jobs, &images, &names)?;
    if let Some(t) = &a.tokens_out {
        let codes = tokenizer.quantizer.codebook_size()?;
        TokenFile { ids, grid: (side, side), vocab: Some(codes) }.write(t)?;
    }
    let what = if a.all_classes {
        format!("{} classes", names.len())
    } else {
        format!("class {class} ({})", classes::short_name(&names[class]))
    };
    let plural = if a.num_samples == 1 { "" } else { "s" };
    println!(
        "{what}: {} sample{plural}{} from the {kind} ({:?}, {} steps, cfg {}; seed {}) → {}",
        a.num_samples,
        if a.all_classes { " each" } else { "" },
        s.sampler,
        s.steps,
        s.cfg_scale,
        a.seed,
        a.out.display()
    );
    Ok(())
}

fn tokenizer_dtype(t: &gen_tokenizer::VqModel) -> candle_core::DType {
    t.post_quant_conv.weight.dtype()
}
