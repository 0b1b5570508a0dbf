//! Fully connected layer (torch `nn.Linear`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// torch `nn.Linear(in_dim, out_dim, bias)`: `y = x·Wᵀ + b` over the last dimension, any leading dims.
/// The output has x's dtype: f32 activations may run against half-precision weights.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor, // [out, in]
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Reads `weight` [out, in] and `bias` [out] under the builder's prefix.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Ok(Linear { weight, bias: Some(vb.get(out_dim, "bias")?) })
    }

    /// `nn.Linear(.., bias=False)`: reads `weight` [out, in] only.
    pub fn new_no_bias(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear { weight: vb.get((out_dim, in_dim), "weight")?, bias: None })
    }
}

impl Module for Linear {
    /// x [.., in] → [.., out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let dims = x.dims();
        if dims.last() != Some(&in_dim) {
            candle_core::bail!("linear: input {dims:?} does not end in the layer's {in_dim} input features");
        }
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        // one product over all rows: the weights streamed for a few rows (decoding), a GEMM from the
        // bias rows otherwise
        let y = crate::kernels::linear(&x2, &self.weight, self.bias.as_ref())?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("checked above") = out_dim;
        y.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::{DType, Device};
    use gen_runtime::Rng;
    use std::collections::HashMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn linear_matches_hand_computed_values() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [-1., 0., 0.5]], &dev).unwrap(); // [2, 3]
        let b = Tensor::new(&[0.5f32, -2.], &dev).unwrap();
        let x = Tensor::new(&[[1f32, 1., 1.], [2., 0., -2.]], &dev).unwrap();
        let with_bias = Linear { weight: w.clone(), bias: Some(b) }.forward(&x).unwrap();
        assert_eq!(with_bias.to_vec2::<f32>().unwrap(), vec![vec![6.5, -2.5], vec![-3.5, -5.0]]);
        let no_bias = Linear { weight: w, bias: None }.forward(&x).unwrap();
        assert_eq!(no_bias.to_vec2::<f32>().unwrap(), vec![vec![6.0, -0.5], vec![-4.0, -3.0]]);
    }

    #[test]
    fn linear_applies_to_every_row_of_any_leading_dims() {
        let mut r = Rng::new(1);
        let dev = Device::Cpu;
        let layer = Linear { weight: r.randn((5, 4), 1.0, &dev).unwrap(), bias: Some(r.randn(5, 1.0, &dev).unwrap()) };
        // a non-contiguous [2, 3, 2, 4] input
        let x = r.randn((2, 3, 4, 2), 1.0, &dev).unwrap().transpose(2, 3).unwrap();
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 2, 5]);
        let want = x
            .broadcast_matmul(&layer.weight.t().unwrap())
            .unwrap()
            .broadcast_add(layer.bias.as_ref().unwrap())
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        let one_d = layer.forward(&x.get(0).unwrap().get(0).unwrap().get(1).unwrap()).unwrap();
        assert_eq!(one_d.dims(), &[5]);
    }

    #[test]
    fn linear_reads_torch_keys_and_names_a_wrong_input_width() {
        let dev = Device::Cpu;
        let ts = HashMap::from([
            ("fc.weight".to_string(), Tensor::ones((3, 2), DType::F32, &dev).unwrap()),
            ("fc.bias".to_string(), Tensor::ones(3, DType::F32, &dev).unwrap()),
        ]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let layer = Linear::new(vb.pp("fc"), 2, 3).unwrap();
        let y = layer.forward(&Tensor::ones((1, 2), DType::F32, &dev).unwrap()).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3.0; 3]]);
        assert!(Linear::new_no_bias(vb.pp("fc"), 2, 3).unwrap().bias.is_none());
        assert!(Linear::new(vb.pp("fc"), 3, 3).is_err(), "a [3, 2] weight is not [3, 3]");
        let err = layer.forward(&Tensor::ones((1, 4), DType::F32, &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("[1, 4]") && err.contains("2 input features"), "{err}");
    }

    #[test]
    fn linear_gradcheck_f64() {
        let mut r = Rng::new(2);
        let dev = Device::Cpu;
        let t = |r: &mut Rng, s: &[usize]| r.randn(s, 1.0, &dev).unwrap().to_dtype(DType::F64).unwrap();
        let inputs = [t(&mut r, &[2, 3, 4]), t(&mut r, &[5, 4]), t(&mut r, &[5])];
        let f = |x: &[Tensor]| Linear { weight: x[1].clone(), bias: Some(x[2].clone()) }.forward(&x[0]);
        let err = gradcheck(&f, &inputs, 1e-6, 100).unwrap();
        assert!(err < 1e-7, "{err}");
    }
}
