//! The float types our CPU kernels run in: f32 (fast paths) and f64 (gradient checks).

use std::ops::{Add, Mul, Sub};

use super::simd;

pub trait Real: Copy + Send + Sync + Default + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + 'static {
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
}
