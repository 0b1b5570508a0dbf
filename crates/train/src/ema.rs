//! An exponential moving average of the weights, as DiT (`update_ema`, decay 0.9999) and LDM (`LitEma`,
//! decay `min(d, (1 + n)/(10 + n))` after n updates) keep one: updated after every optimizer step,
//! saved beside the weights under `ema.<name>` and restored on resume.

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The averaging rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    pub decay: f64,
    /// LitEma's warm-up: the decay is `min(decay, (1 + n)/(10 + n))` at update n.
    #[serde(default)]
    pub warmup: bool,
}

impl EmaConfig {
    /// The decay of update number `n` (1 for the first).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup {
            self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
        } else {
            self.decay
        }
    }
}

/// The averaged copy of a model's variables.
pub struct WeightEma {
    pub config: EmaConfig,
    /// `(ema.<name>, shadow)` in the model's order.
    pub shadow: Vec<(String, Var)>,
}

/// The checkpoint name of variable `name`'s average.
pub fn ema_name(name: &str) -> String {
    format!("ema.{name}")
}

impl WeightEma {
    /// Starts the average at the current weights.
    pub fn new(model: &[(String, Var)], config: EmaConfig) -> Result<Self> {
        let shadow = model
            .iter()
            .map(|(n, v)| Ok((ema_name(n), Var::from_tensor(&v.as_tensor().detach().copy()?)?)))
            .collect::<Result<_>>()?;
        Ok(WeightEma { config, shadow })
    }

    /// `shadow ← d·shadow + (1 − d)·weights` with the decay of update `n`.
    pub fn update(&self, model: &[(String, Var)], n: u64) -> Result<()> {
        let d = self.config.decay_at(n);
        for ((_, s), (_, v)) in self.shadow.iter().zip(model) {
            let next = ((s.as_tensor() * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
            s.set(&next)?;
        }
        Ok(())
    }

    /// The averaged tensors under their model names (no `ema.` prefix): the weights to export.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(n, v)| (n.strip_prefix("ema.").unwrap_or(n).to_string(), v.as_tensor().detach()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn litema_warmup_follows_its_formula() {
        let c = EmaConfig { decay: 0.9999, warmup: true };
        assert_eq!(c.decay_at(1), 2.0 / 11.0);
        assert_eq!(c.decay_at(3), 4.0 / 13.0);
        assert_eq!(c.decay_at(1_000_000), 0.9999);
        assert_eq!(EmaConfig { decay: 0.5, warmup: false }.decay_at(1), 0.5);
    }

    #[test]
    fn the_average_moves_toward_the_weights() {
        let v = Var::from_tensor(&Tensor::new(&[0f32, 4.0], &Device::Cpu).unwrap()).unwrap();
        let model = vec![("w".to_string(), v.clone())];
        let ema = WeightEma::new(&model, EmaConfig { decay: 0.75, warmup: false }).unwrap();
        v.set(&Tensor::new(&[4f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        ema.update(&model, 1).unwrap();
        assert_eq!(ema.tensors()[0].1.to_vec1::<f32>().unwrap(), vec![1.0, 3.0]);
        assert_eq!(ema.shadow[0].0, "ema.w");
    }
}
