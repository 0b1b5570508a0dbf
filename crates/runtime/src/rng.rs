//! Our own seeded RNG: Candle's CPU RNG cannot be seeded (`set_seed` errors on CPU), so every random
//! tensor of `gen` (init, noise, dropout masks, timesteps) comes from here and is reproducible.
//!
//! The generator is `rand_xoshiro`'s xoshiro256** (seeded through SplitMix64) and the draws are the
//! `rand` / `rand_distr` distributions, so nothing here is hand-rolled maths. Its whole state is four
//! `u64`s, which a training checkpoint stores (`state`) and restores (`from_state`) to resume bit-exactly.

use candle_core::{Device, Shape, Tensor};
use rand::distr::{Distribution, StandardUniform, Uniform};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256StarStar;

/// xoshiro256** with a checkpointable state. No draw keeps a cache outside the four state words (the
/// normal sampler is a ziggurat, not a pair-producing Box-Muller), so `from_state(state())` continues
/// the identical stream at any point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    inner: Xoshiro256StarStar,
}

/// The field layout `rand_xoshiro` serialises (its `serde` feature): the only sound way to read the
/// private state words out. A rename upstream fails `state_round_trips_*` below, not silently.
#[derive(serde::Deserialize)]
struct RawState {
    s: [u64; 4],
}

impl Rng {
    /// Seeds through SplitMix64 (`SeedableRng::seed_from_u64`), the seeding the xoshiro authors advise.
    pub fn new(seed: u64) -> Self {
        Rng { inner: Xoshiro256StarStar::seed_from_u64(seed) }
    }

    /// The generator of item `index` of a job seeded with `seed` (sample i of `gen sample --seed S`): every
    /// item has its own stream, so its draws do not depend on which batch or thread it ran in.
    pub fn for_item(seed: u64, index: u64) -> Self {
        // SplitMix64 (inside `new`) scrambles the combined word; the odd constant keeps items apart
        Rng::new(seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The four state words, for a checkpoint.
    pub fn state(&self) -> [u64; 4] {
        let value = serde_json::to_value(&self.inner).expect("serialising four u64 cannot fail");
        let raw: RawState =
            serde_json::from_value(value).expect("rand_xoshiro serialises Xoshiro256StarStar as {\"s\": [u64; 4]}");
        raw.s
    }

    /// Continues the stream a `state()` was taken from. `from_seed` reads the words little-endian, the
    /// same layout as the state itself. (The all-zero state, which no seeded generator ever reaches
    /// because xoshiro never leaves or enters it, is remapped by `rand_xoshiro` to a valid one.)
    pub fn from_state(s: [u64; 4]) -> Self {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(s) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Rng { inner: Xoshiro256StarStar::from_seed(bytes) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits (`StandardUniform`: the top 53 bits of one `u64`).
    pub fn uniform(&mut self) -> f64 {
        StandardUniform.sample(&mut self.inner)
    }

    /// Uniform integer in [0, n) without bias worth measuring (`rand`'s `random_range`).
    /// `n` must be positive: an empty range is a bug of the caller and panics, like an index out of range.
    pub fn below(&mut self, n: u64) -> u64 {
        self.inner.random_range(0..n)
    }

    /// Standard normal (`rand_distr::StandardNormal`, a ziggurat sampler).
    pub fn normal(&mut self) -> f64 {
        StandardNormal.sample(&mut self.inner)
    }

    /// An f32 tensor of N(0, std²) draws, in row-major order.
    pub fn randn(&mut self, shape: impl Into<Shape>, std: f64, dev: &Device) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count()).map(|_| (self.normal() * std) as f32).collect();
        Tensor::from_vec(v, shape, dev)
    }

    /// An f32 tensor of U[lo, hi) draws, in row-major order; an empty or non-finite range is an error.
    pub fn rand_uniform(
        &mut self,
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let dist = Uniform::new(lo, hi)
            .map_err(|e| candle_core::Error::Msg(format!("rand_uniform: bad range [{lo}, {hi}): {e}")))?;
        let v: Vec<f32> = (0..shape.elem_count()).map(|_| dist.sample(&mut self.inner) as f32).collect();
        Tensor::from_vec(v, shape, dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_streams_are_reproducible_and_distinct() {
        let draw = |mut r: Rng| (0..4).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(draw(Rng::for_item(5, 3)), draw(Rng::for_item(5, 3)));
        assert_ne!(draw(Rng::for_item(5, 3)), draw(Rng::for_item(5, 4)));
        assert_ne!(draw(Rng::for_item(5, 0)), draw(Rng::new(5)));
        assert_ne!(draw(Rng::for_item(6, 3)), draw(Rng::for_item(5, 3)));
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let xa: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    /// The reference xoshiro256** / SplitMix64 streams (Vigna's C code), as the hand-written
    /// generator this replaced produced them: seeds and checkpoints written before keep their meaning.
    #[test]
    fn stream_matches_reference_xoshiro256starstar() {
        let mut x = 42u64;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut s = [splitmix(), splitmix(), splitmix(), splitmix()];
        let mut r = Rng::new(42);
        assert_eq!(r.state(), s);
        for _ in 0..8 {
            let want = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            assert_eq!(r.next_u64(), want);
        }
        assert_eq!(r.state(), s);
    }

    #[test]
    fn state_round_trips_after_integer_draws() {
        let mut a = Rng::new(1);
        a.next_u64();
        let mut b = Rng::from_state(a.state());
        assert_eq!(a, b);
        let xa: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xa, xb);
    }

    /// Normal draws reject and redraw (ziggurat) but keep nothing outside the state words.
    #[test]
    fn state_round_trips_after_normal_and_uniform_draws() {
        let mut a = Rng::new(2);
        for _ in 0..1001 {
            a.normal();
        }
        a.uniform();
        a.below(10);
        let mut b = Rng::from_state(a.state());
        for _ in 0..1000 {
            assert_eq!(a.normal().to_bits(), b.normal().to_bits());
            assert_eq!(a.uniform().to_bits(), b.uniform().to_bits());
            assert_eq!(a.below(1000), b.below(1000));
        }
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut r = Rng::new(4);
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u), "{u}");
            assert!(r.below(7) < 7);
        }
        let t = r.rand_uniform(1000, -2.0, 3.0, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert!(t.iter().all(|x| (-2.0..=3.0).contains(x)));
        assert!(r.rand_uniform(3, 1.0, 1.0, &Device::Cpu).is_err());
    }

    #[test]
    fn randn_tensors_are_reproducible() {
        let t1 = Rng::new(5).randn((3, 4), 1.0, &Device::Cpu).unwrap();
        let t2 = Rng::new(5).randn((3, 4), 1.0, &Device::Cpu).unwrap();
        let d = (t1 - t2).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }
}
