//! The float types our CPU kernels run in: f32 (fast paths) and f64 (gradient checks).

use std::ops::{Add, Div, Mul, Sub};

use super::simd;

pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + 'static
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sum(xs: &[Self]) -> f64;
    fn sum_sq_dev(xs: &[Self], m: Self) -> f64;
    /// (Σ (x − k), Σ (x − k)²) in one pass.
    fn shifted_moments(xs: &[Self], k: Self) -> (f64, f64);
    fn dot(a: &[Self], b: &[Self]) -> f64;
    fn sigmoid(self) -> Self;
    /// e^x elementwise (the f32 path is the vectorised polynomial).
    fn exp_in_place(xs: &mut [Self]);
    /// Runs `f` on a per-thread scratch buffer of `len` elements (contents unspecified), so kernels do
    /// not fault fresh pages in for every temporary. Re-entrant calls get a fresh buffer.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static SCRATCH_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_F64: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn scratch<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn sum(xs: &[Self]) -> f64 {
        simd::sum_f32(xs)
    }
    fn sum_sq_dev(xs: &[Self], m: Self) -> f64 {
        simd::sum_sq_dev_f32(xs, m)
    }
    fn shifted_moments(xs: &[Self], k: Self) -> (f64, f64) {
        simd::shifted_moments_f32(xs, k)
    }
    fn dot(a: &[Self], b: &[Self]) -> f64 {
        simd::dot_f32(a, b)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        simd::sigmoid_f32(self)
    }
    fn exp_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|v| *v = simd::exp_f32(*v));
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH_F32, len, f)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn sum(xs: &[Self]) -> f64 {
        xs.iter().sum()
    }
    fn sum_sq_dev(xs: &[Self], m: Self) -> f64 {
        xs.iter().map(|x| (x - m) * (x - m)).sum()
    }
    fn shifted_moments(xs: &[Self], k: Self) -> (f64, f64) {
        xs.iter().fold((0.0, 0.0), |(a, b), x| (a + (x - k), b + (x - k) * (x - k)))
    }
    fn dot(a: &[Self], b: &[Self]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn exp_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|v| *v = v.exp());
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH_F64, len, f)
    }
}
