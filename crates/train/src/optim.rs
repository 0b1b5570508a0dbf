//! The `[optim]` table every trainer's config shares: Adam(W) hyper-parameters and a linear warmup then
//! a half-cosine to `min_lr`, per step.

use gen_runtime::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::{AdamWConfig, LrSchedule};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 (the default, left out of a written config) is Adam.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl OptimConfig {
    /// Every number checked; an error names `optim.<field>`.
    pub fn validate(&self) -> Result<()> {
        let finite = [("lr", self.lr), ("min_lr", self.min_lr), ("eps", self.eps), ("weight_decay", self.weight_decay)];
        if let Some((field, v)) = finite.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::config(format!("optim.{field}"), format!("{v} must be a finite number >= 0")));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::config(format!("optim.{field}"), format!("{b} must be in [0, 1)")));
            }
        }
        Ok(())
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Warmup then cosine over `total_steps` (the warmup kept shorter than the run).
    pub fn schedule(&self, total_steps: u64) -> LrSchedule {
        LrSchedule::WarmupCosine {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps.min(total_steps.saturating_sub(1)),
            total_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_number_is_named_and_zero_decay_is_not_written() {
        let o = OptimConfig {
            lr: 1e-3,
            min_lr: 0.0,
            warmup_steps: 10,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        o.validate().unwrap();
        assert!(!toml::to_string(&o).unwrap().contains("weight_decay"));
        let bad = OptimConfig { beta2: 1.0, ..o.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("optim.beta2"));
        let bad = OptimConfig { lr: f64::NAN, ..o.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("optim.lr"));
        assert_eq!(o.schedule(5), LrSchedule::WarmupCosine { lr: 1e-3, min_lr: 0.0, warmup_steps: 4, total_steps: 5 });
    }
}
