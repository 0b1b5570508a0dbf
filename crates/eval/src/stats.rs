//! Feature statistics: the mean and (unbiased) covariance of N feature vectors, accumulated batch by batch
//! in f64 so memory stays flat in N, as `np.mean(act, 0)` / `np.cov(act, rowvar=False)` on pytorch-fid's
//! float64 activations.

use faer::Mat;

use crate::frechet::Gaussian;

/// Feature vectors are folded in chunks of this many, counted from the first vector, whatever the sizes of
/// the `add` calls: the statistics of a set are then the same bits however it was extracted (one run,
/// other batch sizes, or `--part`s merged in order).
const CHUNK: usize = 256;

/// Running mean and centred scatter `Σ (x − μ)(x − μ)ᵀ`, merged chunk by chunk (Chan et al.), which
/// keeps the precision of a two-pass computation.
#[derive(Clone, Debug)]
pub struct StatsAccumulator {
    dims: usize,
    n: usize,
    mean: Vec<f64>,
    scatter: Mat<f64>,
    /// Vectors not yet folded in (fewer than `CHUNK`).
    pending: Vec<f32>,
}

impl StatsAccumulator {
    pub fn new(dims: usize) -> Self {
        StatsAccumulator { dims, n: 0, mean: vec![0.0; dims], scatter: Mat::zeros(dims, dims), pending: Vec::new() }
    }

    /// Vectors added so far.
    pub fn count(&self) -> usize {
        self.n + self.pending.len() / self.dims.max(1)
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Adds feature vectors given row-major in `features` (`rows × dims` values).
    pub fn add(&mut self, features: &[f32]) {
        self.pending.extend_from_slice(features);
        let chunk = CHUNK * self.dims;
        if self.pending.len() >= chunk {
            let full = self.pending.len() / chunk * chunk;
            let ready: Vec<f32> = self.pending.drain(..full).collect();
            for c in ready.chunks(chunk) {
                self.fold(c);
            }
        }
    }

    /// Folds one chunk of vectors into the running mean and scatter.
    fn fold(&mut self, features: &[f32]) {
        let d = self.dims;
        let m = features.len() / d.max(1);
        if m == 0 {
            return;
        }
        let mut bmean = vec![0.0f64; d];
        for row in features.chunks_exact(d) {
            for (acc, &v) in bmean.iter_mut().zip(row) {
                *acc += f64::from(v);
            }
        }
        bmean.iter_mut().for_each(|v| *v /= m as f64);
        // centred batch [m, d] and its scatter Xcᵀ Xc, merged in
        let xc = Mat::from_fn(m, d, |i, j| f64::from(features[i * d + j]) - bmean[j]);
        let scatter = xc.transpose() * &xc;
        self.combine(&StatsAccumulator { dims: d, n: m, mean: bmean, scatter, pending: Vec::new() });
    }

    /// Folds the pending vectors in.
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.fold(&pending);
    }

    fn combine(&mut self, other: &StatsAccumulator) {
        let d = self.dims;
        if other.n == 0 {
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta: Vec<f64> = other.mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let w = na * nb / n;
        self.scatter =
            Mat::from_fn(d, d, |i, j| self.scatter[(i, j)] + other.scatter[(i, j)] + delta[i] * delta[j] * w);
        for (mean, dl) in self.mean.iter_mut().zip(&delta) {
            *mean += dl * nb / n;
        }
        self.n += other.n;
    }

    /// μ and the unbiased covariance (divided by N − 1, as `np.cov`); None with fewer than 2 samples.
    pub fn finish(&self) -> Option<Gaussian> {
        let mut all = self.clone();
        all.flush();
        all.finish_folded()
    }

    fn finish_folded(&self) -> Option<Gaussian> {
        if self.n < 2 {
            return None;
        }
        let d = self.dims;
        let k = 1.0 / (self.n - 1) as f64;
        let sigma = (0..d * d).map(|idx| self.scatter[(idx / d, idx % d)] * k).collect();
        Some(Gaussian { mu: self.mean.clone(), sigma })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_merge_to_the_two_pass_mean_and_covariance() {
        let (n, d) = (37, 5);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 7.0 + 1000.0).collect();
        let mut acc = StatsAccumulator::new(d);
        for chunk in x.chunks(d * 8) {
            acc.add(chunk);
        }
        let g = acc.finish().unwrap();
        let mu: Vec<f64> = (0..d).map(|j| (0..n).map(|i| f64::from(x[i * d + j])).sum::<f64>() / n as f64).collect();
        for j in 0..d {
            assert!((g.mu[j] - mu[j]).abs() < 1e-10);
            for k in 0..d {
                let c: f64 =
                    (0..n).map(|i| (f64::from(x[i * d + j]) - mu[j]) * (f64::from(x[i * d + k]) - mu[k])).sum::<f64>()
                        / (n - 1) as f64;
                assert!((g.sigma[j * d + k] - c).abs() < 1e-9, "{j},{k}: {} vs {c}", g.sigma[j * d + k]);
            }
        }
        assert!(StatsAccumulator::new(3).finish().is_none());
    }

    #[test]
    fn statistics_are_the_same_bits_whatever_the_add_sizes() {
        let d = 3;
        let x: Vec<f32> = (0..700 * d).map(|i| ((i * 7919 % 1009) as f32).sin() * 3.0 + 1.0).collect();
        let mut one = StatsAccumulator::new(d);
        one.add(&x);
        for sizes in [vec![1, 699], vec![256, 256, 188], vec![100, 333, 267], vec![699, 1]] {
            let mut acc = StatsAccumulator::new(d);
            let mut at = 0;
            for n in sizes {
                acc.add(&x[at * d..(at + n) * d]);
                at += n;
            }
            assert_eq!(acc.count(), 700);
            assert_eq!(acc.finish(), one.finish());
        }
    }
}
