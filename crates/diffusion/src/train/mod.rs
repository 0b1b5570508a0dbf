//! `gen train --model dit|sit|ldm`: the official training objectives on latent shards, on the shared
//! training module (checkpointable AdamW, warmup + cosine, an EMA of the weights saved with every
//! checkpoint, atomic checkpoints, exact `--resume`, NaN stop), with label dropout to the null class
//! for classifier-free guidance. Each step splits its batch over the CPU threads.
//!
//! - DiT: t ~ U{0..999}, x_t = q_sample(x₀, t, ε), loss = MSE on ε + the VB term of the learned variance.
//! - SiT: x₀ ~ N(0, I) is the noise end, t ~ U[t0, t1], loss of the transport's prediction.
//! - LDM: t ~ U{0..999}, loss = MSE on ε (`p_losses`, l2, logvar 0).

pub mod config;
pub mod init;
pub mod stream;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use gen_nn::{Params, Weights};
use gen_runtime::model_dir::NewModelDir;
use gen_runtime::{Error, Result, Rng};
use gen_train::{AdamW, LoopConfig, StepOutput, Trainer, WeightEma};
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::dit::Dit;
use crate::gaussian::GaussianDiffusion;
use crate::ldm::schedule::LdmSchedule;
use crate::ldm::Ldm;
use crate::sit::Sit;
use crate::transport::Transport;
pub use config::{Arch, DiffusionTrainConfig, ModelSpec, SitArch};
pub use gen_train::OpenMode;
pub use stream::LatentStream;

/// A run folder's `config.toml`: the config file plus what the shards fixed (its hash guards `--resume`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: DiffusionTrainConfig,
    pub arch: Arch,
    pub tokenizer_sha256: String,
    pub class_names: Vec<String>,
    pub images: usize,
}

/// The network being trained and its objective.
enum Net {
    Dit(Dit, GaussianDiffusion),
    Sit(Sit, Transport),
    Ldm(Ldm, LdmSchedule),
}

impl Net {
    fn build(arch: &Arch, vb: candle_nn::VarBuilder) -> Result<Net> {
        Ok(match arch {
            Arch::Dit(c) => Net::Dit(
                Dit::new(vb, c)?,
                GaussianDiffusion::dit("", c.learn_sigma).map_err(|e| Error::invalid(e.to_string()))?,
            ),
            Arch::Sit(s) => {
                Net::Sit(Sit::new(vb, &s.net)?, Transport::new(s.path, s.prediction, s.loss_weight, None, None))
            }
            Arch::Ldm(c) => Net::Ldm(Ldm::new(vb, c)?, LdmSchedule::new(c)),
        })
    }

    /// The mean training loss of a batch: x₀ (data), the noise, per-row times (steps or transport
    /// times) and labels (dropout already applied).
    fn loss(&self, x0: &Tensor, noise: &Tensor, t: &[f64], y: &Tensor) -> candle_core::Result<Tensor> {
        let steps = || t.iter().map(|&v| v as usize).collect::<Vec<usize>>();
        let times = |v: Vec<f32>| Tensor::from_vec(v, t.len(), x0.device());
        match self {
            Net::Dit(m, d) => {
                let t = steps();
                let xt = d.q_sample(x0, &t, noise)?;
                let out = m.forward(&xt, &d.model_timesteps(&t, x0.device())?, y)?;
                d.training_losses(&out, x0, &xt, &t, noise)?.loss.mean_all()
            }
            Net::Sit(m, tr) => {
                // SiT's x0 is the noise end and x1 the data
                let (xt, ut) = tr.plan(t, noise, x0)?;
                let out = m.forward(&xt, &times(t.iter().map(|&v| v as f32).collect())?, y)?;
                tr.loss(&out, t, noise, &ut)?.mean_all()
            }
            Net::Ldm(m, s) => {
                let t = steps();
                let xt = s.q_sample(x0, &t, noise)?;
                let out = m.forward(&xt, &times(t.iter().map(|&v| v as f32).collect())?, y)?;
                s.loss_per_sample(&out, noise)?.mean_all()
            }
        }
    }

    /// A row's time: a diffusion step, or a transport time in [t0, t1].
    fn draw_time(&self, rng: &mut Rng) -> f64 {
        match self {
            Net::Dit(_, d) => rng.below(d.num_steps() as u64) as f64,
            Net::Ldm(_, s) => rng.below(s.schedule.len() as u64) as f64,
            Net::Sit(_, tr) => tr.train_times(&[rng.uniform()])[0],
        }
    }
}

