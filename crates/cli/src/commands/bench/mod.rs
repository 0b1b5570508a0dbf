//! `gen bench`: our kernels and models side by side with a Python baseline (`bench/*.py`: PyTorch, and
//! pytorch-fid / SciPy for the evaluator), on the same machine at the same thread count, as a table of
//! times and ratios (baseline / ours). Items are grouped by model family, one file each (`kernels.rs`,
//! `tokenizer.rs`, `fid.rs`; later models add theirs), and each family names its baseline script.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use clap::Args;
use gen_runtime::Rng;
use gen_tokenizer::VqModel;

mod diffusion;
mod fid;
mod gpt;
mod kernels;
mod tokenizer;

#[derive(Args)]
pub struct BenchArgs {
    /// Run only these items (comma-separated); `--list` shows the names.
    #[arg(long)]
    pub only: Option<String>,
    /// Threads for both sides (rayon and torch.set_num_threads).
    #[arg(long, default_value_t = 2, value_parser = crate::args::at_least_one)]
    pub threads: usize,
    /// Timed repetitions per item (after one warm-up); tokenizer items use at most 3.
    #[arg(long, default_value_t = 5, value_parser = crate::args::at_least_one)]
    pub reps: usize,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// The folder of the baseline scripts (each family names its own).
    #[arg(long, default_value = "bench")]
    pub baseline_dir: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// List the items and exit.
    #[arg(long)]
    pub list: bool,
}

/// A named benchmark: makes the closure that is timed.
type Item = (&'static str, fn(&mut Ctx) -> Result<Timed>);
type Timed = Box<dyn FnMut() -> Result<()>>;

/// Shared state: the random-weight f16 tokenizer is built once (its 100k codebook takes a while).
#[derive(Default)]
struct Ctx {
    tokenizer: Option<std::rc::Rc<BenchTokenizer>>,
    /// The official-size GPT with random weights, in one dtype at a time.
    gpt: Option<(candle_core::DType, std::rc::Rc<gen_prior::Gpt>)>,
}

/// The inference model (projection frozen), the trainable model, and its parameters.
type BenchTokenizer = (VqModel, VqModel, Vec<(String, Var)>);

/// A model family's items and the baseline script (in `--baseline-dir`) that times the same workloads.
struct Family {
    name: &'static str,
    baseline: &'static str,
    items: &'static [Item],
}

/// Every item, by model family: `--only` takes item names or family names.
const FAMILIES: &[Family] = &[
    Family { name: "kernels", baseline: "torch_bench.py", items: kernels::ITEMS },
    Family { name: "tokenizer", baseline: "torch_bench.py", items: tokenizer::ITEMS },
    Family { name: "fid", baseline: "fid_bench.py", items: fid::ITEMS },
    Family { name: "gpt", baseline: "gpt_bench.py", items: gpt::ITEMS },
    Family { name: "diffusion", baseline: "diffusion_bench.py", items: diffusion::ITEMS },
];

fn all_items() -> impl Iterator<Item = (&'static Family, &'static Item)> {
    FAMILIES.iter().flat_map(|family| family.items.iter().map(move |item| (family, item)))
}

pub(super) fn rand(rng: &mut Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    Ok(rng.randn(shape, std, &Device::Cpu)?)
}

/// The process's peak resident memory (`VmHWM`), in MB; 0 where /proc is not there.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn min_median(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn run_baseline(a: &BenchArgs, script: &str, names: &[&str]) -> Result<BTreeMap<String, Vec<f64>>> {
    let script = a.baseline_dir.join(script);
    let out = Command::new(&a.python)
        .arg(&script)
        .args(["--threads", &a.threads.to_string(), "--reps", &a.reps.to_string(), "--only", &names.join(",")])
        .output()
        .with_context(|| format!("cannot run {} {}", a.python, script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} failed: {}", script.display(), err.lines().last().unwrap_or("no output"));
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

pub fn run(a: BenchArgs) -> Result<()> {
    if a.list {
        all_items().for_each(|(family, (n, _))| println!("{}\t{n}", family.name));
        return Ok(());
    }
    let selected: Vec<(&Family, &Item)> = match &a.only {
        None => all_items().collect(),
        Some(list) => {
            let mut chosen = Vec::new();
            for n in list.split(',').map(str::trim) {
                let matching: Vec<(&Family, &Item)> =
                    all_items().filter(|(family, (name, _))| *name == n || family.name == n).collect();
                if matching.is_empty() {
                    bail!("--only: unknown item or family '{n}' (see --list)");
                }
                chosen.extend(matching);
            }
            chosen
        }
    };
    eprintln!("bench: {} threads, GEMM: {}", a.threads, gen_nn::kernels::gemm::backend());
    let mut ctx = Ctx::default();
    let mut ours: Vec<(&str, &str, Vec<f64>)> = Vec::new(); // (name, baseline script, times)
    for (family, (name, make)) in &selected {
        let mut f = make(&mut ctx)?;
        f()?; // warm-up
        let reps = match name.split('_').next() {
            Some("tok" | "fid") => a.reps.min(3),
            Some("gpt" | "dit" | "ldm") => a.reps.min(2), // seconds to minutes each
            _ => a.reps,
        };
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        eprintln!("bench: {name}: {:.1} ms (min), peak RSS so far {:.0} MB", min_median(&ms).0, peak_rss_mb());
        ours.push((name, family.baseline, ms));
    }
    drop(ctx);
    // ask each baseline script for the items it has (the `_openblas` and `_candle_nograd` rows are ours only)
    let mut base = BTreeMap::new();
    let mut scripts: Vec<&str> = ours.iter().map(|(_, s, _)| *s).collect();
    scripts.sort_unstable();
    scripts.dedup();
    for script in scripts.into_iter().filter(|_| !a.no_baseline) {
        let names: Vec<&str> = ours
            .iter()
            .filter(|(n, s, _)| *s == script && !n.ends_with("_openblas") && !n.ends_with("_nograd"))
            .map(|(n, _, _)| *n)
            .collect();
        match run_baseline(&a, script, &names) {
            Ok(times) => base.extend(times),
            Err(e) => eprintln!("bench: no baseline from {script} ({e:#}); see bench/README.md to install it"),
        }
    }
    println!("| item | gen min / median (ms) | baseline min / median (ms) | ratio baseline/gen (min) |");
    println!("|---|---|---|---|");
    for (name, _, ms) in &ours {
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
