//! The two adaLN ops of a DiT block over tokens x [B, N, D] with per-sample vectors [B, D]:
//! `modulate(x, shift, scale) = x·(1 + scale) + shift` and `gated_add(x, h, gate) = x + h·gate`.
//!
//! Candle composes each as broadcasts: three passes forward, and a backward that multiplies through a
//! stride-0 operand element by element, then reduces the per-sample gradients over the tokens one
//! element at a time. Here each is one pass forward and one backward that writes the token gradient
//! and sums the per-sample ones in the same read (the residual's gradient passes through untouched).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::real::Real;

/// Whether the fused ops apply: CPU, one float dtype, x [B, N, D] with per-sample `vectors` [B, D].
fn applies(x: &Tensor, vectors: &[&Tensor]) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.rank() == 3
        && vectors.iter().all(|v| v.dtype() == x.dtype() && v.dims() == [x.dims()[0], x.dims()[2]])
}

/// `x·(1 + scale) + shift` for x [B, N, D], shift and scale [B, D].
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if applies(x, &[shift, scale]) {
        return x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, Modulate);
    }
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// `x + h·gate` for x and h [B, N, D], gate [B, D].
pub fn gated_add(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if applies(x, &[gate]) && h.dims() == x.dims() && h.dtype() == x.dtype() {
        return x.contiguous()?.apply_op3(&h.contiguous()?, &gate.contiguous()?, GatedAdd);
    }
    x + h.broadcast_mul(&gate.unsqueeze(1)?)?
}

/// (B, N·D, D) of x [B, N, D].
fn sizes(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, n, d) = l.shape().dims3()?;
    Ok((b, n * d, d))
}

struct Modulate;

impl Modulate {
    fn run<T: Real>(x: &[T], shift: &[T], scale: &[T], per_sample: usize, d: usize) -> Vec<T> {
        let mut y = vec![T::from_f64(0.0); x.len()];
        y.par_chunks_mut(per_sample).zip(x.par_chunks(per_sample)).enumerate().for_each(|(s, (ys, xs))| {
            let (sh, sc) = (&shift[s * d..][..d], &scale[s * d..][..d]);
            for (yr, xr) in ys.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                for i in 0..d {
                    yr[i] = xr[i] * (T::from_f64(1.0) + sc[i]) + sh[i];
                }
            }
        });
        y
    }
}

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "gen-modulate"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, per_sample, d) = sizes(lx)?;
        let y = dispatch!(self.name(), (sx, lx), (s1, l1), (s2, l2) => |x, shift, scale| Self::run(x, shift, scale, per_sample, d));
        Ok((y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, sums) = Backward { modulate: true }.apply(x, scale, g)?;
        let gshift = sums.narrow(1, 0, 1)?.reshape(shift.shape())?;
        let gscale = sums.narrow(1, 1, 1)?.reshape(scale.shape())?;
        Ok((Some(gx), Some(gshift), Some(gscale)))
    }
}

/// The backward of both ops, over (a, v, g) with a = x and v = scale for `modulate`, a = h and
/// v = gate for `gated_add`: packed `[g·(1 + v) or g·v (B·N·D) | per sample: (Σₙ g (D), modulate only),
/// Σₙ g·a (D)]`, one read of g and a.
struct Backward {
    modulate: bool,
}

impl Backward {
    /// Per-sample sums in the packed tail: Σg and Σg·a, or Σg·a alone.
    fn sums(&self) -> usize {
        if self.modulate {
            2
        } else {
            1
        }
    }

    fn run<T: Real>(&self, a: &[T], v: &[T], g: &[T], per_sample: usize, d: usize) -> Vec<T> {
        let sums = self.sums();
        let b = a.len() / per_sample;
        let one = T::from_f64(if self.modulate { 1.0 } else { 0.0 });
        let mut out = vec![T::from_f64(0.0); a.len() + sums * b * d];
        let (ga, tail) = out.split_at_mut(a.len());
        ga.par_chunks_mut(per_sample).zip(tail.par_chunks_mut(sums * d)).enumerate().for_each(|(s, (gas, acc))| {
            let v = &v[s * d..][..d];
            let (acc_g, acc_ga) = acc.split_at_mut((sums - 1) * d);
            let (as_, gs) = (&a[s * per_sample..][..per_sample], &g[s * per_sample..][..per_sample]);
            for ((gar, ar), gr) in gas.chunks_exact_mut(d).zip(as_.chunks_exact(d)).zip(gs.chunks_exact(d)) {
                for i in 0..d {
                    gar[i] = gr[i] * (one + v[i]);
                    acc_ga[i] = acc_ga[i] + gr[i] * ar[i];
                }
                for (acc, &g) in acc_g.iter_mut().zip(gr) {
                    *acc = *acc + g;
                }
            }
        });
        out
    }

