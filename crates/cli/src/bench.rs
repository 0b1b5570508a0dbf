//! `gen bench`: our kernels and models side by side with a PyTorch baseline (`bench/torch_bench.py`),
//! on the same machine at the same thread count, as a table of times and ratios (torch / ours).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use gen_nn::{kernels, Params, RandomWeights, Weights};
use gen_runtime::Rng;
use gen_tokenizer::{VqConfig, VqModel};

#[derive(Args)]
pub struct BenchArgs {
    /// Run only these items (comma-separated); `--list` shows the names.
    #[arg(long)]
    pub only: Option<String>,
    /// Threads for both sides (rayon and torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed repetitions per item (after one warm-up); tokenizer items use at most 3.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// The baseline script.
    #[arg(long, default_value = "bench/torch_bench.py")]
    pub baseline: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// List the items and exit.
    #[arg(long)]
    pub list: bool,
}

type Item = (&'static str, fn(&mut Ctx) -> Result<Box<dyn FnMut() -> Result<()>>>);

/// Shared state: the random-weight f16 tokenizer is built once (its 100k codebook takes a while).
#[derive(Default)]
struct Ctx {
    tokenizer: Option<std::rc::Rc<(VqModel, VqModel, Vec<(String, Var)>)>>,
}

const ITEMS: &[Item] = &[
    ("conv3x3_fwd", |_| conv(false)),
    ("conv3x3_fwdbwd", |_| conv(true)),
    ("groupnorm_fwd", |_| group_norm(false, false)),
    ("groupnorm_fwdbwd", |_| group_norm(false, true)),
    ("groupnorm_silu_fwd", |_| group_norm(true, false)),
    ("groupnorm_silu_fwdbwd", |_| group_norm(true, true)),
    ("tok_encoder_b1", |c| tok_encoder(c, 1)),
    ("tok_encoder_b4", |c| tok_encoder(c, 4)),
    ("tok_roundtrip_b1", |c| tok_roundtrip(c, 1)),
    ("tok_roundtrip_b4", |c| tok_roundtrip(c, 4)),
    ("tok_train_step_b4", tok_train_step),
    ("softmax_fwd", |_| rows(RowOp::Softmax)),
    ("softmax_candle_nograd", |_| rows(RowOp::CandleSoftmax)),
    ("layernorm_fwd", |_| rows(RowOp::LayerNorm)),
    ("layernorm_candle_nograd", |_| rows(RowOp::CandleLayerNorm)),
    ("sgemm_conv_tap", |_| sgemm(128, 4222, 128, false)),
    ("sgemm_conv_wgrad", |_| sgemm(128, 128, 4222, false)),
    ("sgemm_im2col", |_| sgemm(128, 1024, 1152, false)),
    #[cfg(feature = "openblas")]
    ("sgemm_conv_tap_openblas", |_| sgemm(128, 4222, 128, true)),
    #[cfg(feature = "openblas")]
    ("sgemm_conv_wgrad_openblas", |_| sgemm(128, 128, 4222, true)),
    #[cfg(feature = "openblas")]
    ("sgemm_im2col_openblas", |_| sgemm(128, 1024, 1152, true)),
];

#[derive(Clone, Copy)]
enum RowOp {
    Softmax,
    CandleSoftmax,
    LayerNorm,
    CandleLayerNorm,
}

/// Row ops on [16·256, 256] (attention scores of 16 heads × 256 tokens): ours (with a gradient)
/// against Candle's fused versions, which have none.
fn rows(op: RowOp) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut rng = Rng::new(0);
    let x = rand(&mut rng, &[4096, 256], 1.0)?;
    let w = (rand(&mut rng, &[256], 0.1)? + 1.0)?;
    let b = rand(&mut rng, &[256], 0.1)?;
    Ok(Box::new(move || {
        match op {
            RowOp::Softmax => kernels::softmax_last_dim(&x)?,
            RowOp::CandleSoftmax => candle_nn::ops::softmax_last_dim(&x)?,
            RowOp::LayerNorm => kernels::layer_norm(&x, &w, &b, 1e-5)?,
            RowOp::CandleLayerNorm => candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)?,
        };
        Ok(())
    }))
}

/// The GEMM shapes of a [8,128,64,64] conv: one kernel tap (stride-1 path), one tap's weight gradient,
/// and a stride-2 im2col tile. `openblas` selects the system BLAS (feature `openblas`).
fn sgemm(m: usize, n: usize, k: usize, openblas: bool) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut rng = Rng::new(0);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let mut c = vec![0f32; m * n];
    Ok(Box::new(move || {
        if openblas {
            #[cfg(feature = "openblas")]
            kernels::gemm::sgemm_openblas(m, n, k, &a, &b, &mut c);
        } else {
            kernels::gemm::sgemm_crate(m, n, k, &a, &b, &mut c);
        }
        Ok(())
    }))
}

fn rand(rng: &mut Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    Ok(rng.randn(shape, std, &Device::Cpu)?)
}

fn conv(backward: bool) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut rng = Rng::new(0);
    let x = Var::from_tensor(&rand(&mut rng, &[8, 128, 64, 64], 1.0)?)?;
    let w = Var::from_tensor(&rand(&mut rng, &[128, 128, 3, 3], 0.03)?)?;
    let b = Var::from_tensor(&rand(&mut rng, &[128], 0.1)?)?;
    let g = rand(&mut rng, &[8, 128, 64, 64], 1.0)?;
    Ok(Box::new(move || {
        let y = kernels::conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1, 1)?;
        if backward {
            (y * &g)?.sum_all()?.backward()?;
        }
        Ok(())
    }))
}

