//! Tokenizer training, the official recipe (`engine_training_vqgan.train_one_epoch`, `VQModel.forward`):
//!
//! - generator loss `L1 + rate_p·LPIPS + rate_q·qloss + d_weight·g_loss`, with
//!   `d_weight = rate_d · clamp(‖∇_W nll‖ / (‖∇_W g_loss‖ + 1e-4), 0, 1e4)` on `W = decoder.conv_out.weight`
//!   and `nll = L1 + rate_p·LPIPS`; the GAN term and the discriminator step only after `disc_start`;
//! - the discriminator: hinge loss on real images and the (detached) reconstructions, in train mode.
//!
//! How the gradients are assembled (one backward through the tokenizer per step): the losses that look
//! at the reconstruction are differentiated first with respect to the reconstruction alone (a detached
//! leaf), giving `g_nll` and `g_gan`; their gradients on `conv_out.weight` follow from the layer's input
//! by one weight-gradient each, which gives `d_weight`; then one backward of
//! `Σ xrec · (g_nll + d_weight·g_gan) + rate_q·qloss` fills every tokenizer gradient. This equals the
//! official gradient of its summed loss.
//!
//! One deviation, to save a forward pass: the official discriminator step re-runs the tokenizer after
//! the generator's update to get its fake images; here it reuses the step's reconstructions.

pub mod config;
pub mod data;
pub mod init;
mod plots;
mod step;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use gen_eval::lpips::Lpips;
use gen_nn::{Params, Weights};
use gen_runtime::{Error, Result, Rng};
use gen_train::adamw::AdamW;
use gen_train::run::{Checkpoint, Progress, RunDir};
use gen_train::schedule::warmup_cosine;
use gen_train::vars::{load_vars, var_tensors};

use crate::discriminator::{self, Discriminator, NDF, N_LAYERS};
use crate::load::TokenizerWeights;
use crate::model::VqModel;
use crate::quantizer::Quantizer;
use crate::usage::CodeUsage;
pub use config::TrainConfig;
use data::{next_batch, TrainImages};
pub use plots::write_plots;
pub use step::StepStats;

/// Code usage over a window of steps and over the current epoch.
struct Usage {
    window: CodeUsage,
    epoch: CodeUsage,
}

impl Usage {
    fn new(n: usize) -> Self {
        Usage { window: CodeUsage::new(n), epoch: CodeUsage::new(n) }
    }
    fn add(&mut self, ids: &[u32]) {
        self.window.add(ids);
        self.epoch.add(ids);
    }
}

pub struct TokenizerTrainer {
    pub cfg: TrainConfig,
    pub model: VqModel,
    ae: Vec<(String, Var)>,
    disc: Option<Gan>,
    opt_ae: AdamW,
    lpips: Option<Lpips>,
    pub run: RunDir,
    pub progress: Progress,
    rng: Rng,
    usage: Usage,
    order: Option<(u64, Vec<usize>)>,
    /// The last finished epoch's utilisation, for the next log line.
    epoch_fields: serde_json::Map<String, serde_json::Value>,
    dev: Device,
}

/// The discriminator, its parameters and its optimizer.
struct Gan {
    net: Discriminator,
    vars: Vec<(String, Var)>,
    opt: AdamW,
}

/// The prefix of the discriminator's tensors in checkpoints (the official state-dict key).
const DISC: &str = "discriminator.";

impl TokenizerTrainer {
    /// A run in `root`: started fresh, or continued from its newest checkpoint with `resume` (refused when
    /// the config differs from the one it was started with). `lpips`: the perceptual network, when the
    /// user gave its weights.
    pub fn open(mut cfg: TrainConfig, root: &Path, resume: bool, lpips: Option<Lpips>, dev: &Device) -> Result<Self> {
        cfg.validate()?;
        let codebook = match &cfg.codebook.file {
            Some(f) => {
                let path = Path::new(f);
                cfg.codebook.sha256 = Some(gen_runtime::io::sha256_file(path)?);
                Some(init::read_frozen_codebook(path, &cfg.model)?)
            }
            None => None,
        };
        let seed = cfg.train.seed;
        let tensors = init::initial_weights(&cfg.model, codebook, seed)?;
        let (params, tensors) = Params::from_tensors(&tensors, |n| init::trainable(&cfg.model, n))?;
        let model = VqModel::new(Weights::new("initial weights", tensors).var_builder(DType::F32, dev), &cfg.model)?;
        if let Quantizer::Ema(q) = &model.quantizer {
            q.lock().map_err(|_| Error::Invalid("EMA state poisoned".into()))?.updating = true;
        }
        let adam = cfg.optim.adamw();
        let opt_ae = AdamW::new(params.vars.clone(), adam.clone())?;
        let disc = if cfg.loss.rate_d > 0.0 {
            let mut rng = Rng::new(seed ^ 0xD15C);
            let t: HashMap<String, Tensor> = discriminator::init(cfg.model.out_ch, NDF, N_LAYERS, &mut rng)?
                .into_iter()
                .map(|(k, v)| (format!("{DISC}{k}"), v))
                .collect();
            let (p, t) = Params::from_tensors(&t, |n| !n.contains("running_"))?;
            let vb = Weights::new("initial discriminator", t).var_builder(DType::F32, dev);
            let d = Discriminator::new(vb.pp("discriminator"), cfg.model.out_ch, NDF, N_LAYERS)?;
            let opt = AdamW::new(p.vars.clone(), adam)?;
            Some(Gan { net: d, vars: p.vars, opt })
        } else {
            None
        };
        let n_codes = cfg.model.codebook_size;
        let (run, ckpt) = if resume { RunDir::resume(root, &cfg, dev)? } else { (RunDir::create(root, &cfg)?, None) };
        let mut t = TokenizerTrainer {
            cfg,
            model,
            ae: params.vars,
            disc,
            opt_ae,
            lpips,
            run,
            progress: Progress::default(),
            rng: Rng::new(seed ^ 0x7EA1),
            usage: Usage::new(n_codes),
            order: None,
            epoch_fields: serde_json::Map::new(),
            dev: dev.clone(),
        };
        if let Some(c) = ckpt {
            t.restore(c)?;
        }
        Ok(t)
    }

