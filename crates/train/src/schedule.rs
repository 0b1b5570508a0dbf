//! Learning rates as plain functions of the step. `step` counts the optimizer steps already taken, so
//! the first update uses `lr_at(0)`; a resumed run asks for the same numbers as an unbroken one.

use gen_runtime::{Error, Result};
use serde::{Deserialize, Serialize};

/// The schedule a trainer's config names (`kind = "constant"` or `kind = "warmup_cosine"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant { lr: f64 },
    WarmupCosine { lr: f64, min_lr: f64, warmup_steps: u64, total_steps: u64 },
}

impl LrSchedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => constant(step, lr),
            LrSchedule::WarmupCosine { lr, min_lr, warmup_steps, total_steps } => {
                warmup_cosine(step, lr, min_lr, warmup_steps, total_steps)
            }
        }
    }

    /// One line naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let finite = |field: &str, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::Invalid(format!("schedule.{field} = {v}: expected a finite number >= 0")))
            }
        };
        match *self {
            LrSchedule::Constant { lr } => finite("lr", lr),
            LrSchedule::WarmupCosine { lr, min_lr, warmup_steps, total_steps } => {
                finite("lr", lr)?;
                finite("min_lr", min_lr)?;
                if warmup_steps > total_steps {
                    return Err(Error::Invalid(format!(
                        "schedule.warmup_steps = {warmup_steps}: expected at most total_steps ({total_steps})"
                    )));
                }
                Ok(())
            }
        }
    }
}

pub fn constant(_step: u64, lr: f64) -> f64 {
    lr
}

/// Linear warmup from 0 to `lr` over `warmup` steps, then a half cosine from `lr` down to `min_lr` at
/// `total`, and `min_lr` after it. This is MAE's `lr_sched.adjust_learning_rate`, which the official
/// VQGAN-LC training calls with a fractional epoch; here it runs on optimizer steps. Like it, step 0
/// of a warmup has lr 0.
pub fn warmup_cosine(step: u64, lr: f64, min_lr: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        lr * step as f64 / warmup as f64
    } else if step >= total {
        min_lr
    } else {
        // warmup <= step < total, so the span is at least 1
        let progress = (step - warmup) as f64 / (total - warmup) as f64;
        min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_cosine_hits_its_boundaries() {
        let f = |s| warmup_cosine(s, 1e-3, 1e-5, 10, 110);
        assert_eq!(f(0), 0.0);
        assert!((f(5) - 5e-4).abs() < 1e-18);
        assert_eq!(f(10), 1e-3); // end of warmup = peak
        assert!((f(60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-15); // half way down the cosine
        assert!((f(110) - 1e-5).abs() < 1e-18);
        assert_eq!(f(10_000), 1e-5); // floor after the end
        assert!((1..110).all(|s| f(s) <= 1e-3 && f(s) >= 1e-5), "stays between the floor and the peak");
        assert!((10..110).all(|s| f(s + 1) <= f(s)), "decays monotonically");
    }

    #[test]
    fn no_warmup_starts_at_the_peak_and_degenerate_spans_do_not_divide_by_zero() {
        assert_eq!(warmup_cosine(0, 2.0, 0.5, 0, 100), 2.0);
        assert_eq!(warmup_cosine(0, 2.0, 0.5, 0, 0), 0.5);
        assert_eq!(warmup_cosine(4, 2.0, 0.5, 5, 5), 1.6);
        assert_eq!(warmup_cosine(5, 2.0, 0.5, 5, 5), 0.5);
    }

    #[test]
    fn schedules_read_from_toml_and_check_their_fields() {
        let s: LrSchedule = toml::from_str("kind = \"constant\"\nlr = 0.1").unwrap();
        assert_eq!(s.lr_at(123), 0.1);
        let s: LrSchedule =
            toml::from_str("kind = \"warmup_cosine\"\nlr = 1.0\nmin_lr = 0.0\nwarmup_steps = 20\ntotal_steps = 10")
                .unwrap();
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "schedule.warmup_steps = 20: expected at most total_steps (10)"
        );
    }
}
