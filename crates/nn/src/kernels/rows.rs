//! Row-wise ops over the last dimension, with gradients: softmax, causal (masked) softmax and LayerNorm.
//!
//! Candle's fused `softmax_last_dim` and `layer_norm` have no backward (the input silently gets no
//! gradient) and its composed versions are slower (BENCHMARKS.md: `softmax_candle_nograd`). These run one rayon task per block of
//! rows in the forward; their backward is a short composition of Candle ops on the saved output.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::real::Real;

/// softmax over the last dimension.
pub struct Softmax;

/// `yr = softmax(xr)` for one non-empty row.
fn softmax_row<T: Real + PartialOrd>(xr: &[T], yr: &mut [T]) {
    let m = xr.iter().copied().fold(xr[0], |a, b| if b > a { b } else { a });
    for (yv, &xv) in yr.iter_mut().zip(xr) {
        *yv = xv - m;
    }
    T::exp_in_place(yr);
    let inv = T::from_f64(1.0 / T::sum(yr));
    for v in yr.iter_mut() {
        *v = *v * inv;
    }
}

impl Softmax {
    fn run<T: Real + PartialOrd>(x: &[T], d: usize) -> Vec<T> {
        let mut y = vec![T::default(); x.len()];
        y.par_chunks_mut(d.max(1)).zip(x.par_chunks(d.max(1))).for_each(|(yr, xr)| softmax_row(xr, yr));
        y
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "gen-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = *l.dims().last().unwrap_or(&1);
        let out = dispatch!(self.name(), (s, l) => |x| Self::run(x, d));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // dx = y ⊙ (dy − Σ dy⊙y); y detached, or the gradient would hold the forward graph (a
        // parameter's gradient, kept in Adam's moments, would then keep every step's graph alive)
        let y = &y.detach();
        let s = (dy * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * dy.broadcast_sub(&s)?)?))
    }
}

/// softmax over the last dimension of scores [.., Tq, Tk] in which query i sees only keys j ≤ i + offset
/// (causal attention; `offset` is the number of keys before the first query, e.g. the cached length).
/// The weights of the other keys are exactly 0, and so is their gradient.
pub struct CausalSoftmax {
    pub offset: usize,
}

impl CausalSoftmax {
    fn run<T: Real + PartialOrd>(&self, x: &[T], tq: usize, tk: usize) -> Vec<T> {
        let mut y = vec![T::default(); x.len()];
        y.par_chunks_mut(tk.max(1)).zip(x.par_chunks(tk.max(1))).enumerate().for_each(|(r, (yr, xr))| {
            let seen = (r % tq + self.offset + 1).min(tk);
            softmax_row(&xr[..seen], &mut yr[..seen]); // the rest stays 0
        });
        y
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "gen-causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (tq, tk) = query_key_dims(l.dims())?;
        let out = dispatch!(self.name(), (s, l) => |x| self.run(x, tq, tk));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // as softmax: dx = y ⊙ (dy − Σ dy⊙y), which is 0 where y is
        let y = &y.detach();
        let s = (dy * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * dy.broadcast_sub(&s)?)?))
    }
}

/// (Tq, Tk): the last two dimensions of attention scores.
fn query_key_dims(dims: &[usize]) -> Result<(usize, usize)> {
    match dims {
        [.., tq, tk] => Ok((*tq, *tk)),
        _ => candle_core::bail!("causal softmax: scores must be [.., Tq, Tk], got {dims:?}"),
    }
}

/// LayerNorm over the last dimension with affine weight and bias (torch `nn.LayerNorm`).
pub struct LayerNorm {
    pub eps: f64,
}

impl LayerNorm {
    fn run<T: Real>(&self, x: &[T], w: &[T], b: &[T], d: usize) -> Vec<T> {
        let mut y = vec![T::default(); x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let mean = T::sum(xr) / d as f64;
            let var = T::sum_sq_dev(xr, T::from_f64(mean)) / d as f64;
            let (m, r) = (T::from_f64(mean), T::from_f64(1.0 / (var + self.eps).sqrt()));
            for i in 0..d {
                yr[i] = (xr[i] - m) * r * w[i] + b[i];
            }
        });
        y
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "gen-layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        let out = dispatch!(self.name(), (s1, l1), (s2, l2), (s3, l3) => |x, w, b| self.run(x, w, b, d));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // detached: the gradients must not hold the forward graph (see Softmax::bwd)
        let (x, w) = (&x.detach(), &w.detach());
        let d = x.dim(D::Minus1)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let rstd = ((xc.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip())?;
        let xhat = xc.broadcast_mul(&rstd)?;
        let g = dy.broadcast_mul(w)?;
        let mg = g.mean_keepdim(D::Minus1)?;
        let mgx = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = g.broadcast_sub(&mg)?.sub(&xhat.broadcast_mul(&mgx)?)?.broadcast_mul(&rstd)?;
        let rows = x.elem_count() / d;
        let dw = (dy * &xhat)?.reshape((rows, d))?.sum(0)?;
        let db = dy.reshape((rows, d))?.sum(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// softmax over the last dimension, with gradient; fused on CPU f32/f64.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Causal softmax of attention scores [.., Tq, Tk] (query i sees keys j ≤ i + offset, the others get
/// weight exactly 0), with gradient; fused on CPU f32/f64.
pub fn softmax_last_dim_causal(x: &Tensor, offset: usize) -> Result<Tensor> {
    query_key_dims(x.dims())?;
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(CausalSoftmax { offset });
    }
    super::reference::softmax_last_dim_causal(x, offset)
}

/// LayerNorm over the last dimension, with gradient; fused on CPU f32/f64.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let (w, b) = (w.to_dtype(x.dtype())?.contiguous()?, b.to_dtype(x.dtype())?.contiguous()?);
        return x.contiguous()?.apply_op3(&w, &b, LayerNorm { eps });
    }
    candle_nn::ops::layer_norm_slow(x, w, b, eps as f32)
}
