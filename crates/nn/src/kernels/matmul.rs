//! 2-D products `op(A)·op(B)` (each operand optionally transposed) on the GEMM entry point, so a CPU
//! `Linear` runs on OpenBLAS where Candle's `matmul` runs on the `gemm` crate (half the speed on our
//! shapes). The backward pass is made of the same op, so gradients (and their gradients) stay on it.
//! Other devices and dtypes, and non-contiguous operands, take Candle's `matmul`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::gemm::{gemm, Mat};
use super::real::Real;

/// `C = op(A)·op(B)`: A is [m, k] (stored [k, m] when `ta`), B is [k, n] (stored [n, k] when `tb`).
struct Product {
    ta: bool,
    tb: bool,
}

fn dims(op: &Product, la: &Layout, lb: &Layout) -> Result<(usize, usize, usize)> {
    let (a0, a1) = la.shape().dims2()?;
    let (b0, b1) = lb.shape().dims2()?;
    let (m, k) = if op.ta { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if op.tb { (b1, b0) } else { (b0, b1) };
    if k != kb {
        candle_core::bail!("matmul: inner dimensions {k} and {kb} differ");
    }
    Ok((m, k, n))
}

fn run<T: 'static + Real>(op: &Product, a: &[T], b: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    let mut c = vec![T::default(); m * n];
    let lhs = if op.ta { Mat::transposed(a, m) } else { Mat::row_major(a, k) };
    let rhs = if op.tb { Mat::transposed(b, k) } else { Mat::row_major(b, n) };
    // SAFETY: a covers op(A) [m×k], b covers op(B) [k×n], c is a fresh [m×n] buffer.
    unsafe { gemm(m, n, k, c.as_mut_ptr(), n, 1, false, lhs, rhs) };
    c
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "gen-matmul"
    }

    fn cpu_fwd(&self, sa: &CpuStorage, la: &Layout, sb: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(self, la, lb)?;
        let out = dispatch!("matmul", (sa, la), (sb, lb) => |a, b| run(self, a, b, m, k, n));
        Ok((out, Shape::from((m, n))))
    }

    /// With C = A'·B' (A' = op(A), B' = op(B)): ∂A' = ∂C·B'ᵀ and ∂B' = A'ᵀ·∂C, transposed back where the
    /// operand was stored transposed.
    fn bwd(&self, a: &Tensor, b: &Tensor, _c: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ga = if self.ta { product(b, g, self.tb, true)? } else { product(g, b, false, !self.tb)? };
        let gb = if self.tb { product(g, a, true, self.ta)? } else { product(a, g, !self.ta, false)? };
        Ok((Some(ga), Some(gb)))
    }
}

/// `op(a)·op(b)` for 2-D tensors; the fused op on contiguous f32/f64 CPU tensors, Candle's matmul elsewhere.
pub fn product(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let fused = a.device().is_cpu()
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        && a.rank() == 2
        && b.rank() == 2;
    if fused {
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        return if a.track_op() || b.track_op() {
            a.apply_op2(&b, Product { ta, tb })
        } else {
            a.apply_op2_no_bwd(&b, &Product { ta, tb })
        };
    }
    let a = if ta { a.t()? } else { a.clone() };
    let b = if tb { b.t()? } else { b.clone() };
    a.matmul(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn every_transpose_matches_candle_in_value_and_gradients() {
        let mut rng = Rng::new(5);
        let dev = Device::Cpu;
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, k, n) = (7, 5, 3);
            let sa = if ta { (k, m) } else { (m, k) };
            let sb = if tb { (n, k) } else { (k, n) };
            let a = Var::from_tensor(&rng.randn(sa, 1.0, &dev).unwrap().to_dtype(candle_core::DType::F64).unwrap())
                .unwrap();
            let b = Var::from_tensor(&rng.randn(sb, 1.0, &dev).unwrap().to_dtype(candle_core::DType::F64).unwrap())
                .unwrap();
            let w = rng.randn((m, n), 1.0, &dev).unwrap().to_dtype(candle_core::DType::F64).unwrap();
            let ours = product(a.as_tensor(), b.as_tensor(), ta, tb).unwrap();
            let oa = if ta { a.as_tensor().t().unwrap() } else { a.as_tensor().clone() };
            let ob = if tb { b.as_tensor().t().unwrap() } else { b.as_tensor().clone() };
            let theirs = oa.matmul(&ob).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-12, "{ta} {tb}");
            let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&a, &b] {
                assert!(max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()) < 1e-12, "{ta} {tb}");
            }
        }
    }
}