fn group_norm(silu: bool, backward: bool) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut rng = Rng::new(0);
    let x = Var::from_tensor(&rand(&mut rng, &[8, 128, 64, 64], 1.0)?)?;
    let w = Var::from_tensor(&(rand(&mut rng, &[128], 0.1)? + 1.0)?)?;
    let b = Var::from_tensor(&rand(&mut rng, &[128], 0.1)?)?;
    let g = rand(&mut rng, &[8, 128, 64, 64], 1.0)?;
    Ok(Box::new(move || {
        let y = kernels::group_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 32, 1e-6, silu)?;
        if backward {
            (y * &g)?.sum_all()?.backward()?;
        }
        Ok(())
    }))
}

/// (inference model with the projection frozen, trainable model, its parameters).
fn tokenizer(c: &mut Ctx) -> Result<std::rc::Rc<(VqModel, VqModel, Vec<(String, Var)>)>> {
    if let Some(t) = &c.tokenizer {
        return Ok(t.clone());
    }
    eprintln!("bench: building the official f16 tokenizer with random weights (100,000 × 768 codebook)…");
    let cfg = VqConfig::f16();
    let rw = RandomWeights::new(0);
    let mut infer = VqModel::new(rw.var_builder(DType::F32, &Device::Cpu), &cfg)?;
    infer.quantizer.freeze_projection()?;
    let (params, tensors) = Params::from_tensors(&rw.tensors(), |n| n != "tok_embeddings.weight")?;
    let train = VqModel::new(Weights::new("random", tensors).var_builder(DType::F32, &Device::Cpu), &cfg)?;
    let t = std::rc::Rc::new((infer, train, params.vars));
    c.tokenizer = Some(t.clone());
    Ok(t)
}

fn tok_encoder(c: &mut Ctx, b: usize) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[b, 3, 256, 256], 0.5)?;
    Ok(Box::new(move || {
        t.0.encode_latent(&x)?;
        Ok(())
    }))
}

fn tok_roundtrip(c: &mut Ctx, b: usize) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[b, 3, 256, 256], 0.5)?;
    Ok(Box::new(move || {
        let q = t.0.encode(&x)?;
        t.0.decode(&q.z_q)?;
        Ok(())
    }))
}

fn tok_train_step(c: &mut Ctx) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let t = tokenizer(c)?;
    let x = rand(&mut Rng::new(1), &[4, 3, 128, 128], 0.5)?;
    Ok(Box::new(move || {
        let q = t.1.encode(&x)?;
        let xrec = t.1.decode(&q.z_q)?;
        let loss = (gen_nn::ops::l1_loss(&x, &xrec)? + (q.loss * 0.1)?)?;
        let grads = loss.backward()?;
        if grads.get(t.2[0].1.as_tensor()).is_none() {
            bail!("train step: parameter {} got no gradient", t.2[0].0);
        }
        Ok(())
    }))
}

fn min_median(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn run_baseline(a: &BenchArgs, names: &[&str]) -> Result<BTreeMap<String, Vec<f64>>> {
    let out = Command::new(&a.python)
        .arg(&a.baseline)
        .args(["--threads", &a.threads.to_string(), "--reps", &a.reps.to_string(), "--only", &names.join(",")])
        .output()
        .with_context(|| format!("cannot run {} {}", a.python, a.baseline.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} failed: {}", a.baseline.display(), err.lines().last().unwrap_or("no output"));
    }
    let mut res = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).context("baseline printed bad JSON")?;
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let ms: Vec<f64> =
            v["ms"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
        if !ms.is_empty() {
            res.insert(name, ms);
        }
    }
    Ok(res)
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.list {
        ITEMS.iter().for_each(|(n, _)| println!("{n}"));
        return Ok(());
    }
    let selected: Vec<&Item> = match &a.only {
        None => ITEMS.iter().collect(),
        Some(list) => list
            .split(',')
            .map(|n| {
                ITEMS
                    .iter()
                    .find(|(name, _)| *name == n.trim())
                    .with_context(|| format!("--only: unknown item '{n}' (see --list)"))
            })
            .collect::<Result<_>>()?,
    };
    if a.threads == 0 || a.reps == 0 {
        bail!("--threads and --reps must be at least 1");
    }
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global();
    let mut ctx = Ctx::default();
    let mut ours: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, make) in &selected {
        let mut f = make(&mut ctx)?;
        f()?; // warm-up
        let reps = if name.starts_with("tok_") { a.reps.min(3) } else { a.reps };
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        eprintln!("bench: {name}: {:.1} ms (min)", min_median(&ms).0);
        ours.push((name, ms));
    }
    drop(ctx);
    // ask the baseline for the items it has (the `_openblas` and `_candle_nograd` rows are ours only)
    let names: Vec<&str> =
        ours.iter().map(|(n, _)| *n).filter(|n| !n.ends_with("_openblas") && !n.ends_with("_nograd")).collect();
    let base = if a.no_baseline {
        BTreeMap::new()
    } else {
        run_baseline(&a, &names).unwrap_or_else(|e| {
            eprintln!("bench: no PyTorch baseline ({e:#}); see bench/README.md to install it");
            BTreeMap::new()
        })
    };
    println!("| item | gen min / median (ms) | torch min / median (ms) | ratio torch/gen (min) |");
    println!("|---|---|---|---|");
    for (name, ms) in &ours {
        let (gmin, gmed) = min_median(ms);
        match base.get(name.trim_end_matches("_openblas").replace("_candle_nograd", "_fwd").as_str()) {
            Some(t) => {
                let (tmin, tmed) = min_median(t);
                println!("| {name} | {gmin:.1} / {gmed:.1} | {tmin:.1} / {tmed:.1} | {:.2} |", tmin / gmin);
            }
            None => println!("| {name} | {gmin:.1} / {gmed:.1} | – | – |"),
        }
    }
    Ok(())
}
