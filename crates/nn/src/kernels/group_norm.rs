//! Fused GroupNorm (+ optional SiLU) for the CPU, forward and backward, as Candle CustomOps.
//!
//! Candle's GroupNorm is a chain of ~10 elementwise/reduce ops, each a full pass over the tensor
//! (CANDLE-NOTES §4). Here each (sample, group) slice, contiguous in NCHW, is one rayon task: mean and variance
//! (two passes, f64 block sums), then `y = x·a_c + b_c` with `a_c = γ_c·rstd`, `b_c = β_c − mean·a_c`
//! (torch's form), then SiLU in place. The forward keeps each group's (mean, rstd) for the backward, as
//! torch saves them (N·G pairs); a backward without them (an op built by hand) recomputes them.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::real::Real;

/// mean and 1/sqrt(var + eps) of one group slice, in one pass (moments shifted by the mean of the
/// first few values, so the variance does not cancel).
fn stats<T: Real>(xs: &[T], eps: f64) -> (T, T) {
    let n = xs.len() as f64;
    let head = &xs[..xs.len().min(16)];
    let k = T::from_f64(T::sum(head) / head.len().max(1) as f64);
    let (s1, s2) = T::shifted_moments(xs, k);
    let d = s1 / n;
    let var = (s2 / n - d * d).max(0.0);
    (T::from_f64(k.to_f64() + d), T::from_f64(1.0 / (var + eps).sqrt()))
}

#[derive(Clone, Debug)]
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
    /// (mean, rstd) per (sample, group), in f64, set by the forward for the backward of the same node.
    pub saved: Arc<OnceLock<Vec<(f64, f64)>>>,
}

impl GroupNormOp {
    pub fn new(groups: usize, eps: f64, silu: bool) -> Self {
        Self { groups, eps, silu, saved: Arc::default() }
    }
}

impl GroupNormOp {
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize)> {
        let d = shape.dims();
        if d.len() < 2 || !d[1].is_multiple_of(self.groups) {
            candle_core::bail!("group_norm: input {:?} does not split into {} groups", d, self.groups);
        }
        let spatial: usize = d[2..].iter().product();
        Ok((d[0], d[1], spatial))
    }

    fn fwd<T: Real>(&self, x: &[T], w: &[T], b: &[T], c: usize, hw: usize) -> Vec<T> {
        let cpg = c / self.groups;
        let len = cpg * hw;
        // the output is written exactly once, so it is not zero-filled first (a memset of the whole output)
        let mut y: Vec<T> = Vec::with_capacity(x.len());
        let out = &mut y.spare_capacity_mut()[..x.len()];
        let saved: Vec<(f64, f64)> = out
            .par_chunks_mut(len)
            .zip(x.par_chunks(len))
            .enumerate()
            .map(|(ng, (yg, xg))| {
                let g = ng % self.groups;
                let (mean, rstd) = stats(xg, self.eps);
                for j in 0..cpg {
                    let ch = g * cpg + j;
                    let a = w[ch] * rstd;
                    let sh = b[ch] - mean * a;
                    let (xs, ys) = (&xg[j * hw..(j + 1) * hw], &mut yg[j * hw..(j + 1) * hw]);
                    if self.silu {
                        for (yv, &xv) in ys.iter_mut().zip(xs) {
                            let u = xv * a + sh;
                            yv.write(u * u.sigmoid());
                        }
                    } else {
                        for (yv, &xv) in ys.iter_mut().zip(xs) {
                            yv.write(xv * a + sh);
                        }
                    }
                }
                (mean.to_f64(), rstd.to_f64())
            })
            .collect();
        // a node's forward runs once; a second forward of one op (reused by hand) keeps the first
        let _ = self.saved.set(saved);
        // SAFETY: the groups tile `out` exactly (x.len() = n·groups·len) and every element was written
        unsafe { y.set_len(x.len()) };
        y
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "gen-group-norm"
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
        let (_, c, hw) = self.dims(l1.shape())?;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2), (s3, l3) => |x, w, b| self.fwd(x, w, b, c, hw));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let n = x.elem_count();
        let wb = Tensor::stack(&[w, b], 0)?;
        let packed = x.apply_op3_no_bwd(&wb, &dy.contiguous()?, &GroupNormBwd(self.clone()))?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, c)?;
        let db = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward: (x, [γ; β], dy) → packed `[dx (numel) | dγ (C) | dβ (C)]`.
