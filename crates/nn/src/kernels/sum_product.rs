//! `Σ a·b` as one op, with gradient: the probe loss of a backward pass (`(y·g).sum()` hands `g` to y
//! as its upstream gradient). Candle composes it as a product tensor, a reduction, and, in the
//! backward, the broadcast scalar times the other operand, which Candle's CPU backend runs one element
//! at a time (a broadcast left operand misses its vectorised cases): half of a GroupNorm
//! forward+backward probe. Here the forward is one parallel read of both operands and the backward
//! hands back the other operand, scaled only when the upstream gradient is not 1.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::real::Real;

/// Elements per parallel partial sum.
const CHUNK: usize = 1 << 16;

struct SumProduct;

impl SumProduct {
    fn run<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
        let total: f64 = a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).map(|(a, b)| T::dot(a, b)).sum();
        vec![T::from_f64(total)]
    }
}

impl CustomOp2 for SumProduct {
    fn name(&self) -> &'static str {
        "gen-sum-product"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(self.name(), (s1, l1), (s2, l2) => |a, b| Self::run(a, b));
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        // `detach` shares the storage: Candle adds each returned gradient into a fresh buffer
        let times = |t: &Tensor| if scale == 1.0 { Ok(t.detach()) } else { t.affine(scale, 0.0) };
        Ok((Some(times(b)?), Some(times(a)?)))
    }
}

/// `Σ a·b` over all elements of two tensors of one shape, as a 0-d tensor: our kernel on CPU
/// f32/f64, `(a·b).sum_all()` elsewhere.
pub fn sum_product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("sum_product: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if a.device().is_cpu() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64) {
        return a.contiguous()?.apply_op2(&b.contiguous()?, SumProduct);
    }
    (a * b)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    #[test]
    fn sum_product_gradcheck_f64() {
        let mut rng = Rng::new(3);
        let a = rng.randn(&[3, 5, 7][..], 1.0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let b = rng.randn(&[3, 5, 7][..], 1.0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        // × 3 after the op, so the backward sees an upstream gradient other than 1
        let f = |t: &[Tensor]| sum_product(&t[0], &t[1])? * 3.0;
        let err = gradcheck(&f, &[a, b], 1e-6, 100).unwrap();
        assert!(err < 1e-7, "relative error {err}");
    }

    #[test]
    fn fused_sum_product_equals_candle_composition() {
        let mut rng = Rng::new(4);
        // over several parallel chunks, and with a transposed (non-contiguous) operand
        let a = rng.randn(&[300, 700][..], 1.0, &Device::Cpu).unwrap();
        let b = rng.randn(&[700, 300][..], 1.0, &Device::Cpu).unwrap().t().unwrap();
        let (av, bv) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        let ours = sum_product(av.as_tensor(), bv.as_tensor()).unwrap();
        let candle = (av.as_tensor() * bv.as_tensor()).unwrap().sum_all().unwrap();
        let (x, y) = (ours.to_scalar::<f32>().unwrap(), candle.to_scalar::<f32>().unwrap());
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{x} vs {y}");
        let (g1, g0) = (ours.backward().unwrap(), candle.backward().unwrap());
        for v in [&av, &bv] {
            let d = (g1.get(v.as_tensor()).unwrap() - g0.get(v.as_tensor()).unwrap()).unwrap();
            assert_eq!(d.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn shapes_must_match() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = sum_product(&a, &b).unwrap_err().to_string();
        assert!(err.contains("sum_product") && err.contains("differ"), "{err}");
    }
}
