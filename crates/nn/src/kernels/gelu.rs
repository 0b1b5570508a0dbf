//! GELU, exact (`erf`, torch's default) and tanh-approximated (`approximate="tanh"`, DiT's MLP), with
//! gradient. Candle evaluates both through libm's scalar `erff` / `tanhf`, one call per element: 17% of
//! a DiT-XL/2 sampling call. Here f32 runs on polynomials the compiler vectorises, over the rayon
//! threads; f64 (gradchecks) uses libm's functions.
//!
//! - tanh form: `0.5·x·(1 + tanh(u)) = x·σ(2u)`, `u = √(2/π)·(x + 0.044715·x³)`.
//! - erf form: `x·Φ(x)`, with `erf` from Abramowitz & Stegun 7.1.26 refined to |error| < 1.5e-7.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::{exp_f32, sigmoid_f32};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// `x·Φ(x)`.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    Tanh,
}

/// erf(x) for f32: A&S 7.1.26 (|error| ≤ 1.5e-7), branch-free so it vectorises.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - p * exp_f32(-a * a);
    y.copysign(x)
}

impl Gelu {
    #[inline(always)]
    fn f32(self, x: f32) -> f32 {
        match self {
            Gelu::Erf => 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2 as f32)),
            Gelu::Tanh => {
                let u = SQRT_2_OVER_PI as f32 * (x + COEF as f32 * x * x * x);
                x * sigmoid_f32(2.0 * u)
            }
        }
    }

    /// dGELU/dx.
    #[inline(always)]
    fn f32_grad(self, x: f32) -> f32 {
        match self {
            Gelu::Erf => {
                0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2 as f32)) + x * INV_SQRT_2PI as f32 * exp_f32(-0.5 * x * x)
            }
            Gelu::Tanh => {
                let u = SQRT_2_OVER_PI as f32 * (x + COEF as f32 * x * x * x);
                let s = sigmoid_f32(2.0 * u);
                let du = SQRT_2_OVER_PI as f32 * (1.0 + 3.0 * COEF as f32 * x * x);
                s + x * s * (1.0 - s) * 2.0 * du
            }
        }
    }

    fn f64(self, x: f64) -> f64 {
        match self {
            Gelu::Erf => 0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2)),
            Gelu::Tanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh()),
        }
    }

    fn f64_grad(self, x: f64) -> f64 {
        match self {
            Gelu::Erf => 0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp(),
            Gelu::Tanh => {
                let th = (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh();
                0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
            }
        }
    }
}

/// `f` over `xs` in parallel chunks. Callers pass a closure with the GELU kind fixed, so each
/// instantiation inlines one formula and vectorises (a kind matched per element did neither).
fn map<T: Copy + Default + Send + Sync>(xs: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); xs.len()];
    out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    });
    out
}

/// `f(x, g)` over two slices in parallel chunks.
fn map2<T: Copy + Default + Send + Sync>(xs: &[T], gs: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); xs.len()];
    out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK))).for_each(|(o, (x, g))| {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            *o = f(x, g);
        }
    });
    out
}

/// The activation (`grad: false`) or its derivative (`grad: true`), elementwise.
struct Op {
    kind: Gelu,
    grad: bool,
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        if self.grad {
            "gen-gelu-grad"
        } else {
            "gen-gelu"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!("gelu", (s, l) => |x| match (self.kind, self.grad) {
            (Gelu::Tanh, false) => map(x, |v| Real::gelu(Gelu::Tanh, v)),
            (Gelu::Erf, false) => map(x, |v| Real::gelu(Gelu::Erf, v)),
            (Gelu::Tanh, true) => map(x, |v| Real::gelu_grad(Gelu::Tanh, v)),
            (Gelu::Erf, true) => map(x, |v| Real::gelu_grad(Gelu::Erf, v)),
        });
        Ok((out, l.shape().clone()))
    }

    /// ∂x = ∂y · GELU'(x) in one pass (the derivative op itself is not differentiated again).
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if self.grad {
            candle_core::bail!("gelu: second derivatives are not implemented");
        }
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &Backward(self.kind))?))
    }
}

/// (x, ∂y) → ∂y · GELU'(x).
struct Backward(Gelu);

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "gen-gelu-backward"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sg: &CpuStorage, lg: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(self.name(), (sx, lx), (sg, lg) => |x, g| match self.0 {
            Gelu::Tanh => map2(x, g, |v, g| g * Real::gelu_grad(Gelu::Tanh, v)),
            Gelu::Erf => map2(x, g, |v, g| g * Real::gelu_grad(Gelu::Erf, v)),
        });
        Ok((out, lx.shape().clone()))
    }
}

/// The two element types the op runs on.
trait Real: Copy + std::ops::Mul<Output = Self> {
    fn gelu(k: Gelu, x: Self) -> Self;
    fn gelu_grad(k: Gelu, x: Self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn gelu(k: Gelu, x: f32) -> f32 {
        k.f32(x)
    }
    #[inline(always)]
    fn gelu_grad(k: Gelu, x: f32) -> f32 {
        k.f32_grad(x)
    }
}

impl Real for f64 {
    fn gelu(k: Gelu, x: f64) -> f64 {
        k.f64(x)
    }
    fn gelu_grad(k: Gelu, x: f64) -> f64 {
        k.f64_grad(x)
    }
}

/// GELU of `x`, with gradient: our kernel on CPU f32/f64, Candle's `gelu_erf` / `gelu` elsewhere.
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(Op { kind, grad: false });
    }
    match kind {
        Gelu::Erf => x.gelu_erf(),
        Gelu::Tanh => x.gelu(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::Device;
    use gen_runtime::Rng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn f32_kernel_matches_candle_and_the_f64_formula() {
        let dev = Device::Cpu;
        // a dense sweep over [-12, 12] plus the tails
        let mut xs: Vec<f32> = (0..48_001).map(|i| -12.0 + i as f32 * 5e-4).collect();
        xs.extend([-100.0, -30.0, 30.0, 100.0, 0.0]);
        let x = Tensor::new(xs.as_slice(), &dev).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        for (kind, candle) in [(Gelu::Erf, x.gelu_erf().unwrap()), (Gelu::Tanh, x.gelu().unwrap())] {
            let ours = gelu(&x, kind).unwrap();
            assert!(max_diff(&ours, &candle) < 2e-6, "{kind:?} vs Candle: {}", max_diff(&ours, &candle));
            let exact = gelu(&x64, kind).unwrap();
            assert!(max_diff(&ours, &exact) < 2e-6, "{kind:?} vs f64: {}", max_diff(&ours, &exact));
            let g32 = x.apply_op1_no_bwd(&Op { kind, grad: true }).unwrap();
            let g64 = x64.apply_op1_no_bwd(&Op { kind, grad: true }).unwrap();
            assert!(max_diff(&g32, &g64) < 2e-6, "{kind:?} derivative: {}", max_diff(&g32, &g64));
        }
    }

    #[test]
    fn gradcheck_f64_both_forms() {
        let mut r = Rng::new(21);
        let x = r.randn((3, 7), 1.5, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        for kind in [Gelu::Erf, Gelu::Tanh] {
            let err = gradcheck(&|t| gelu(&t[0], kind), std::slice::from_ref(&x), 1e-6, 100).unwrap();
            assert!(err < 1e-7, "{kind:?}: {err}");
        }
    }
}