struct GroupNormBwd(GroupNormOp);

impl GroupNormBwd {
    fn run<T: Real>(&self, x: &[T], wb: &[T], dy: &[T], c: usize, hw: usize) -> Vec<T> {
        let op = &self.0;
        let (w, b) = wb.split_at(c);
        let cpg = c / op.groups;
        let len = cpg * hw;
        let numel = x.len();
        let saved = op.saved.get().filter(|s| s.len() * len == numel);
        // every element is written before it is read (dx in pass 1, dγ/dβ at the end): no zero-fill
        let mut out: Vec<T> = Vec::with_capacity(numel + 2 * c);
        let dx = &mut out.spare_capacity_mut()[..numel];
        // per (sample, group): per-channel (dγ, dβ) partials
        let partials: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(len)
            .zip(x.par_chunks(len).zip(dy.par_chunks(len)))
            .enumerate()
            .map(|(ng, (dxg, (xg, dyg)))| {
                let g = ng % op.groups;
                let (mean, rstd) = match saved {
                    Some(s) => (T::from_f64(s[ng].0), T::from_f64(s[ng].1)),
                    None => stats(xg, op.eps),
                };
                let mut per_channel = Vec::with_capacity(cpg);
                // pass 1: du = dy·silu'(u) into dx; Σdu and Σdu·x per channel
                for j in 0..cpg {
                    let ch = g * cpg + j;
                    let r = j * hw..(j + 1) * hw;
                    let (xs, dys, dus) = (&xg[r.clone()], &dyg[r.clone()], &mut dxg[r]);
                    if op.silu {
                        let a = w[ch] * rstd;
                        let sh = b[ch] - mean * a;
                        for ((du, &xv), &d) in dus.iter_mut().zip(xs).zip(dys) {
                            let u = xv * a + sh;
                            let s = u.sigmoid();
                            du.write(d * (s + u * s * (T::from_f64(1.0) - s)));
                        }
                    } else {
                        for (du, &d) in dus.iter_mut().zip(dys) {
                            du.write(d);
                        }
                    }
                    // SAFETY: every element of `dus` was written just above
                    let dus: &[T] = unsafe { &*(dus as *const [std::mem::MaybeUninit<T>] as *const [T]) };
                    let db = T::sum(dus);
                    let dg = rstd.to_f64() * (T::dot(dus, xs) - mean.to_f64() * db);
                    per_channel.push((dg, db));
                }
                // pass 2: dx = rstd·(γ·du − mean_g(γ·du) − x̂·mean_g(γ·du·x̂)), linear in (du, x)
                let inv_len = 1.0 / len as f64;
                let mg: f64 =
                    per_channel.iter().enumerate().map(|(j, p)| w[g * cpg + j].to_f64() * p.1).sum::<f64>() * inv_len;
                let mgx: f64 =
                    per_channel.iter().enumerate().map(|(j, p)| w[g * cpg + j].to_f64() * p.0).sum::<f64>() * inv_len;
                let (rs, m) = (rstd.to_f64(), mean.to_f64());
                let bx = T::from_f64(-rs * rs * mgx);
                let cst = T::from_f64(-rs * mg + m * rs * rs * mgx);
                // SAFETY: pass 1 wrote every channel of this group
                let dxg: &mut [T] = unsafe { &mut *(dxg as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
                for j in 0..cpg {
                    let a = T::from_f64(rs * w[g * cpg + j].to_f64());
                    let r = j * hw..(j + 1) * hw;
                    for (d, &xv) in dxg[r.clone()].iter_mut().zip(&xg[r]) {
                        *d = a * *d + bx * xv + cst;
                    }
                }
                per_channel
            })
            .collect();
        let groups_per_sample = op.groups;
        let mut dgamma = vec![0f64; c];
        let mut dbeta = vec![0f64; c];
        for (ng, p) in partials.iter().enumerate() {
            let g = ng % groups_per_sample;
            for (j, (dg, db)) in p.iter().enumerate() {
                dgamma[g * cpg + j] += dg;
                dbeta[g * cpg + j] += db;
            }
        }
        let tail = &mut out.spare_capacity_mut()[numel..numel + 2 * c];
        for ch in 0..c {
            tail[ch].write(T::from_f64(dgamma[ch]));
            tail[c + ch].write(T::from_f64(dbeta[ch]));
        }
        // SAFETY: dx (all groups, pass 1) and the 2·C tail were all written
        unsafe { out.set_len(numel + 2 * c) };
        out
    }
}

impl CustomOp3 for GroupNormBwd {
    fn name(&self) -> &'static str {
        "gen-group-norm-bwd"
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
        let (_, c, hw) = self.0.dims(l1.shape())?;
        let n = l1.shape().elem_count() + 2 * c;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2), (s3, l3) => |x, wb, dy| self.run(x, wb, dy, c, hw));
        Ok((out, Shape::from(n)))
    }
}

