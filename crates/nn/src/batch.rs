//! Data parallelism over the images of a batch, for inference.
//!
//! Splitting the batch over the threads, each slice run start to finish on one thread with
//! single-threaded GEMM, avoids the per-op hand-offs between rayon, OpenBLAS and Candle's pools that
//! cost the FID Inception a quarter of its time when every op is split instead (BENCHMARKS.md).

use candle_core::backprop::GradStore;
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

/// Data-parallel training on one machine: `loss(slice, share)` on one slice of `x` per rayon thread (its
/// share of the batch given, to weight a mean loss), each slice's forward and backward on its own thread
/// with single-threaded BLAS, and the gradients of `vars` summed in slice order. For a loss that is a
/// mean over the batch, `Σ share · mean(slice)` is the batch mean: the result is the whole batch's
/// gradient, the same bits on every run at a given thread count.
pub fn par_batch_grads(
    x: &Tensor,
    vars: &[candle_core::Var],
    loss: impl Fn(&Tensor, f64) -> Result<Tensor> + Sync,
) -> Result<(f64, GradStore)> {
    let n = x.dim(0)? as f64;
    let out = par_batch(x, |xs| {
        let l = loss(xs, xs.dim(0)? as f64 / n)?;
        Ok((l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?, l.backward()?))
    })?;
    let total = out.iter().map(|(l, _)| l).sum();
    Ok((total, sum_grad_stores(out.into_iter().map(|(_, g)| g).collect(), vars)?))
}

/// The gradients of `vars` in `stores` summed in order, in the first store.
pub fn sum_grad_stores(mut stores: Vec<GradStore>, vars: &[candle_core::Var]) -> Result<GradStore> {
    if stores.is_empty() {
        candle_core::bail!("no gradients to sum");
    }
    let mut first = stores.remove(0);
    for v in vars {
        let mut acc = first.remove(v.as_tensor());
        for s in &stores {
            if let Some(g) = s.get(v.as_tensor()) {
                acc = Some(match acc {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
        if let Some(a) = acc {
            first.insert(v.as_tensor(), a);
        }
    }
    Ok(first)
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

    #[test]
    fn sharded_gradients_equal_the_whole_batch_gradient() {
        let x = Tensor::arange(0f32, 42.0, &Device::Cpu).unwrap().reshape((7, 6)).unwrap();
        let w = candle_core::Var::from_tensor(&Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap()).unwrap();
        let loss = |xs: &Tensor, share: f64| xs.broadcast_mul(w.as_tensor())?.sqr()?.mean_all()? * share;
        let whole = loss(&x, 1.0).unwrap();
        let gw = whole.backward().unwrap().get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (l, g) = pool.install(|| par_batch_grads(&x, std::slice::from_ref(&w), loss)).unwrap();
            let gs = g.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert!((l - whole.to_scalar::<f32>().unwrap() as f64).abs() < 1e-3 * l.abs());
            for (a, b) in gs.iter().zip(&gw) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{threads} threads: {a} vs {b}");
            }
        }
    }
}
