//! Where samplers draw their Gaussian noise: seeded per sample from our own RNG (Candle's cannot be
//! seeded on CPU), or replayed from saved draws (parity with the official trajectories).

use candle_core::{DType, Device, Result, Tensor};
use gen_runtime::Rng;

/// A source of standard-normal tensors shaped like the sampler's state.
pub trait Noise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor>;
}

/// One RNG per batch row (`Rng::for_item(seed, index)`), so a sample does not depend on what else is in
/// its batch.
pub struct SeededNoise {
    rows: Vec<Rng>,
}

impl SeededNoise {
    /// Rows `first..first + n` of the stream of `seed`.
    pub fn new(seed: u64, first: u64, n: usize) -> Self {
        SeededNoise { rows: (0..n as u64).map(|i| Rng::for_item(seed, first + i)).collect() }
    }

    /// One row per given RNG (a guided batch repeats its rows for the unconditional half).
    pub fn from_rngs(rows: Vec<Rng>) -> Self {
        SeededNoise { rows }
    }

    /// A draw of the given shape, row i from the i-th RNG.
    pub fn draw(&mut self, dims: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
        if dims.first() != Some(&self.rows.len()) {
            candle_core::bail!("noise: {} seeded rows for a batch of {:?}", self.rows.len(), dims);
        }
        let per: usize = dims[1..].iter().product();
        let rows = self.rows.iter_mut().map(|r| r.randn(per, 1.0, dev)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)?.reshape(dims)?.to_dtype(dtype)
    }
}

impl Noise for SeededNoise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor> {
        self.draw(x.dims(), x.dtype(), x.device())
    }
}

/// Saved draws, handed out in order; a call past the end or of another shape is an error.
pub struct ReplayNoise {
    draws: std::collections::VecDeque<Tensor>,
}

impl ReplayNoise {
    pub fn new(draws: Vec<Tensor>) -> Self {
        ReplayNoise { draws: draws.into() }
    }

    pub fn remaining(&self) -> usize {
        self.draws.len()
    }
}

impl Noise for ReplayNoise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor> {
        let d =
            self.draws.pop_front().ok_or_else(|| candle_core::Error::Msg("noise: replay ran out of draws".into()))?;
        if d.dims() != x.dims() {
            candle_core::bail!("noise: replayed draw {:?} for a state of {:?}", d.dims(), x.dims());
        }
        d.to_device(x.device())?.to_dtype(x.dtype())
    }
}

/// Zeros (DDIM with η = 0 still draws; the official code multiplies by σ = 0).
pub struct ZeroNoise;

impl Noise for ZeroNoise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor> {
        x.zeros_like()
    }
}
