//! Loading weights by official key names, with errors a user can act on.
//!
//! Candle's own backends say `cannot find tensor X`; ours returns `gen_runtime::Error::MissingKey` (the
//! source file, the key, the shape the model expected) or `ShapeMismatch` (both shapes), typed: the error
//! travels through Candle's `VarBuilder` and comes back out as the same variant. A `VarBuilder` built here
//! never invents a tensor (Candle's VarMap silently zero-initialises a mistyped name).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use gen_runtime::Error;

/// A named set of tensors from one source (a file, or Vars for training).
pub struct Weights {
    source: String,
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl Weights {
    pub fn new(source: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Weights { source: source.into(), tensors, used: Default::default() }
    }

    /// Names in the source that the model never asked for (discriminator, LPIPS, …).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().expect("weights lock");
        let mut v: Vec<String> = self.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
        v.sort();
        v
    }

    pub fn names_used(&self) -> Vec<String> {
        self.used.lock().expect("weights lock").iter().cloned().collect()
    }

    /// A VarBuilder over these weights; the Weights keep track of what was read.
    pub fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        let backend = Backend { source: self.source.clone(), tensors: self.tensors.clone(), used: self.used.clone() };
        VarBuilder::from_backend(Box::new(backend), dtype, dev.clone())
    }
}

struct Backend {
    source: String,
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl Backend {
    /// The tensor `name`, or `gen_runtime::Error::MissingKey` (carried through Candle, see `Error::into_candle`).
    fn lookup(&self, name: &str, expected: Option<&Shape>) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::MissingKey {
                path: self.source.clone().into(),
                key: name.to_string(),
                expected: expected.map(|s| format!("{:?}", s.dims())),
            }
            .into_candle()
        })
    }
}

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.lookup(name, Some(&s))?;
        if t.shape() != &s {
            return Err(Error::ShapeMismatch {
                path: self.source.clone().into(),
                key: name.to_string(),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }
            .into_candle());
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.lookup(name, None)?;
        self.used.lock().expect("weights lock").insert(name.to_string());
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Trainable parameters: every tensor becomes a `Var` whose tensor the model reads, so gradients of a
/// `backward()` are found under the same names.
pub struct Params {
    pub vars: Vec<(String, Var)>,
}

impl Params {
    /// Makes Vars of the tensors whose names `trainable` accepts; the rest stay constants.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<(Params, HashMap<String, Tensor>)> {
        let mut vars = Vec::new();
        let mut out = HashMap::new();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &tensors[name];
            if trainable(name) {
                let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
                out.insert(name.clone(), v.as_tensor().clone());
                vars.push((name.clone(), v));
            } else {
                out.insert(name.clone(), t.clone());
            }
        }
        Ok((Params { vars }, out))
    }
}

/// A VarBuilder that makes up every tensor it is asked for (seeded), and remembers them: random-weight
/// models for benchmarks and tests, and the initial weights of training runs.
pub struct RandomWeights {
    rng: Arc<Mutex<gen_runtime::Rng>>,
    made: Arc<Mutex<HashMap<String, Tensor>>>,
    style: InitStyle,
}

/// How a made-up tensor is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStyle {
    /// 1-D `*.weight` (norms) ≈ 1, biases ≈ 0, matrices and kernels N(0, 1/fan_in): every op is exercised.
    Test,
    /// As torch initialises a fresh module: conv and linear weights and biases U(±1/√fan_in) (Kaiming-uniform
    /// with a = √5), norm weights 1 and biases 0.
    Torch,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights {
            rng: Arc::new(Mutex::new(gen_runtime::Rng::new(seed))),
            made: Default::default(),
            style: InitStyle::Test,
        }
    }

    /// Weights as torch's default module initialisation draws them (training from scratch).
    pub fn torch_init(seed: u64) -> Self {
        RandomWeights { style: InitStyle::Torch, ..Self::new(seed) }
    }

    pub fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        let b = RandomBackend { rng: self.rng.clone(), made: self.made.clone(), style: self.style };
        VarBuilder::from_backend(Box::new(b), dtype, dev.clone())
    }

    /// Fixes tensor `name` before the model asks for it (a loaded codebook, a layer with its own init).
    pub fn preset(&self, name: &str, t: Tensor) {
        self.made.lock().expect("weights lock").insert(name.to_string(), t);
    }

    /// Every tensor made so far, by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.made.lock().expect("weights lock").clone()
    }
}

struct RandomBackend {
    rng: Arc<Mutex<gen_runtime::Rng>>,
    made: Arc<Mutex<HashMap<String, Tensor>>>,
    style: InitStyle,
}

