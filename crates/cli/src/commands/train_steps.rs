//! The step loop shared by `gen train`, `gen train-prior` and `gen train-tokenizer`: one progress bar from
//! the resumed step to `--until`, the last step's summary as its message, and the resume hint when the
//! call stops before the config's last step.

use std::time::Instant;

use anyhow::Result;
use gen_runtime::progress;

/// Where a trainer stands when its command starts.
pub struct StepRange {
    /// The step the run resumed from (0 for a new run).
    pub start: u64,
    /// The step this call stops at (`--until`, at most `steps`).
    pub until: u64,
    /// The config's last step.
    pub steps: u64,
}

impl StepRange {
    pub fn new(start: u64, until: Option<usize>, steps: u64) -> Self {
        Self { start, until: until.map_or(steps, |u| u as u64).min(steps), steps }
    }
}

/// A call that reached the config's last step: its wall time and the last step's summary.
pub struct Finished {
    pub secs: f64,
    pub last: String,
}

/// Runs `train(until, on_step)` under a progress bar; `on_step(step, summary)` moves it. `train` returns
/// the step reached. `None` (after printing how to continue) when the run stopped before its last step.
pub fn drive(
    range: StepRange,
    quiet: bool,
    train: impl FnOnce(u64, &mut dyn FnMut(u64, String)) -> Result<u64>,
) -> Result<Option<Finished>> {
    let bar = progress::bar(range.until.saturating_sub(range.start), "train", quiet);
    let t0 = Instant::now();
    let mut last = String::new();
    let reached = train(range.until, &mut |step, summary| {
        bar.set_position(step.saturating_sub(range.start));
        bar.set_message(summary.clone());
        last = summary;
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if reached < range.steps {
        println!("stopped at step {reached} of {} after {secs:.0} s ({last}); continue with --resume", range.steps);
        return Ok(None);
    }
    Ok(Some(Finished { secs, last }))
}

/// A trainer whose steps report one loss (`gen train`, `gen train-prior`).
pub trait LossTrainer {
    /// The step the run stands at.
    fn step(&self) -> u64;
    fn train_until(&mut self, until: u64, on_step: &mut dyn FnMut(u64, f64)) -> anyhow::Result<()>;
}

impl LossTrainer for gen_diffusion::train::DiffusionTrainer {
    fn step(&self) -> u64 {
        self.trainer.progress.step
    }
    fn train_until(&mut self, until: u64, on_step: &mut dyn FnMut(u64, f64)) -> anyhow::Result<()> {
        Ok(self.train(Some(until), on_step)?)
    }
}

impl LossTrainer for gen_prior::train::PriorTrainer {
    fn step(&self) -> u64 {
        self.trainer.progress.step
    }
    fn train_until(&mut self, until: u64, on_step: &mut dyn FnMut(u64, f64)) -> anyhow::Result<()> {
        Ok(self.train(Some(until), on_step)?)
    }
}

/// [`drive`] for a [`LossTrainer`]: "step N: loss L" on the bar.
pub fn drive_loss(t: &mut impl LossTrainer, until: Option<usize>, steps: u64, quiet: bool) -> Result<Option<Finished>> {
    let range = StepRange::new(t.step(), until, steps);
    drive(range, quiet, |until, on_step| {
        t.train_until(until, &mut |step, loss| on_step(step, format!("step {step}: loss {loss:.4}")))?;
        Ok(t.step())
    })
}
