//! `y = x·Wᵀ + b` for many rows (a batch of tokens) as one op: one GEMM that starts from the bias rows,
//! with a backward that computes each gradient in its operand's own layout.
//!
//! Candle composes it as `x.matmul(&w.t())` and a `broadcast_add`. Its backward then computes the
//! gradient of the transposed view `Wᵀ` and transposes it back (a strided copy of the whole weight
//! gradient per layer), reduces the bias gradient one element at a time, and passes the output
//! gradient through an identity broadcast (another copy). Here: ∂x = ∂y·W and ∂W = ∂yᵀ·x are GEMMs
//! whose results are already row-major in x's and W's shapes, ∂b is a parallel column sum, and an
//! operand that tracks no gradient (a constant input, a frozen weight) gets none computed.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm, Mat};
use super::real::Real;

/// Bias columns per parallel task of the bias gradient.
const COLUMNS_PER_TASK: usize = 256;

/// `x [m, k] · wᵀ + b` for `w [n, k]`, `b [n]`, in x's dtype (w and b are converted when they differ,
/// as half-precision weights under f32 activations), the one entry point for x·Wᵀ: the streaming
/// kernel (`skinny`) for up to 32 rows, the fused GEMM op on CPU f32/f64 beyond, Candle's composition
/// elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if let ([_, k], [n, kw]) = (x.dims(), w.dims()) {
        if k != kw || b.is_some_and(|b| b.dims() != [*n]) {
            candle_core::bail!(
                "linear: input {:?}, weight {:?} and bias {:?} do not fit",
                x.dims(),
                w.dims(),
                b.map(|b| b.dims().to_vec())
            );
        }
    }
    if super::skinny::applies(x, w) {
        // a few rows (decoding): the weights streamed once, half precision read as it is stored
        let y = super::skinny::x_wt(x, w)?;
        return match b {
            Some(b) if b.dtype() != y.dtype() => y.broadcast_add(&b.to_dtype(y.dtype())?),
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
    }
    let in_x_dtype = |t: &Tensor| if t.dtype() == x.dtype() { Ok(t.clone()) } else { t.to_dtype(x.dtype()) };
    let w = &in_x_dtype(w)?;
    let b = b.map(in_x_dtype).transpose()?;
    let b = b.as_ref();
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && x.rank() == 2;
    if !fused {
        let y = x.matmul(&w.t()?)?;
        return match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Affine),
        None => x.apply_op2(&w, Product),
    }
}

/// `y[m×n] = x[m×k]·w[n×k]ᵀ (+ b)`, starting from the bias rows so the GEMM adds onto them.
fn forward<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, m: usize, k: usize, n: usize) -> Vec<T> {
    let mut y = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(m * n);
            (0..m).for_each(|_| y.extend_from_slice(b));
            y
        }
        None => vec![T::from_f64(0.0); m * n],
    };
    // SAFETY: x is m×k, w n×k and y m×n, all dense row-major; y aliases neither
    unsafe { gemm(m, n, k, y.as_mut_ptr(), n, 1, b.is_some(), Mat::row_major(x, k), Mat::transposed(w, k)) };
    y
}

fn dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, _) = lw.shape().dims2()?;
    Ok((m, k, n))
}