/// Fused path for CPU f32/f64; `None` when the reference composition must be used instead.
pub fn try_fused(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(None);
    }
    let (w, b) = (w.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, GroupNormOp::new(groups, eps, silu))?;
    Ok(Some(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use crate::kernels::reference;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    fn inputs(rng: &mut Rng, shape: &[usize], dtype: DType) -> (Tensor, Tensor, Tensor) {
        let c = shape[1];
        let x = (rng.randn(shape, 1.0, &Device::Cpu).unwrap() + 0.7).unwrap();
        let w = (rng.randn(c, 0.3, &Device::Cpu).unwrap() + 1.0).unwrap();
        let b = rng.randn(c, 0.3, &Device::Cpu).unwrap();
        (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap())
    }

    #[test]
    fn group_norm_gradcheck_f64() {
        let mut rng = Rng::new(1);
        for silu in [false, true] {
            for shape in [[2usize, 64, 3, 5], [1, 32, 4, 4]] {
                let (x, w, b) = inputs(&mut rng, &shape, DType::F64);
                let f = |t: &[Tensor]| t[0].apply_op3(&t[1], &t[2], GroupNormOp::new(32, 1e-6, silu));
                let err = gradcheck(&f, &[x, w, b], 1e-6, 200).unwrap();
                assert!(err < 1e-6, "silu {silu} shape {shape:?}: relative error {err}");
            }
        }
    }

    #[test]
    fn backward_from_saved_statistics_equals_recomputed() {
        let mut rng = Rng::new(5);
        for silu in [false, true] {
            let (x, w, b) = inputs(&mut rng, &[2, 64, 6, 7], DType::F32);
            let dy = rng.randn(&[2, 64, 6, 7][..], 1.0, &Device::Cpu).unwrap();
            let wb = Tensor::stack(&[&w, &b], 0).unwrap();
            let op = GroupNormOp::new(32, 1e-6, silu);
            x.apply_op3_no_bwd(&w, &b, &op).unwrap();
            assert_eq!(op.saved.get().map(Vec::len), Some(2 * 32), "the forward keeps one pair per group");
            let saved = x.apply_op3_no_bwd(&wb, &dy, &GroupNormBwd(op)).unwrap();
            let fresh = x.apply_op3_no_bwd(&wb, &dy, &GroupNormBwd(GroupNormOp::new(32, 1e-6, silu))).unwrap();
            let d = (saved - fresh).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "silu {silu}");
        }
    }

    #[test]
    fn fused_group_norm_equals_reference_composition_forward_and_backward() {
        let mut rng = Rng::new(2);
        for (shape, silu) in [([3usize, 96, 7, 5], true), ([1, 32, 8, 8], false), ([2, 64, 16, 9], true)] {
            let (x, w, b) = inputs(&mut rng, &shape, DType::F32);
            let dy = rng.randn(&shape[..], 1.0, &Device::Cpu).unwrap();
            let run = |fused: bool| {
                let (xv, wv, bv) =
                    (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                let y = if fused {
                    try_fused(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 32, 1e-6, silu).unwrap().unwrap()
                } else {
                    reference::group_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 32, 1e-6, silu).unwrap()
                };
                let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                let grads: Vec<Tensor> =
                    [&xv, &wv, &bv].iter().map(|v| g.get(v.as_tensor()).unwrap().clone()).collect();
                (y, grads)
            };
            let (y1, g1) = run(true);
            let (y0, g0) = run(false);
            let maxdiff =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let maxabs = |a: &Tensor| a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(maxdiff(&y1, &y0) < 1e-5, "forward {shape:?}");
            for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
                assert!(maxdiff(a, b) <= 1e-4 * maxabs(b).max(1.0), "grad {i} {shape:?}: {}", maxdiff(a, b));
            }
        }
    }
}
