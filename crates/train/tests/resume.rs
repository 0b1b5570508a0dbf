//! End to end on a tiny model: a run resumed from its run folder (new structs, as a fresh process
//! would build them) ends bit-identical to an unbroken one, with the same log; a NaN loss stops the
//! run naming the step and leaves `latest` on the last good checkpoint; a half-written temp checkpoint
//! is ignored by resume.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Linear;
use gen_runtime::{Result, Rng};
use gen_train::{AdamW, AdamWConfig, LoopConfig, LrSchedule, RunDir, StepCtx, StepOutput, Trainer};
use serde::Serialize;

const N_SAMPLES: usize = 48;
const BATCH: usize = 8; // 6 batches an epoch, so a 40-step run crosses several epochs
const IN: usize = 4;
const HIDDEN: usize = 16;
const TOTAL: u64 = 40;

/// The resolved config of the toy run (its TOML text is what the config hash covers).
#[derive(Serialize, Clone)]
struct Config {
    seed: u64,
    batch: usize,
    optimizer: AdamWConfig,
    schedule: LrSchedule,
    train: LoopConfig,
}

fn config() -> Config {
    Config {
        seed: 7,
        batch: BATCH,
        optimizer: AdamWConfig { lr: 1e-2, weight_decay: 0.05, ..Default::default() },
        schedule: LrSchedule::WarmupCosine { lr: 1e-2, min_lr: 1e-4, warmup_steps: 5, total_steps: TOTAL },
        train: LoopConfig { total_steps: TOTAL, log_every: 1, checkpoint_every: 10 },
    }
}

/// Regression data: x ~ N(0, 1) [N, 4], y = sin(Σx) [N, 1], from its own seed.
struct Data {
    x: Vec<f32>,
    y: Vec<f32>,
}

fn data() -> Data {
    let mut rng = Rng::new(1234);
    let x: Vec<f32> = (0..N_SAMPLES * IN).map(|_| rng.normal() as f32).collect();
    let y = x.chunks(IN).map(|r| r.iter().sum::<f32>().sin()).collect();
    Data { x, y }
}

/// The sample order of an epoch: a shuffle from a seed derived from the epoch, so the cursor alone
/// says where a resumed run is inside it.
fn epoch_order(seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..N_SAMPLES).collect();
    for i in (1..N_SAMPLES).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// A 2-layer MLP 4 → 16 → 1 (tanh), its weights drawn from `init_seed`.
struct Mlp {
    vars: Vec<(String, Var)>,
}

impl Mlp {
    fn new(init_seed: u64) -> Mlp {
        let mut rng = Rng::new(init_seed);
        let dev = Device::Cpu;
        let mut var = |shape: &[usize], std: f64| Var::from_tensor(&rng.randn(shape, std, &dev).unwrap()).unwrap();
        let vars = vec![
            ("fc1.bias".to_string(), var(&[HIDDEN], 0.1)),
            ("fc1.weight".to_string(), var(&[HIDDEN, IN], 0.5)),
            ("fc2.bias".to_string(), var(&[1], 0.1)),
            ("fc2.weight".to_string(), var(&[1, HIDDEN], 0.25)),
        ];
        Mlp { vars }
    }

    fn var(&self, name: &str) -> Tensor {
        self.vars.iter().find(|(n, _)| n == name).unwrap().1.as_tensor().clone()
    }

    /// x [B, 4] → [B, 1]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let fc1 = Linear::new(self.var("fc1.weight"), Some(self.var("fc1.bias")));
        let fc2 = Linear::new(self.var("fc2.weight"), Some(self.var("fc2.bias")));
        fc2.forward(&fc1.forward(x)?.tanh()?) // [B, 16] → [B, 1]
    }

    fn bits(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (_, v) in &self.vars {
            out.extend(v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()));
        }
        out
    }
}

/// Everything a trainer process builds before it looks at the run folder.
fn build(root: &Path, resume: bool, init_seed: u64) -> (Trainer, Mlp) {
    let cfg = config();
    let mlp = Mlp::new(init_seed);
    let opt =
        AdamW::new(mlp.vars.clone(), cfg.optimizer.clone()).unwrap().with_no_decay(["fc1.bias", "fc2.bias"]).unwrap();
    let (run, ckpt) = if resume {
        RunDir::resume(root, &cfg, &Device::Cpu).unwrap()
    } else {
        (RunDir::create(root, &cfg).unwrap(), None)
    };
    let mut trainer = Trainer::new(run, mlp.vars.clone(), opt, cfg.schedule, cfg.train, Rng::new(cfg.seed));
    if let Some(ckpt) = ckpt {
        trainer.restore(ckpt).unwrap();
    }
    (trainer, mlp)
}

/// One training step: the next minibatch of this epoch's order, input noise from the run's RNG (so the
/// RNG state matters), mean squared error. `nan_at` poisons the loss at that step index.
fn step_fn<'a>(
    mlp: &'a Mlp,
    data: &'a Data,
    nan_at: Option<u64>,
) -> impl FnMut(&mut StepCtx) -> Result<StepOutput> + 'a {
    move |ctx: &mut StepCtx| {
        let order = epoch_order(config().seed, *ctx.epoch);
        let start = *ctx.cursor as usize;
        let idx = &order[start..start + BATCH];
        *ctx.cursor += BATCH as u64;
        if *ctx.cursor as usize >= N_SAMPLES {
            *ctx.epoch += 1;
            *ctx.cursor = 0;
        }
        let dev = Device::Cpu;
        let x: Vec<f32> = idx.iter().flat_map(|&i| data.x[i * IN..(i + 1) * IN].iter().copied()).collect();
        let y: Vec<f32> = idx.iter().map(|&i| data.y[i]).collect();
        let x = (Tensor::from_vec(x, (BATCH, IN), &dev)? + ctx.rng.randn((BATCH, IN), 0.05, &dev)?)?;
        let y = Tensor::from_vec(y, (BATCH, 1), &dev)?;
        let mut loss = (mlp.forward(&x)? - y)?.sqr()?.mean_all()?;
        if nan_at == Some(ctx.step) {
            loss = (loss * f64::NAN)?;
        }
        let wnorm = mlp.var("fc1.weight").sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(StepOutput { loss, metrics: vec![("fc1_weight_sq".into(), wnorm)], grads: None })
    }
}