    fn restore(&mut self, c: Checkpoint) -> Result<()> {
        let (mp, op) = (c.model_path(), c.optimizer_path());
        load_vars(&self.ae, &c.model, &mp)?;
        self.opt_ae.load_state_tensors(&c.optimizer, &op)?;
        if let Some(gan) = &mut self.disc {
            load_vars(&gan.vars, &c.model, &mp)?;
            gan.opt.load_state_tensors(&c.optimizer, &op)?;
            gan.net.set_running_stats(DISC, &c.model).map_err(|e| Error::format(&mp, e.to_string()))?;
        }
        if let Quantizer::Ema(q) = &self.model.quantizer {
            let get = |k: &str| {
                c.model.get(k).cloned().ok_or_else(|| Error::MissingKey {
                    path: mp.clone(),
                    key: k.into(),
                    expected: None,
                })
            };
            let mut state = crate::quantizer::EmaQuantizer::from_state(
                &get("tok_embeddings.weight")?,
                &get("cluster_size")?,
                &get("embed_avg")?,
            )?;
            state.updating = true;
            *q.lock().map_err(|_| Error::Invalid("EMA state poisoned".into()))? = state;
        }
        self.rng = c.rng;
        self.progress = c.progress;
        Ok(())
    }

    /// Everything a resumed run needs besides the optimizer moments.
    fn model_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = var_tensors(&self.ae);
        if let Some(gan) = &self.disc {
            out.extend(var_tensors(&gan.vars));
            out.extend(gan.net.running_stats(DISC));
        }
        if let Quantizer::Ema(q) = &self.model.quantizer {
            let q = q.lock().map_err(|_| Error::Invalid("EMA state poisoned".into()))?;
            let [e, cs, avg] = q.state(&Device::Cpu)?;
            out.extend([("tok_embeddings.weight".into(), e), ("cluster_size".into(), cs), ("embed_avg".into(), avg)]);
        }
        Ok(out)
    }

    fn optimizer_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.opt_ae.state_tensors()?;
        if let Some(gan) = &self.disc {
            out.extend(gan.opt.state_tensors()?);
        }
        Ok(out)
    }

    /// `projector_init = "latent-moments"`: rescales the projector's last layer so P(E) has the per-channel
    /// mean and standard deviation of the latents of `x` (run once, before the first step).
    fn match_projector_to_latents(&mut self, x: &Tensor) -> Result<()> {
        let Some(lc) = self.model.quantizer.as_lc() else { return Ok(()) };
        let moments = |t: &Tensor| -> Result<(Vec<f64>, Vec<f64>)> {
            let t = t.to_dtype(DType::F64)?;
            let mean = t.mean(0)?;
            let std = t.broadcast_sub(&mean)?.sqr()?.mean(0)?.sqrt()?;
            Ok((mean.to_vec1::<f64>()?, std.to_vec1::<f64>()?))
        };
        let z = gen_nn::kernels::gemm::serial(|| crate::quantizer::rows(&self.model.encode_latent(x)?))?;
        let (mz, sz) = moments(&z)?;
        let (mp, sp) = moments(&lc.project()?.detach())?;
        let last = if self.ae.iter().any(|(n, _)| n == "codebook_projection.2.weight") {
            "codebook_projection.2"
        } else {
            "codebook_projection"
        };
        let find = |name: String| {
            self.ae
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| Error::Invalid(format!("no trainable {name}")))
        };
        let (w, b) = (find(format!("{last}.weight"))?, find(format!("{last}.bias"))?);
        let scale: Vec<f64> = sz.iter().zip(&sp).map(|(z, p)| if *p > 0.0 { z / p } else { 1.0 }).collect();
        let shift: Vec<f64> = (0..scale.len()).map(|j| mz[j] - mp[j] * scale[j]).collect();
        let dev = w.device().clone();
        let s = Tensor::from_vec(scale.iter().map(|&v| v as f32).collect::<Vec<_>>(), (scale.len(), 1), &dev)?;
        w.set(&w.as_tensor().broadcast_mul(&s)?)?;
        let shift = Tensor::from_vec(shift.iter().map(|&v| v as f32).collect::<Vec<_>>(), scale.len(), &dev)?;
        b.set(&((b.as_tensor() * s.flatten_all()?)? + shift)?)?;
        Ok(())
    }

    /// Writes a checkpoint and refreshes the run's plots.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let dir =
            self.run.save_checkpoint(&self.progress, &self.rng, &self.model_tensors()?, &self.optimizer_tensors()?)?;
        write_plots(self.run.root())?;
        Ok(dir)
    }

    /// Trains until `until` steps (at most the config's), logging and checkpointing; `on_log(step, line)`
    /// sees every log line (the CLI's progress bar).
    pub fn train(
        &mut self,
        data: &TrainImages,
        until: u64,
        mut on_log: impl FnMut(u64, &serde_json::Map<String, serde_json::Value>),
    ) -> Result<()> {
        let (steps, batch) = (self.cfg.train.steps, self.cfg.train.batch_size);
        let until = until.min(steps);
        let warmup = self.cfg.optim.warmup_steps.min(steps.saturating_sub(1));
        while self.progress.step < until {
            let step = self.progress.step;
            let lr = warmup_cosine(step, self.cfg.optim.lr, self.cfg.optim.min_lr, warmup, steps);
            self.opt_ae.set_lr(lr);
            if let Some(gan) = &mut self.disc {
                gan.opt.set_lr(lr);
            }
            let epoch_before = self.progress.epoch;
            let ids = {
                let Progress { epoch, cursor, .. } = &mut self.progress;
                next_batch(data.len(), batch, self.cfg.train.seed, epoch, cursor, &mut self.order)?
            };
            if self.progress.epoch != epoch_before {
                // an epoch ended: its utilisation rides on the next log line
                let u = &mut self.usage.epoch;
                self.epoch_fields.insert("epoch_active_codes".into(), u.active().into());
                self.epoch_fields.insert("epoch_utilization".into(), u.utilization().into());
                self.epoch_fields.insert("epoch_perplexity".into(), u.perplexity().into());
                u.clear();
            }
            let x = data.batch(&ids, self.cfg.model.resolution, &self.dev)?;
            if step == 0 && self.cfg.codebook.projector_init == config::ProjectorInit::LatentMoments {
                self.match_projector_to_latents(&x)?;
            }
            let (stats, codes) = self.step(&x, step)?;
            self.usage.add(&codes);
            let number = step + 1;
            self.progress.step = number;
            let log_every = self.cfg.train.log_every;
            if (log_every > 0 && number.is_multiple_of(log_every)) || number == steps {
                let mut fields = std::mem::take(&mut self.epoch_fields);
                let u = &mut self.usage.window;
                let (active, util, ppl) = (u.active(), u.utilization(), u.perplexity());
                u.clear();
                fields.insert("epoch".into(), self.progress.epoch.into());
                fields.insert("lr".into(), lr.into());
                fields.insert("loss".into(), stats.loss.into());
                fields.insert("rec_loss".into(), stats.rec.into());
                fields.insert("q_loss".into(), stats.q.into());
                for (k, v) in
                    [("p_loss", stats.p), ("g_loss", stats.g), ("d_loss", stats.d), ("d_weight", stats.d_weight)]
                {
                    if let Some(v) = v {
                        fields.insert(k.into(), v.into());
                    }
                }
                fields.insert("window_active_codes".into(), active.into());
                fields.insert("window_utilization".into(), util.into());
                fields.insert("window_perplexity".into(), ppl.into());
                self.run.log(number, &fields)?;
                on_log(number, &fields);
            }
            let every = self.cfg.train.checkpoint_every;
            if (every > 0 && number.is_multiple_of(every)) || number == steps {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// The trained tokenizer as loadable weights (official names; EMA rows and averages included).
    pub fn weights(&self) -> Result<TokenizerWeights> {
        let mut tensors: HashMap<String, Tensor> =
            self.model_tensors()?.into_iter().filter(|(k, _)| !k.starts_with(DISC)).collect();
        if let Some(lc) = self.model.quantizer.as_lc() {
            if let Some(cb) = &lc.tok_embeddings {
                tensors.insert("tok_embeddings.weight".into(), cb.clone());
            }
        }
        Ok(TokenizerWeights { source: self.run.root().to_path_buf(), config: self.cfg.model.clone(), tensors })
    }
}
