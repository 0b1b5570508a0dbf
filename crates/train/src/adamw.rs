//! AdamW with its state in our hands: Candle's `AdamW` keeps its moments private, so a run could not
//! be checkpointed and resumed exactly. This one follows `torch.optim.AdamW` (defaults, decoupled weight
//! decay, bias correction, eps added after the square root of the bias-corrected second moment, one step
//! count per parameter) and hands its moments and step counts out as named tensors.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use gen_runtime::{Error, Result};
use serde::{Deserialize, Serialize};

/// The hyper-parameters; `Default` is `torch.optim.AdamW`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    /// One line naming the field at fault, for numbers torch would also reject.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, v: f64, want: &str| Err(Error::Invalid(format!("adamw.{field} = {v}: expected {want}")));
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr, "a finite number >= 0");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "a number in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "a number in [0, 1)");
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return bad("eps", self.eps, "a finite number >= 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay, "a finite number >= 0");
        }
        Ok(())
    }
}

/// One parameter and its state; `exp_avg` / `exp_avg_sq` have the parameter's shape, dtype and device.
struct Slot {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps this parameter took: torch skips a parameter without a gradient, step count included.
    step: u64,
    decay: bool,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer over `params` (names must be unique: they key the saved state), moments at zero.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.clone()) {
                return Err(Error::Invalid(format!("adamw: parameter '{name}' is given twice")));
            }
            let zeros = var.zeros_like()?;
            slots.push(Slot { name, exp_avg: zeros.clone(), exp_avg_sq: zeros, var, step: 0, decay: true });
        }
        Ok(AdamW { cfg, slots })
    }

    /// Excludes these parameters from weight decay (torch: a param group with `weight_decay=0`), as is
    /// usual for biases, norms and embeddings. A name that is no parameter is an error (a typo would
    /// otherwise decay what it meant to spare).
    pub fn with_no_decay<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Result<Self> {
        for name in names {
            let name = name.as_ref();
            match self.slots.iter_mut().find(|s| s.name == name) {
                Some(slot) => slot.decay = false,
                None => return Err(Error::Invalid(format!("adamw: no-decay parameter '{name}' is not a parameter"))),
            }
        }
        Ok(self)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// The schedule sets this before each step.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One `torch.optim.AdamW` step (`_single_tensor_adamw`, amsgrad off) for every parameter that has a
    /// gradient in `grads`; the others keep their value, moments and step count.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let AdamWConfig { lr, beta1, beta2, eps, weight_decay } = self.cfg;
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else { continue };
            // a gradient that still tracks a graph would chain every step's graph into the moments
            let grad = &grad.detach();
            slot.step += 1;
            let t = slot.step as f64;
            // Detached: the update itself must not grow an autograd graph.
            let mut param = slot.var.as_tensor().detach();
            if slot.decay && weight_decay != 0.0 {
                // param.mul_(1 - lr * weight_decay)
                param = (param * (1.0 - lr * weight_decay))?;
            }
            // exp_avg.lerp_(grad, 1 - beta1);  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            slot.exp_avg = (&slot.exp_avg + ((grad - &slot.exp_avg)? * (1.0 - beta1))?)?;
            slot.exp_avg_sq = ((&slot.exp_avg_sq * beta2)? + ((grad * (1.0 - beta2))? * grad)?)?;
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt();
            let step_size = lr / bias_correction1;
            // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps;  param.addcdiv_(exp_avg, denom, -step_size)
            let denom = slot.exp_avg_sq.sqrt()?.affine(1.0 / bias_correction2_sqrt, eps)?;
            param = (param + ((&slot.exp_avg / denom)? * -step_size)?)?;
            slot.var.set(&param)?;
        }
        Ok(())
    }

    /// The state as named tensors, torch's names per parameter: `<name>.exp_avg`, `<name>.exp_avg_sq`
    /// and `<name>.step` (a scalar I64). Parameter names are unique, so several optimizers (generator
    /// and discriminator) can share one file.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.slots.len());
        for s in &self.slots {
            let step =
                i64::try_from(s.step).map_err(|_| Error::Invalid(format!("adamw: '{}' step overflows", s.name)))?;
            out.push((format!("{}.exp_avg", s.name), s.exp_avg.clone()));
            out.push((format!("{}.exp_avg_sq", s.name), s.exp_avg_sq.clone()));
            out.push((format!("{}.step", s.name), Tensor::new(step, &Device::Cpu)?));
        }
        Ok(out)
    }

    /// Restores what `state_tensors` gave, read from `path` (which errors name). Every parameter's three
    /// tensors must be there with the parameter's shape; other keys are left for other optimizers.
    pub fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let get = |key: String, expected: &[usize]| -> Result<Tensor> {
            let t = tensors.get(&key).ok_or_else(|| Error::MissingKey {
                path: path.to_path_buf(),
                key: key.clone(),
                expected: Some(format!("{expected:?}")),
            })?;
            if t.dims() != expected {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    key,
                    expected: expected.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            Ok(t.clone())
        };
        // Checked whole before anything is set, so a bad file leaves the optimizer as it was.
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let (dev, dtype) = (s.var.device(), s.var.dtype());
            let exp_avg = get(format!("{}.exp_avg", s.name), s.var.dims())?.to_dtype(dtype)?.to_device(dev)?;
            let exp_avg_sq = get(format!("{}.exp_avg_sq", s.name), s.var.dims())?.to_dtype(dtype)?.to_device(dev)?;
            let key = format!("{}.step", s.name);
            let step = get(key.clone(), &[])?;
            if step.dtype() != DType::I64 {
                return Err(Error::format(path, format!("'{key}' is {:?}, expected a scalar I64", step.dtype())));
            }
            let step = u64::try_from(step.to_scalar::<i64>()?)
                .map_err(|_| Error::format(path, format!("'{key}' is negative")))?;
            loaded.push((exp_avg, exp_avg_sq, step));
        }
        for (s, (exp_avg, exp_avg_sq, step)) in self.slots.iter_mut().zip(loaded) {
            (s.exp_avg, s.exp_avg_sq, s.step) = (exp_avg, exp_avg_sq, step);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.optim.AdamW on one parameter, in f64, straight from the formula in torch's docs.
    fn torch_adamw(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: u64, c: &AdamWConfig, decay: bool) {
        for i in 0..p.len() {
            if decay {
                p[i] *= 1.0 - c.lr * c.weight_decay;
            }
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - c.beta1.powi(t as i32));
            let v_hat = v[i] / (1.0 - c.beta2.powi(t as i32));
            p[i] -= c.lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }

    fn values(v: &Var) -> Vec<f64> {
        v.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// loss = Σ w·p² / 2 + Σ p (grad = w·p + 1), so the gradient changes with every step.
    fn loss(p: &Var) -> Tensor {
        let w = Tensor::new(&[0.5f32, -2.0, 3.0, 0.0], &Device::Cpu).unwrap();
        let quad = (p.as_tensor().sqr().unwrap() * &w).unwrap().sum_all().unwrap() * 0.5;
        (quad.unwrap() + p.as_tensor().sum_all().unwrap()).unwrap()
    }

    #[test]
    fn steps_match_the_torch_formula() {
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.8, beta2: 0.95, eps: 1e-3, weight_decay: 0.3 };
        let init = [1.0f32, -0.5, 0.25, 2.0];
        let a = Var::new(&init, &Device::Cpu).unwrap();
        let b = Var::new(&init, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], cfg.clone())
            .unwrap()
            .with_no_decay(["b"])
            .unwrap();
        let mut want = [init.map(f64::from).to_vec(), init.map(f64::from).to_vec()];
        let (mut m, mut v) = ([vec![0.0; 4], vec![0.0; 4]], [vec![0.0; 4], vec![0.0; 4]]);
        for t in 1..=5 {
            for k in 0..2 {
                let g: Vec<f64> = want[k].iter().zip([0.5, -2.0, 3.0, 0.0]).map(|(p, w)| w * p + 1.0).collect();
                torch_adamw(&mut want[k], &mut m[k], &mut v[k], &g, t, &cfg, k == 0);
            }
            let grads = (loss(&a) + loss(&b)).unwrap().backward().unwrap();
            opt.step(&grads).unwrap();
            for (k, var) in [&a, &b].into_iter().enumerate() {
                for (got, want) in values(var).iter().zip(&want[k]) {
                    assert!((got - want).abs() < 2e-6 * want.abs().max(1.0), "step {t} param {k}: {got} vs {want}");
                }
            }
        }
        // The first torch step moves every coordinate by about lr (m̂/√v̂ = ±1): a hand check of the
        // formula itself, for p = 1 (g = 1.5) with decay: 1·(1 − 0.1·0.3) − 0.1·1.5/(1.5 + 1e-3).
        let first = 1.0 * (1.0 - 0.1 * 0.3) - 0.1 * 1.5 / (1.5 + 1e-3);
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg).unwrap();
        let g = ((p.as_tensor().sqr().unwrap() * 0.25).unwrap() + p.as_tensor()).unwrap().sum_all().unwrap();
        opt.step(&g.backward().unwrap()).unwrap();
        assert!((values(&p)[0] - first).abs() < 1e-6, "{} vs {first}", values(&p)[0]);
    }

    #[test]
    fn a_parameter_without_gradient_is_left_alone() {
        let used = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let unused = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let mut opt =
            AdamW::new(vec![("u".into(), used.clone()), ("x".into(), unused.clone())], AdamWConfig::default()).unwrap();
        opt.step(&used.as_tensor().sum_all().unwrap().backward().unwrap()).unwrap();
        assert_eq!(values(&unused), [3.0]);
        let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
        assert_eq!(state["u.step"].to_scalar::<i64>().unwrap(), 1);
        assert_eq!(state["x.step"].to_scalar::<i64>().unwrap(), 0);
    }

    #[test]
    fn saved_state_continues_bit_identically() {
        let cfg = AdamWConfig { lr: 0.05, ..Default::default() };
        let run = |split: Option<usize>| -> Vec<u32> {
            let p = Var::new(&[1.0f32, -0.5, 0.25, 2.0], &Device::Cpu).unwrap();
            let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg.clone()).unwrap();
            for i in 0..6 {
                if split == Some(i) {
                    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
                    opt = AdamW::new(vec![("p".into(), p.clone())], cfg.clone()).unwrap();
                    opt.load_state_tensors(&state, Path::new("optimizer.safetensors")).unwrap();
                }
                opt.step(&loss(&p).backward().unwrap()).unwrap();
            }
            p.as_tensor().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(run(None), run(Some(3)));
    }

    #[test]
    fn bad_state_and_config_are_one_line_errors() {
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig::default()).unwrap();
        let e = opt.load_state_tensors(&HashMap::new(), Path::new("ck/optimizer.safetensors")).unwrap_err().to_string();
        assert!(e.contains("ck/optimizer.safetensors") && e.contains("p.exp_avg"), "{e}");
        let e = AdamW::new(vec![], AdamWConfig { beta2: 1.0, ..Default::default() }).err().unwrap().to_string();
        assert_eq!(e, "adamw.beta2 = 1: expected a number in [0, 1)");
        let e = opt.with_no_decay(["q"]).err().unwrap().to_string();
        assert!(e.contains("'q'"), "{e}");
    }
}