fn temp_root(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gen-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn latest(root: &Path) -> String {
    read(root.join("checkpoints/latest")).trim().to_string()
}

/// Count of f32 weights whose bits differ, and the largest absolute difference.
fn compare(a: &[u32], b: &[u32]) -> (usize, f32) {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let max = a.iter().zip(b).map(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs()).fold(0f32, f32::max);
    (diff, max)
}

#[test]
fn resumed_run_is_bit_identical_to_an_unbroken_one() {
    let data = data();

    let straight_root = temp_root("straight");
    let (mut t, mlp) = build(&straight_root, false, 0);
    t.run(step_fn(&mlp, &data, None)).unwrap();
    let straight = mlp.bits();
    let straight_log = read(straight_root.join("log.jsonl"));
    assert_eq!(straight_log.lines().count(), TOTAL as usize);
    let first: f64 = serde_json::from_str::<serde_json::Value>(straight_log.lines().nth(4).unwrap()).unwrap()["loss"]
        .as_f64()
        .unwrap();
    let last: f64 = serde_json::from_str::<serde_json::Value>(straight_log.lines().last().unwrap()).unwrap()["loss"]
        .as_f64()
        .unwrap();
    assert!(last < first, "the toy model learns: loss {first} → {last}");

    // N/2 steps, checkpoint, a fresh "process" (other init seed: the weights must come from the
    // checkpoint), N/2 more.
    let split_root = temp_root("split");
    let (mut t, mlp) = build(&split_root, false, 0);
    t.run_until(TOTAL / 2, step_fn(&mlp, &data, None)).unwrap();
    assert_eq!(latest(&split_root), "step-00000020");
    drop((t, mlp));
    let (mut t, mlp) = build(&split_root, true, 999);
    assert_eq!(t.progress.step, TOTAL / 2);
    t.run(step_fn(&mlp, &data, None)).unwrap();
    let (differing, max_abs) = compare(&straight, &mlp.bits());
    println!("resume at step 20: {differing} of {} f32 weights differ in bits, max |diff| {max_abs}", straight.len());
    assert_eq!(differing, 0);
    let split_log = read(split_root.join("log.jsonl"));
    let half = TOTAL as usize / 2;
    let second_half = |log: &str| log.lines().skip(half).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(second_half(&split_log), second_half(&straight_log));
    assert_eq!(split_log, straight_log);

    // A crash between checkpoints: stopped at 25, the last checkpoint is 20; the resume replays 21..25.
    let crash_root = temp_root("crash");
    let (mut t, mlp) = build(&crash_root, false, 0);
    t.run_until(25, step_fn(&mlp, &data, None)).unwrap();
    assert_eq!(read(crash_root.join("log.jsonl")).lines().count(), 25);
    drop((t, mlp));
    let (mut t, mlp) = build(&crash_root, true, 999);
    assert_eq!(t.progress.step, 20);
    assert_eq!(read(crash_root.join("log.jsonl")).lines().count(), 20, "lines past the checkpoint are dropped");
    t.run(step_fn(&mlp, &data, None)).unwrap();
    let (differing, max_abs) = compare(&straight, &mlp.bits());
    println!("resume at step 20 after a stop at 25: {differing} differ, max |diff| {max_abs}");
    assert_eq!(differing, 0);
    assert_eq!(read(crash_root.join("log.jsonl")), straight_log);

    for root in [straight_root, split_root, crash_root] {
        std::fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let data = data();
    let root = temp_root("nan");
    let (mut t, mlp) = build(&root, false, 0);
    let before = mlp.bits();
    let err = t.run(step_fn(&mlp, &data, Some(12))).unwrap_err().to_string();
    assert!(err.starts_with("step 13: the loss is NaN"), "{err}");
    assert!(err.contains("step-00000010") && !err.contains('\n'), "{err}");
    assert_eq!(latest(&root), "step-00000010");
    assert_eq!(t.progress.step, 12, "the poisoned step took no update");
    assert_ne!(mlp.bits(), before);
    let names: Vec<String> = std::fs::read_dir(root.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(names, ["step-00000010"]);
    // and the run resumes from it
    let (t, _) = build(&root, true, 999);
    assert_eq!(t.progress.step, 10);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn resume_ignores_a_half_written_temp_checkpoint() {
    let data = data();
    let root = temp_root("torn");
    let (mut t, mlp) = build(&root, false, 0);
    t.run_until(10, step_fn(&mlp, &data, None)).unwrap();
    let at_10 = mlp.bits();
    drop((t, mlp));
    // what a process killed while writing step 20 leaves: a temp folder with a torn model file, no state
    let torn = root.join("checkpoints/.step-00000020.tmp-4242");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"fc1").unwrap();

    let (t, mlp) = build(&root, true, 999);
    assert_eq!(t.progress.step, 10);
    assert_eq!(mlp.bits(), at_10);
    assert!(!torn.exists(), "the stale temp folder is cleaned up");
    std::fs::remove_dir_all(root).unwrap();
}