/// y = x·Wᵀ.
struct Product;
/// y = x·Wᵀ + b.
struct Affine;

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "gen-linear"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(lx, lw)?;
        let y = dispatch!(self.name(), (sx, lx), (sw, lw) => |x, w| forward(x, w, None, m, k, n));
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = product_grads(x, w, g)?;
        Ok((gx, gw))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "gen-linear-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(lx, lw)?;
        let y = dispatch!(self.name(), (sx, lx), (sw, lw), (sb, lb) => |x, w, b| forward(x, w, Some(b), m, k, n));
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = product_grads(x, w, g)?;
        let gb = if b.track_op() { Some(g.contiguous()?.apply_op1(ColumnSum)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// ∂x = ∂y·W [m, k] and ∂W = ∂yᵀ·x [n, k], each only where its operand tracks a gradient. Candle's
/// matmul reads the transposed ∂y through its strides and writes both results row-major.
fn product_grads(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let gx = if x.track_op() { Some(g.matmul(w)?) } else { None };
    let gw = if w.track_op() { Some(g.t()?.matmul(x)?) } else { None };
    Ok((gx, gw))
}

/// The sums of the columns of a [m, n] matrix: the bias gradient.
struct ColumnSum;

impl ColumnSum {
    fn run<T: Real>(g: &[T], m: usize, n: usize) -> Vec<T> {
        let mut sums = vec![T::from_f64(0.0); n];
        sums.par_chunks_mut(COLUMNS_PER_TASK).enumerate().for_each(|(task, acc)| {
            let columns = task * COLUMNS_PER_TASK..task * COLUMNS_PER_TASK + acc.len();
            for row in g.chunks_exact(n).take(m) {
                for (a, &v) in acc.iter_mut().zip(&row[columns.clone()]) {
                    *a = *a + v;
                }
            }
        });
        sums
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "gen-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, n) = l.shape().dims2()?;
        let sums = dispatch!(self.name(), (s, l) => |g| Self::run(g, m, n));
        Ok((sums, Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    fn rand(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
        let v: Vec<f64> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        let r = b.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        d.to_scalar::<f64>().unwrap() / r.to_scalar::<f64>().unwrap().max(1e-30)
    }

    /// (m, k, n): ragged against the GEMM's tiles and the bias-sum tasks, one row, one column.
    const SHAPES: [(usize, usize, usize); 4] = [(37, 19, 300), (1, 8, 5), (64, 72, 1), (130, 257, 513)];

    #[test]
    fn forward_and_gradients_equal_candles_composition() {
        let mut rng = Rng::new(3);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for (m, k, n) in SHAPES {
                for with_bias in [true, false] {
                    let x = Var::from_tensor(&rand(&mut rng, &[m, k], dtype)).unwrap();
                    let w = Var::from_tensor(&rand(&mut rng, &[n, k], dtype)).unwrap();
                    let b = Var::from_tensor(&rand(&mut rng, &[n], dtype)).unwrap();
                    let g = rand(&mut rng, &[m, n], dtype);
                    let bias = with_bias.then(|| b.as_tensor());
                    let ours = linear(x.as_tensor(), w.as_tensor(), bias).unwrap();
                    let mut want = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                    if with_bias {
                        want = want.broadcast_add(b.as_tensor()).unwrap();
                    }
                    let case = format!("{dtype:?} {m}×{k}·{n} bias {with_bias}");
                    assert!(max_rel(&ours, &want) < tol, "{case}: forward");
                    let ga = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    let gb = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut vars = vec![("x", &x), ("w", &w)];
                    if with_bias {
                        vars.push(("b", &b));
                    }
                    for (name, v) in vars {
                        let (a, b) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                        assert!(a.is_contiguous(), "{case}: ∂{name} strided");
                        assert!(max_rel(a, b) < tol, "{case}: ∂{name} {}", max_rel(a, b));
                    }
                }
            }
        }
    }

    #[test]
    fn gradchecks_in_f64() {
        let mut rng = Rng::new(4);
        let (x, w, b) = (
            rand(&mut rng, &[9, 6], DType::F64),
            rand(&mut rng, &[7, 6], DType::F64),
            rand(&mut rng, &[7], DType::F64),
        );
        let worst = gradcheck(&|t| linear(&t[0], &t[1], Some(&t[2])), &[x, w, b], 1e-6, 64).unwrap();
        assert!(worst < 1e-7, "linear: relative gradient error {worst:e}");
    }

    #[test]
    fn operands_without_gradients_get_none_computed() {
        let mut rng = Rng::new(5);
        let x = rand(&mut rng, &[40, 12], DType::F32); // a constant input
        let w = Var::from_tensor(&rand(&mut rng, &[10, 12], DType::F32)).unwrap();
        let b = rand(&mut rng, &[10], DType::F32); // a frozen bias
        let y = linear(&x, w.as_tensor(), Some(&b)).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none() && grads.get(&b).is_none());
        let want = Tensor::ones((40, 10), DType::F32, &Device::Cpu).unwrap().t().unwrap().matmul(&x).unwrap();
        assert!(max_rel(grads.get(w.as_tensor()).unwrap(), &want) < 1e-6);
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let mut rng = Rng::new(6);
        let (x, w) = (rand(&mut rng, &[4, 3], DType::F32), rand(&mut rng, &[5, 2], DType::F32));
        let err = linear(&x, &w, None).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let w = rand(&mut rng, &[5, 3], DType::F32);
        let b = rand(&mut rng, &[4], DType::F32);
        assert!(linear(&x, &w, Some(&b)).is_err());
    }
}
