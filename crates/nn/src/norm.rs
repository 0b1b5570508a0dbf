//! GroupNorm (torch `nn.GroupNorm`, affine), GroupNorm fused with SiLU (taming's `norm → swish`), and
//! LayerNorm (torch `nn.LayerNorm`). Both run on our kernels, whose backward is correct (Candle's fused
//! LayerNorm has none).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// torch `nn.GroupNorm(groups, channels, eps, affine=True)` over x [N, C, ..].
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(GroupNorm { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }

    /// `silu(groupnorm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        GroupNorm::forward(self, x)
    }
}

/// torch `nn.LayerNorm(dim, eps, elementwise_affine, bias)` over the last dimension of x [.., dim].
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Option<Tensor>, // [dim]; None: elementwise_affine=False
    pub bias: Option<Tensor>,   // [dim]; None: bias=False or elementwise_affine=False
    pub dim: usize,
    pub eps: f64,
}

impl LayerNorm {
    /// Reads `weight` [dim] and `bias` [dim] (torch's default).
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm { weight: Some(vb.get(dim, "weight")?), bias: Some(vb.get(dim, "bias")?), dim, eps })
    }

    /// `nn.LayerNorm(dim, bias=False)`: reads `weight` [dim] only.
    pub fn new_no_bias(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm { weight: Some(vb.get(dim, "weight")?), bias: None, dim, eps })
    }

    /// `nn.LayerNorm(dim, elementwise_affine=False)`: no parameters (DiT's final and block norms).
    pub fn new_no_affine(dim: usize, eps: f64) -> Self {
        LayerNorm { weight: None, bias: None, dim, eps }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.dim) {
            candle_core::bail!("layer_norm: input {:?} does not end in the layer's {} features", x.dims(), self.dim);
        }
        // a missing weight / bias is the constant 1 / 0 (no gradient to give)
        let ones;
        let w = match &self.weight {
            Some(w) => w,
            None => {
                ones = Tensor::ones(self.dim, x.dtype(), x.device())?;
                &ones
            }
        };
        let zeros;
        let b = match &self.bias {
            Some(b) => b,
            None => {
                zeros = Tensor::zeros(self.dim, x.dtype(), x.device())?;
                &zeros
            }
        };
        crate::kernels::layer_norm(x, w, b, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::{DType, Device, Var, D};
    use gen_runtime::Rng;
    use std::collections::HashMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn group_norm_module_equals_reference_composition() {
        let mut r = Rng::new(1);
        let dev = Device::Cpu;
        let gn = GroupNorm {
            weight: (r.randn(8, 0.3, &dev).unwrap() + 1.0).unwrap(),
            bias: r.randn(8, 0.3, &dev).unwrap(),
            groups: 4,
            eps: 1e-6,
        };
        let x = r.randn((2, 8, 3, 5), 1.0, &dev).unwrap();
        let y = Module::forward(&gn, &x).unwrap();
        let want = crate::kernels::reference::group_norm(&x, &gn.weight, &gn.bias, 4, 1e-6, false).unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        assert_eq!(max_diff(&y, &gn.forward(&x).unwrap()), 0.0);
    }

    /// torch's formula on one row: (x − mean) / sqrt(biased var + eps) · w + b.
    fn layer_norm_by_hand(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        x.iter().zip(w).zip(b).map(|((v, w), b)| (v - mean) / (var + eps).sqrt() * w + b).collect()
    }

    #[test]
    fn layer_norm_matches_torch_formula_with_and_without_affine() {
        let dev = Device::Cpu;
        let x = [[1.0, 2.0, 4.0, -3.0], [0.5, 0.5, 0.25, 10.0]];
        let (w, b) = ([0.5, 1.0, 2.0, -1.0], [0.1, 0.0, -0.2, 0.3]);
        let xt = Tensor::new(&x, &dev).unwrap().to_dtype(DType::F32).unwrap();
        let wt = Tensor::new(&w, &dev).unwrap().to_dtype(DType::F32).unwrap();
        let bt = Tensor::new(&b, &dev).unwrap().to_dtype(DType::F32).unwrap();
        let cases = [
            (LayerNorm { weight: Some(wt.clone()), bias: Some(bt), dim: 4, eps: 1e-5 }, w, b),
            (LayerNorm { weight: Some(wt), bias: None, dim: 4, eps: 1e-5 }, w, [0.0; 4]),
            (LayerNorm::new_no_affine(4, 1e-5), [1.0; 4], [0.0; 4]),
        ];
        for (i, (ln, w, b)) in cases.iter().enumerate() {
            let y = ln.forward(&xt).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
            for (row, x) in y.iter().zip(&x) {
                let want = layer_norm_by_hand(x, w, b, 1e-5);
                for (a, e) in row.iter().zip(&want) {
                    assert!((a - e).abs() < 1e-5, "case {i}: {row:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn layer_norm_gradcheck_f64_every_parameter() {
        let mut r = Rng::new(2);
        let dev = Device::Cpu;
        let t = |r: &mut Rng, s: &[usize]| r.randn(s, 1.0, &dev).unwrap().to_dtype(DType::F64).unwrap();
        let inputs = [t(&mut r, &[2, 3, 6]), t(&mut r, &[6]), t(&mut r, &[6])];
        let f = |x: &[Tensor]| {
            LayerNorm { weight: Some(x[1].clone()), bias: Some(x[2].clone()), dim: 6, eps: 1e-5 }.forward(&x[0])
        };
        let err = gradcheck(&f, &inputs, 1e-6, 200).unwrap();
        assert!(err < 1e-6, "{err}");
        let f = |x: &[Tensor]| LayerNorm::new_no_affine(6, 1e-5).forward(&x[0]);
        let err = gradcheck(&f, &inputs[..1], 1e-6, 200).unwrap();
        assert!(err < 1e-6, "no affine: {err}");
    }

    #[test]
    fn layer_norm_reads_torch_keys_and_gives_every_parameter_a_gradient() {
        let dev = Device::Cpu;
        let ts = HashMap::from([
            ("ln.weight".to_string(), Tensor::ones(3, DType::F32, &dev).unwrap()),
            ("ln.bias".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap()),
        ]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let ln = LayerNorm::new(vb.pp("ln"), 3, 1e-5).unwrap();
        assert!(LayerNorm::new_no_bias(vb.pp("ln"), 3, 1e-5).unwrap().bias.is_none());
        let (w, b) = (
            Var::from_tensor(ln.weight.as_ref().unwrap()).unwrap(),
            Var::from_tensor(ln.bias.as_ref().unwrap()).unwrap(),
        );
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 6.]], &dev).unwrap()).unwrap();
        let ln = LayerNorm { weight: Some(w.as_tensor().clone()), bias: Some(b.as_tensor().clone()), ..ln };
        let y = ln.forward(x.as_tensor()).unwrap();
        let g = y.sqr().unwrap().sum_keepdim(D::Minus1).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            assert!(g.get(v.as_tensor()).is_some(), "{name} got no gradient");
        }
        let err = ln.forward(&Tensor::ones((1, 4), DType::F32, &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("[1, 4]") && err.contains("3 features"), "{err}");
    }
}