/// A diffusion training run.
pub struct DiffusionTrainer {
    pub trainer: Trainer,
    pub config: RunConfig,
    net: Net,
    /// Tensors the optimizer does not train (DiT's fixed `pos_embed`), exported as they are.
    constants: Vec<(String, Tensor)>,
    data: LatentStream,
}

impl DiffusionTrainer {
    /// Opens the run in `root` (new, resumed, or only inspected) on latent shards `data`.
    pub fn open(train: DiffusionTrainConfig, data: LatentStream, root: &Path, mode: OpenMode) -> Result<Self> {
        let m = &data.manifest;
        let (channels, side) = data.latent()?;
        let arch = train.arch(channels, side, m.num_classes)?;
        let config = RunConfig {
            train,
            arch: arch.clone(),
            tokenizer_sha256: m.tokenizer_sha256.clone(),
            class_names: m.class_names.clone(),
            images: data.len(),
        };
        let dev = Device::Cpu;
        let (run, ckpt) = match mode {
            OpenMode::Resume => gen_train::RunDir::resume(root, &config, &dev)?,
            OpenMode::Inspect => gen_train::RunDir::inspect(root, &config, &dev)?,
            OpenMode::New => (gen_train::RunDir::create(root, &config)?, None),
        };
        let t = &config.train.train;
        let mut rng = Rng::new(t.seed);
        let tensors = init::init_tensors(&arch, &mut rng)?;
        let (params, all) = Params::from_tensors(&tensors, |n| n != "pos_embed")?;
        let constants: Vec<(String, Tensor)> =
            tensors.iter().filter(|(n, _)| n.as_str() == "pos_embed").map(|(n, v)| (n.clone(), v.clone())).collect();
        let w = Weights::new("init", all);
        let net = Net::build(&arch, w.var_builder(DType::F32, &dev))?;
        let unused = w.unused();
        if !unused.is_empty() {
            return Err(Error::invalid(format!("initial weights the network never read: {unused:?}")));
        }
        let opt = AdamW::new(params.vars.clone(), config.train.optim.adamw())?;
        let loop_cfg =
            LoopConfig { total_steps: t.steps, log_every: t.log_every, checkpoint_every: t.checkpoint_every };
        let mut trainer = Trainer::new(run, params.vars, opt, config.train.schedule(), loop_cfg, rng);
        trainer.ema = Some(WeightEma::new(&trainer.model, t.ema)?);
        if let Some(c) = ckpt {
            trainer.restore(c)?;
        }
        Ok(DiffusionTrainer { trainer, config, net, constants, data })
    }

    /// The label dropout probability and the null class.
    fn dropout(&self) -> (f64, u32) {
        match &self.config.arch {
            Arch::Dit(c) => (c.class_dropout_prob, c.num_classes as u32),
            Arch::Sit(s) => (s.net.class_dropout_prob, s.net.num_classes as u32),
            Arch::Ldm(c) => match &self.config.train.model {
                ModelSpec::Ldm(l) => (l.class_dropout, c.null_class()),
                _ => (0.0, c.null_class()),
            },
        }
    }

