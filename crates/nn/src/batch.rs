//! Data parallelism over the images of a batch, for inference.
//!
//! Splitting the batch over the threads, each slice run start to finish on one thread with
//! single-threaded GEMM, avoids the per-op hand-offs between rayon, OpenBLAS and Candle's pools that
//! cost the FID Inception a quarter of its time when every op is split instead (BENCHMARKS.md).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Runs `f` on slices of `x` along dim 0, one per rayon thread and in parallel, and returns the results
/// in order. A non-CPU device runs `f(x)` alone.
///
/// Every slice's products run single-threaded, a batch of one included, so an image's result is the
/// same bits whatever the batch it comes in and the thread count (`gen fid --part` relies on it).
pub fn par_batch<R: Send>(x: &Tensor, f: impl Fn(&Tensor) -> Result<R> + Sync) -> Result<Vec<R>> {
    if !x.device().is_cpu() {
        return Ok(vec![f(x)?]);
    }
    let n = x.dim(0)?;
    let parts = rayon::current_num_threads().min(n).max(1);
    let bounds: Vec<(usize, usize)> = (0..parts).map(|i| (i * n / parts, (i + 1) * n / parts)).collect();
    crate::kernels::gemm::serial(|| bounds.par_iter().map(|&(a, b)| f(&x.narrow(0, a, b - a)?)).collect())
}

/// [`par_batch`] for a function returning one tensor: the slices' outputs joined along dim 0.
pub fn par_batch_cat(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor> + Sync) -> Result<Tensor> {
    Tensor::cat(&par_batch(x, f)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn par_batch_equals_the_whole_batch() {
        let x = Tensor::arange(0f32, 70.0, &Device::Cpu).unwrap().reshape((7, 10)).unwrap();
        let f = |t: &Tensor| (t.sqr()? + 1.0)?.sum(D::Minus1);
        let whole = f(&x).unwrap().to_vec1::<f32>().unwrap();
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let split = pool.install(|| par_batch_cat(&x, f)).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(split, whole, "{threads} threads");
            let parts = pool.install(|| par_batch(&x, |t| t.dim(0))).unwrap();
            assert_eq!(parts.iter().sum::<usize>(), 7);
            assert_eq!(parts.len(), threads.min(7));
            assert_eq!(pool.install(|| par_batch(&x.narrow(0, 0, 1).unwrap(), |t| t.dim(0))).unwrap(), [1]);
        }
    }
}