impl RandomBackend {
    /// torch's draw for `name` of `shape`; a bias looks at its layer's weight (made first) for fan-in.
    fn torch(
        &self,
        made: &HashMap<String, Tensor>,
        shape: &Shape,
        name: &str,
        rng: &mut gen_runtime::Rng,
    ) -> Result<Tensor> {
        let dims = shape.dims();
        if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            return rng.rand_uniform(dims, -bound, bound, &Device::Cpu);
        }
        let sibling = name.strip_suffix("bias").map(|stem| format!("{stem}weight"));
        match sibling.and_then(|w| made.get(&w).map(|t| t.dims().to_vec())) {
            // a conv / linear bias
            Some(w) if w.len() >= 2 => {
                let fan_in: usize = w[1..].iter().product();
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                rng.rand_uniform(dims, -bound, bound, &Device::Cpu)
            }
            // a norm's bias, or a free vector
            _ if name.ends_with("bias") => Tensor::zeros(dims, DType::F32, &Device::Cpu),
            // a norm's weight
            _ => Tensor::ones(dims, DType::F32, &Device::Cpu),
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(t) = self.made.lock().expect("weights lock").get(name) {
            return t.to_dtype(dtype);
        }
        let mut rng = self.rng.lock().expect("rng lock");
        let dims = s.dims().to_vec();
        let t = if self.style == InitStyle::Torch {
            let made = self.made.lock().expect("weights lock");
            self.torch(&made, &s, name, &mut rng)?
        } else if dims.len() == 1 && name.ends_with("weight") {
            (rng.randn(s, 0.1, &Device::Cpu)? + 1.0)?
        } else if dims.len() == 1 {
            rng.randn(s, 0.02, &Device::Cpu)?
        } else {
            let fan_in: usize = dims[1..].iter().product();
            rng.randn(s, (1.0 / fan_in as f64).sqrt(), &Device::Cpu)?
        };
        let t = t.to_device(dev)?.to_dtype(dtype)?;
        self.made.lock().expect("weights lock").insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> Result<Tensor> {
        match self.made.lock().expect("weights lock").get(name) {
            Some(t) => t.to_dtype(dtype),
            None => candle_core::bail!("random weights: '{name}' has no shape yet"),
        }
    }
    /// Only what was already made: a model asking whether an optional tensor is stored (a cache such as
    /// a precomputed projection) is told no, and computes it.
    fn contains_tensor(&self, name: &str) -> bool {
        self.made.lock().expect("weights lock").contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_init_draws_as_a_fresh_torch_module() {
        let rw = RandomWeights::torch_init(0);
        let vb = rw.var_builder(DType::F32, &Device::Cpu);
        let conv = crate::Conv2d::new(vb.pp("conv"), 16, 32, 3, 1, 1).unwrap();
        let _ = conv;
        let (w, b) = (vb.pp("norm").get(32, "weight").unwrap(), vb.pp("norm").get(32, "bias").unwrap());
        let t = rw.tensors();
        let bound = 1.0 / (16.0f32 * 9.0).sqrt();
        for name in ["conv.weight", "conv.bias"] {
            let v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.abs() <= bound), "{name} outside ±1/√fan_in");
            // uniform on ±bound: the mean square is bound²/3
            let ms = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
            assert!((ms / (bound * bound / 3.0) - 1.0).abs() < 0.35, "{name}: mean square {ms}");
        }
        assert!(w.to_vec1::<f32>().unwrap().iter().all(|&x| x == 1.0));
        assert!(b.to_vec1::<f32>().unwrap().iter().all(|&x| x == 0.0));
    }

    fn weights() -> Weights {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        Weights::new("m.safetensors", HashMap::from([("layer.weight".to_string(), t)]))
    }

    #[test]
    fn a_missing_key_comes_back_as_the_typed_error_with_the_expected_shape() {
        let vb = weights().var_builder(DType::F32, &Device::Cpu);
        let e = Error::from(vb.pp("layer").get((2, 3), "bias").unwrap_err());
        match e {
            Error::MissingKey { path, key, expected } => {
                assert_eq!((path.to_str(), key.as_str()), (Some("m.safetensors"), "layer.bias"));
                assert_eq!(expected.as_deref(), Some("[2, 3]"));
            }
            other => panic!("expected MissingKey, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_shape_comes_back_as_the_typed_error_with_both_shapes() {
        let vb = weights().var_builder(DType::F32, &Device::Cpu);
        let e = Error::from(vb.get((3, 2), "layer.weight").unwrap_err());
        match e {
            Error::ShapeMismatch { key, expected, found, .. } => {
                assert_eq!((key.as_str(), expected, found), ("layer.weight", vec![3, 2], vec![2, 3]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn random_weights_hold_only_what_was_asked_for() {
        let r = RandomWeights::new(1);
        let vb = r.var_builder(DType::F32, &Device::Cpu);
        assert!(!vb.contains_tensor("any.cache"));
        vb.get((2, 2), "w").unwrap();
        assert!(vb.contains_tensor("w"));
    }
}

/// A VarBuilder that allocates nothing: every tensor is a stride-0 view of one zero, and each name and
/// shape asked for is recorded. Parameter counts of official sizes (a 675M-parameter DiT) in a test.
#[derive(Default)]
pub struct ShapeRecorder {
    shapes: Arc<Mutex<HashMap<String, Vec<usize>>>>,
}

impl ShapeRecorder {
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(ShapeBackend { shapes: self.shapes.clone() }), DType::F32, Device::Cpu)
    }

    /// The names and shapes asked for so far.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.shapes.lock().expect("shapes lock").clone()
    }

    /// The number of parameters asked for so far.
    pub fn parameter_count(&self) -> usize {
        self.shapes.lock().expect("shapes lock").values().map(|s| s.iter().product::<usize>()).sum()
    }
}

struct ShapeBackend {
    shapes: Arc<Mutex<HashMap<String, Vec<usize>>>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.shapes.lock().expect("shapes lock").insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros(1, dtype, dev)?.reshape(vec![1; s.rank()])?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("shape recorder: '{name}' asked for without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}