    /// Runs the pass and splits it: (∂a [like a], the per-sample sums [B, sums, D]).
    fn apply(&self, a: &Tensor, v: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, (b, d)) = (a.elem_count(), v.dims2()?);
        let packed = a.apply_op3_no_bwd(v, &g.contiguous()?, self)?;
        let ga = packed.narrow(0, 0, n)?.reshape(a.shape())?;
        let sums = packed.narrow(0, n, b * self.sums() * d)?.reshape((b, self.sums(), d))?;
        Ok((ga, sums))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        if self.modulate {
            "gen-modulate-bwd"
        } else {
            "gen-gated-add-bwd"
        }
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, per_sample, d) = sizes(la)?;
        let out = dispatch!(self.name(), (sa, la), (sv, lv), (sg, lg) => |a, v, g| self.run(a, v, g, per_sample, d));
        Ok((out, Shape::from(b * per_sample + self.sums() * b * d)))
    }
}

struct GatedAdd;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gen-gated-add"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sh: &CpuStorage,
        lh: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, per_sample, d) = sizes(lx)?;
        let y = dispatch!(self.name(), (sx, lx), (sh, lh), (sg, lg) => |x, h, gate| {
            let mut y = x.to_vec();
            y.par_chunks_mut(per_sample).zip(h.par_chunks(per_sample)).enumerate().for_each(|(s, (ys, hs))| {
                let gate = &gate[s * d..][..d];
                for (yr, hr) in ys.chunks_exact_mut(d).zip(hs.chunks_exact(d)) {
                    for ((y, &h), &g) in yr.iter_mut().zip(hr).zip(gate) {
                        *y += h * g;
                    }
                }
            });
            y
        });
        Ok((y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        h: &Tensor,
        gate: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gh, sums) = Backward { modulate: false }.apply(h, gate, g)?;
        let ggate = sums.reshape(gate.shape())?;
        // the residual's gradient is the output's: handed on as it is (Candle tensors are immutable)
        Ok((Some(g.detach()), Some(gh), Some(ggate)))
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

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        d.to_scalar::<f64>().unwrap()
    }

    /// Both ops against Candle's broadcast composition: values and all three gradients.
    #[test]
    fn match_the_broadcast_composition() {
        let mut rng = Rng::new(7);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            for (b, n, d) in [(2, 5, 7), (3, 64, 40), (1, 1, 1)] {
                let x = Var::from_tensor(&rand(&mut rng, &[b, n, d], dtype)).unwrap();
                let h = Var::from_tensor(&rand(&mut rng, &[b, n, d], dtype)).unwrap();
                let u = Var::from_tensor(&rand(&mut rng, &[b, d], dtype)).unwrap();
                let v = Var::from_tensor(&rand(&mut rng, &[b, d], dtype)).unwrap();
                let g = rand(&mut rng, &[b, n, d], dtype);
                let (xt, ht, ut, vt) = (x.as_tensor(), h.as_tensor(), u.as_tensor(), v.as_tensor());
                let composed_mod = xt.broadcast_mul(&(vt.unsqueeze(1).unwrap() + 1.0).unwrap()).unwrap();
                let composed_mod = composed_mod.broadcast_add(&ut.unsqueeze(1).unwrap()).unwrap();
                let composed_gate = (xt + ht.broadcast_mul(&vt.unsqueeze(1).unwrap()).unwrap()).unwrap();
                let cases = [
                    ("modulate", modulate(xt, ut, vt).unwrap(), composed_mod, vec![&x, &u, &v]),
                    ("gated_add", gated_add(xt, ht, vt).unwrap(), composed_gate, vec![&x, &h, &v]),
                ];
                for (name, ours, want, vars) in cases {
                    assert!(max_abs(&ours, &want) < tol, "{name} {dtype:?} {b}×{n}×{d}: forward");
                    let ga = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    let gb = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    for (i, var) in vars.into_iter().enumerate() {
                        let (a, w) = (ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
                        assert!(max_abs(a, w) < tol, "{name} {dtype:?} {b}×{n}×{d}: gradient {i}: {}", max_abs(a, w));
                    }
                }
            }
        }
    }

    #[test]
    fn gradcheck_in_f64() {
        let mut rng = Rng::new(8);
        let (x, h) = (rand(&mut rng, &[2, 3, 4], DType::F64), rand(&mut rng, &[2, 3, 4], DType::F64));
        let (u, v) = (rand(&mut rng, &[2, 4], DType::F64), rand(&mut rng, &[2, 4], DType::F64));
        let worst = gradcheck(&|t| modulate(&t[0], &t[1], &t[2]), &[x.clone(), u, v.clone()], 1e-6, 64).unwrap();
        assert!(worst < 1e-7, "modulate: {worst:e}");
        let worst = gradcheck(&|t| gated_add(&t[0], &t[1], &t[2]), &[x, h, v], 1e-6, 64).unwrap();
        assert!(worst < 1e-7, "gated_add: {worst:e}");
    }
}
