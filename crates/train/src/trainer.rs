//! The training loop every trainer shares: set the scheduled learning rate, ask the trainer's step
//! function for a loss, stop on a NaN/inf loss, backpropagate, take an AdamW step, log, checkpoint.
//! Everything the loop's future depends on (weights, moments, RNG, step, epoch, cursor) is in the
//! checkpoint, so a resumed run continues bit-exactly on the same device and thread count.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use gen_runtime::{Error, Result, Rng};
use serde::{Deserialize, Serialize};

use crate::adamw::AdamW;
use crate::ema::WeightEma;
use crate::run::{Checkpoint, Progress, RunDir};
use crate::schedule::LrSchedule;
use crate::vars::{load_vars, var_tensors};

/// How long to train and how often to log and checkpoint (0 = never; the last step always checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    pub total_steps: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

/// What a step function may read and advance. `epoch` and `cursor` are the trainer's data position
/// (saved in every checkpoint); `rng` is the run's one random stream (also saved).
pub struct StepCtx<'a> {
    /// Steps already taken (0 for the first).
    pub step: u64,
    pub lr: f64,
    pub epoch: &'a mut u64,
    pub cursor: &'a mut u64,
    pub rng: &'a mut Rng,
}

/// A step's scalar loss (the graph to differentiate) and extra numbers for the log line.
pub struct StepOutput {
    pub loss: Tensor,
    pub metrics: Vec<(String, f64)>,
    /// Gradients the step already computed (a data-parallel step sums its slices' backward passes,
    /// `gen_nn::batch::par_batch_grads`); `loss` is then only the value to check and log.
    pub grads: Option<GradStore>,
}

impl StepOutput {
    pub fn loss(loss: Tensor) -> Self {
        StepOutput { loss, metrics: Vec::new(), grads: None }
    }

    /// A step whose gradients are already computed; `loss` is its value.
    pub fn with_grads(loss: f64, grads: GradStore, dev: &candle_core::Device) -> Result<Self> {
        Ok(StepOutput { loss: Tensor::new(loss, dev)?, metrics: Vec::new(), grads: Some(grads) })
    }
}

pub struct Trainer {
    pub run: RunDir,
    /// Saved in `model.safetensors` and restored on resume (all of them, trained or not).
    pub model: Vec<(String, Var)>,
    pub opt: AdamW,
    pub schedule: LrSchedule,
    pub loop_cfg: LoopConfig,
    pub progress: Progress,
    pub rng: Rng,
    /// An average of the weights, updated after each step and saved in the same file (`ema.<name>`).
    pub ema: Option<WeightEma>,
}

impl Trainer {
    /// A trainer at step 0; call `restore` with the checkpoint `RunDir::resume` found to continue one.
    pub fn new(
        run: RunDir,
        model: Vec<(String, Var)>,
        opt: AdamW,
        schedule: LrSchedule,
        loop_cfg: LoopConfig,
        rng: Rng,
    ) -> Self {
        Trainer { run, model, opt, schedule, loop_cfg, progress: Progress::default(), rng, ema: None }
    }

    /// Takes weights, optimizer state, RNG and progress from `ckpt`.
    pub fn restore(&mut self, ckpt: Checkpoint) -> Result<()> {
        load_vars(&self.model, &ckpt.model, &ckpt.model_path())?;
        if let Some(ema) = &self.ema {
            load_vars(&ema.shadow, &ckpt.model, &ckpt.model_path())?;
        }
        self.opt.load_state_tensors(&ckpt.optimizer, &ckpt.optimizer_path())?;
        self.rng = ckpt.rng;
        self.progress = ckpt.progress;
        Ok(())
    }

    /// Writes a checkpoint of the current state; returns its folder.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let mut model = var_tensors(&self.model);
        if let Some(ema) = &self.ema {
            model.extend(var_tensors(&ema.shadow));
        }
        self.run.save_checkpoint(&self.progress, &self.rng, &model, &self.opt.state_tensors()?)
    }

    /// Trains to `loop_cfg.total_steps`.
    pub fn run(&mut self, step_fn: impl FnMut(&mut StepCtx) -> Result<StepOutput>) -> Result<()> {
        self.run_until(self.loop_cfg.total_steps, step_fn)
    }

    /// Trains until `until` steps are taken (at most `total_steps`). A non-finite loss stops the run
    /// before it touches any weight, with an error naming the step; the checkpoints on disk stay as
    /// they are, `latest` on the last good one.
    pub fn run_until(&mut self, until: u64, mut step_fn: impl FnMut(&mut StepCtx) -> Result<StepOutput>) -> Result<()> {
        let LoopConfig { total_steps, log_every, checkpoint_every } = self.loop_cfg;
        let until = until.min(total_steps);
        while self.progress.step < until {
            let step = self.progress.step;
            let lr = self.schedule.lr_at(step);
            self.opt.set_lr(lr);
            let Progress { epoch, cursor, .. } = &mut self.progress;
            let mut ctx = StepCtx { step, lr, epoch, cursor, rng: &mut self.rng };
            let out = step_fn(&mut ctx)?;
            let number = step + 1; // the step being taken, as logs and checkpoints count it
            if !out.loss.dims().is_empty() {
                return Err(Error::Invalid(format!(
                    "step {number}: the loss has shape {:?}, expected a scalar",
                    out.loss.dims()
                )));
            }
            let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !loss.is_finite() {
                let last = match self.run.latest()? {
                    Some(dir) => format!("the last good checkpoint is {}", dir.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                return Err(Error::Invalid(format!("step {number}: the loss is {loss}; training stopped, {last}")));
            }
            let grads = match out.grads {
                Some(g) => g,
                None => out.loss.backward()?,
            };
            self.opt.step(&grads)?;
            if let Some(ema) = &self.ema {
                ema.update(&self.model, number)?;
            }
            self.progress.step = number;

            if log_every > 0 && (number.is_multiple_of(log_every) || number == total_steps) {
                let mut fields = serde_json::Map::new();
                fields.insert("epoch".into(), self.progress.epoch.into());
                fields.insert("loss".into(), loss.into());
                fields.insert("lr".into(), lr.into());
                for (name, value) in out.metrics {
                    fields.insert(name, value.into());
                }
                self.run.log(number, &fields)?;
            }
            if (checkpoint_every > 0 && number.is_multiple_of(checkpoint_every)) || number == total_steps {
                self.checkpoint()?;
            }
        }
        Ok(())
    }
}
