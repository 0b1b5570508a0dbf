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

/// Whether the fused ops apply: CPU, one float dtype, x [B, N, D] with [B, D] vectors.
fn applies(x: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && a.dtype() == x.dtype()
        && b.dtype() == x.dtype()
        && x.rank() == 3
        && a.dims() == [x.dims()[0], x.dims()[2]]
}

/// `x·(1 + scale) + shift` for x [B, N, D], shift and scale [B, D].
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if applies(x, shift, scale) && scale.dims() == shift.dims() {
        return x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, Modulate);
    }
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// `x + h·gate` for x and h [B, N, D], gate [B, D].
pub fn gated_add(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if applies(x, gate, gate) && h.dims() == x.dims() && h.dtype() == x.dtype() {
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
        let (n, bd) = (x.elem_count(), shift.elem_count());
        let packed = x.apply_op3_no_bwd(scale, &g.contiguous()?, &ModulateBwd)?;
        let gx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let gshift = packed.narrow(0, n, bd)?.reshape(shift.shape())?;
        let gscale = packed.narrow(0, n + bd, bd)?.reshape(scale.shape())?;
        Ok((Some(gx), Some(gshift), Some(gscale)))
    }
}

/// (x, scale, g) → packed `[∂x (B·N·D) | ∂shift (B·D) | ∂scale (B·D)]`.
struct ModulateBwd;

impl ModulateBwd {
    fn run<T: Real>(x: &[T], scale: &[T], g: &[T], per_sample: usize, d: usize) -> Vec<T> {
        let b = x.len() / per_sample;
        let mut out = vec![T::from_f64(0.0); x.len() + 2 * b * d];
        let (gx, sums) = out.split_at_mut(x.len());
        let (gshift, gscale) = sums.split_at_mut(b * d);
        gx.par_chunks_mut(per_sample).zip(gshift.par_chunks_mut(d).zip(gscale.par_chunks_mut(d))).enumerate().for_each(
            |(s, (gxs, (gsh, gsc)))| {
                let sc = &scale[s * d..][..d];
                let (xs, gs) = (&x[s * per_sample..][..per_sample], &g[s * per_sample..][..per_sample]);
                for ((gxr, xr), gr) in gxs.chunks_exact_mut(d).zip(xs.chunks_exact(d)).zip(gs.chunks_exact(d)) {
                    for i in 0..d {
                        gxr[i] = gr[i] * (T::from_f64(1.0) + sc[i]);
                        gsh[i] = gsh[i] + gr[i];
                        gsc[i] = gsc[i] + gr[i] * xr[i];
                    }
                }
            },
        );
        out
    }
}

impl CustomOp3 for ModulateBwd {
    fn name(&self) -> &'static str {
        "gen-modulate-bwd"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, per_sample, d) = sizes(lx)?;
        let out =
            dispatch!(self.name(), (sx, lx), (s1, l1), (sg, lg) => |x, scale, g| Self::run(x, scale, g, per_sample, d));
        Ok((out, Shape::from(b * per_sample + 2 * b * d)))
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
        let (n, bd) = (h.elem_count(), gate.elem_count());
        let packed = h.apply_op3_no_bwd(gate, &g.contiguous()?, &GatedAddBwd)?;
        let gh = packed.narrow(0, 0, n)?.reshape(h.shape())?;
        let ggate = packed.narrow(0, n, bd)?.reshape(gate.shape())?;
        // the residual's gradient is the output's: handed on as it is (Candle tensors are immutable)
        Ok((Some(g.detach()), Some(gh), Some(ggate)))
    }
}

/// (h, gate, g) → packed `[∂h (B·N·D) | ∂gate (B·D)]`.
struct GatedAddBwd;

impl GatedAddBwd {
    fn run<T: Real>(h: &[T], gate: &[T], g: &[T], per_sample: usize, d: usize) -> Vec<T> {
        let b = h.len() / per_sample;
        let mut out = vec![T::from_f64(0.0); h.len() + b * d];
        let (gh, ggate) = out.split_at_mut(h.len());
        gh.par_chunks_mut(per_sample).zip(ggate.par_chunks_mut(d)).enumerate().for_each(|(s, (ghs, gga))| {
            let gate = &gate[s * d..][..d];
            let (hs, gs) = (&h[s * per_sample..][..per_sample], &g[s * per_sample..][..per_sample]);
            for ((ghr, hr), gr) in ghs.chunks_exact_mut(d).zip(hs.chunks_exact(d)).zip(gs.chunks_exact(d)) {
                for i in 0..d {
                    ghr[i] = gr[i] * gate[i];
                    gga[i] = gga[i] + gr[i] * hr[i];
                }
            }
        });
        out
    }
}

impl CustomOp3 for GatedAddBwd {
    fn name(&self) -> &'static str {
        "gen-gated-add-bwd"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, per_sample, d) = sizes(lh)?;
        let out =
            dispatch!(self.name(), (sh, lh), (s1, l1), (sg, lg) => |h, gate, g| Self::run(h, gate, g, per_sample, d));
        Ok((out, Shape::from(b * per_sample + b * d)))
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