    /// Trains until `until` steps (default: all); `on_step(step, loss)` after each.
    pub fn train(&mut self, until: Option<u64>, mut on_step: impl FnMut(u64, f64)) -> Result<()> {
        let t = self.config.train.train.clone();
        let until = until.unwrap_or(t.steps);
        let vars: Vec<Var> = self.trainer.model.iter().map(|(_, v)| v.clone()).collect();
        let (p_drop, null) = self.dropout();
        let (net, data) = (&self.net, &mut self.data);
        let dev = Device::Cpu;
        self.trainer.run_until(until, |ctx| {
            let (x0, labels) = data.next_batch(t.batch_size, ctx.epoch, ctx.cursor)?;
            let (b, per) = (labels.len(), x0.elem_count() / labels.len());
            // every draw from the run's RNG, in a fixed order: labels, times, noise
            let y: Vec<f32> = labels
                .iter()
                .map(|&l| if p_drop > 0.0 && ctx.rng.uniform() < p_drop { null as f32 } else { l as f32 })
                .collect();
            let times: Vec<f32> = (0..b).map(|_| net.draw_time(ctx.rng) as f32).collect();
            let noise = ctx.rng.randn((b, per), 1.0, &dev)?;
            // one row per image: [x₀ | noise | t | y], split over the threads
            let packed = Tensor::cat(
                &[
                    &x0.reshape((b, per))?,
                    &noise,
                    &Tensor::from_vec(times, (b, 1), &dev)?,
                    &Tensor::from_vec(y, (b, 1), &dev)?,
                ],
                1,
            )?;
            let shape = x0.dims()[1..].to_vec();
            let (loss, grads) = gen_nn::batch::par_batch_grads(&packed, &vars, |xs, share| {
                let n = xs.dim(0)?;
                let mut dims = vec![n];
                dims.extend(&shape);
                let x0 = xs.narrow(1, 0, per)?.reshape(dims.clone())?;
                let noise = xs.narrow(1, per, per)?.reshape(dims)?;
                let t: Vec<f64> =
                    xs.narrow(1, 2 * per, 1)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| f64::from(v)).collect();
                let y = xs.narrow(1, 2 * per + 1, 1)?.flatten_all()?.to_dtype(DType::U32)?;
                net.loss(&x0, &noise, &t, &y)? * share
            })?;
            on_step(ctx.step + 1, loss);
            StepOutput::with_grads(loss, grads, &dev)
        })?;
        write_plots(self.trainer.run.root(), self.config.train.kind())
    }

    /// The exported weights: the EMA average (the official evaluations sample with it) and the constants.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let dtype = if self.config.train.train.export_f16 { DType::F16 } else { DType::F32 };
        let ema = self
            .trainer
            .ema
            .as_ref()
            .map(|e| e.tensors())
            .unwrap_or_else(|| gen_train::var_tensors(&self.trainer.model));
        let mut out = ema
            .into_iter()
            .chain(self.constants.iter().cloned())
            .map(|(n, v)| Ok((n, v.to_dtype(dtype)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes the model folder `out`: config with the architecture and recommended `[sampling]`, the
    /// EMA weights, the card; `tokenizer` is recorded relative to it.
    pub fn write_model(&self, out: &Path, tokenizer: Option<&Path>, card: &str) -> Result<String> {
        let mut extra = vec![("tokenizer_sha256".to_string(), self.config.tokenizer_sha256.clone())];
        if let Some(t) = tokenizer {
            extra.push(("tokenizer".to_string(), gen_runtime::model_dir::relative_path(t, out).display().to_string()));
        }
        let names = toml::Value::try_from(&self.config.class_names).map_err(|e| Error::invalid(e.to_string()))?;
        let sampling = toml::Value::try_from(&self.config.train.sampling).map_err(|e| Error::invalid(e.to_string()))?;
        let tables = vec![("sampling".to_string(), sampling), ("class_names".to_string(), names)];
        let tensors = self.tensors()?;
        let kind = self.config.arch.kind();
        let metadata = HashMap::from([("format".to_string(), format!("gen-{}", kind.name()))]);
        let new = |a: &dyn ErasedSerialize| -> Result<String> {
            let architecture = a.to_value()?;
            NewModelDir {
                kind,
                architecture: &architecture,
                extra: extra.clone(),
                tables: tables.clone(),
                tensors: &tensors,
                metadata: metadata.clone(),
                card: card.to_string(),
            }
            .write(out)
        };
        match &self.config.arch {
            Arch::Dit(c) => new(c),
            Arch::Sit(s) => new(s),
            Arch::Ldm(c) => new(c),
        }
    }
}

/// An architecture as a TOML value (any of the three config types).
trait ErasedSerialize {
    fn to_value(&self) -> Result<toml::Value>;
}

impl<A: Serialize> ErasedSerialize for A {
    fn to_value(&self) -> Result<toml::Value> {
        toml::Value::try_from(self).map_err(|e| Error::invalid(format!("cannot write the architecture: {e}")))
    }
}

/// `loss.png` of a run folder.
pub fn write_plots(root: &Path, kind: &str) -> Result<()> {
    let lines = gen_train::plots::read_log(root)?;
    let s = gen_train::plots::present(&lines, &[("loss", 1.0)]);
    gen_runtime::plot::line_chart(&root.join("loss.png"), &format!("{kind}: training loss"), "step", "loss", &s)
}
