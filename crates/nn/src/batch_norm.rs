//! Batch normalisation over [N, C, H, W] (torch `nn.BatchNorm2d`): the discriminator's and Inception's norm.

use std::sync::Mutex;

use candle_core::{DType, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

/// `running_mean` and `running_var`, [C] each.
#[derive(Clone, Debug)]
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
}

/// torch `nn.BatchNorm2d(channels, eps, momentum=0.1, affine, track_running_stats=True)`.
///
/// Eval (`forward_t(x, false)`): normalises with the running statistics. Train (`forward_t(x, true)`):
/// normalises with the batch statistics (biased variance) and stores the updated running statistics,
/// `r ← (1 − momentum)·r + momentum·batch` with the unbiased batch variance, as torch does.
/// [`BatchNorm2d::forward_train`] computes the same but returns the new statistics instead of storing
/// them, for a caller that wants the update explicit. `num_batches_tracked` is not read or kept: with a
/// fixed momentum torch does not use it.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Option<Tensor>, // [C]; None: affine=False
    pub bias: Option<Tensor>,   // [C]
    pub eps: f64,
    pub momentum: f64,
    running: Mutex<RunningStats>,
}

impl Clone for BatchNorm2d {
    /// A copy with its own running statistics (the current ones).
    fn clone(&self) -> Self {
        BatchNorm2d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            eps: self.eps,
            momentum: self.momentum,
            running: Mutex::new(self.running_stats()),
        }
    }
}

/// torch's default momentum.
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    /// Reads `weight`, `bias`, `running_mean` and `running_var`, [C] each.
    pub fn new(vb: VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = (vb.get(channels, "weight")?, vb.get(channels, "bias")?);
        Self::from_tensors(Some(weight), Some(bias), Self::read_stats(&vb, channels)?, eps)
    }

    /// `nn.BatchNorm2d(.., affine=False)`: reads `running_mean` and `running_var` only.
    pub fn new_no_affine(vb: VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        Self::from_tensors(None, None, Self::read_stats(&vb, channels)?, eps)
    }

    /// From tensors (fresh torch layers start at mean 0, var 1); momentum 0.1.
    pub fn from_tensors(weight: Option<Tensor>, bias: Option<Tensor>, stats: RunningStats, eps: f64) -> Result<Self> {
        let c = stats.mean.dims1()?;
        for (name, t) in [("weight", &weight), ("bias", &bias)] {
            if let Some(t) = t {
                if t.dims() != [c] {
                    candle_core::bail!("batch_norm2d: {name} {:?} does not match {c} channels", t.dims());
                }
            }
        }
        let bn = BatchNorm2d { weight, bias, eps, momentum: BATCH_NORM_MOMENTUM, running: Mutex::new(stats.clone()) };
        bn.set_running_stats(stats)?;
        Ok(bn)
    }

    fn read_stats(vb: &VarBuilder, channels: usize) -> Result<RunningStats> {
        Ok(RunningStats { mean: vb.get(channels, "running_mean")?, var: vb.get(channels, "running_var")? })
    }

    pub fn channels(&self) -> usize {
        self.running_stats().mean.dims()[0]
    }

    /// The running statistics now (after every `forward_t(.., true)` so far).
    pub fn running_stats(&self) -> RunningStats {
        self.running.lock().expect("batch norm lock").clone()
    }

    /// Replaces the running statistics (e.g. with those `forward_train` returned).
    pub fn set_running_stats(&self, stats: RunningStats) -> Result<()> {
        let c = self.running.lock().expect("batch norm lock").mean.dims1()?;
        if stats.mean.dims() != [c] || stats.var.dims() != [c] {
            candle_core::bail!(
                "batch_norm2d: running stats {:?} / {:?} do not match {c} channels",
                stats.mean.dims(),
                stats.var.dims()
            );
        }
        *self.running.lock().expect("batch norm lock") = stats;
        Ok(())
    }

    /// Eval mode: `(x − running_mean) / sqrt(running_var + eps) · weight + bias`.
    pub fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.check_input(x)?;
        let work = work_dtype(x.dtype());
        let stats = self.running_stats();
        let rstd = (stats.var.to_dtype(work)? + self.eps)?.sqrt()?.recip()?;
        let scale = match &self.weight {
            Some(w) => (w.to_dtype(work)? * rstd)?,
            None => rstd,
        };
        let shift = (stats.mean.to_dtype(work)? * &scale)?.neg()?;
        let shift = match &self.bias {
            Some(b) => (shift + b.to_dtype(work)?)?,
            None => shift,
        };
        let y = x.to_dtype(work)?.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?;
        y.broadcast_add(&shift.reshape((1, c, 1, 1))?)?.to_dtype(x.dtype())
    }

    /// Train mode without side effects: returns `(y, running stats after this batch)`. y uses the batch
    /// mean and biased variance over (N, H, W); the running variance is updated with the unbiased one.
    pub fn forward_train(&self, x: &Tensor) -> Result<(Tensor, RunningStats)> {
        let c = self.check_input(x)?;
        let (n, _, h, w) = x.dims4()?;
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!("batch_norm2d: training needs more than 1 value per channel, got input {:?}", x.dims());
        }
        let work = work_dtype(x.dtype());
        let xw = x.to_dtype(work)?;
        let mean = xw.mean_keepdim((0, 2, 3))?; // [1, C, 1, 1]
        let xc = xw.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim((0, 2, 3))?; // biased
        let mut y = xc.broadcast_div(&(&var + self.eps)?.sqrt()?)?;
        if let Some(wt) = &self.weight {
            y = y.broadcast_mul(&wt.to_dtype(work)?.reshape((1, c, 1, 1))?)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(work)?.reshape((1, c, 1, 1))?)?;
        }
        let old = self.running_stats();
        let m = self.momentum;
        let update = |r: &Tensor, batch: Tensor| -> Result<Tensor> {
            ((r.to_dtype(work)? * (1.0 - m))? + (batch.detach().flatten_all()? * m)?)?.to_dtype(r.dtype())
        };
        let unbiased = (var * (count as f64 / (count - 1) as f64))?;
        let stats = RunningStats { mean: update(&old.mean, mean)?, var: update(&old.var, unbiased)? };
        Ok((y.to_dtype(x.dtype())?, stats))
    }

    fn check_input(&self, x: &Tensor) -> Result<usize> {
        let c = self.channels();
        match x.dims() {
            [_, xc, _, _] if *xc == c => Ok(c),
            d => candle_core::bail!("batch_norm2d: expected [N, {c}, H, W], got {d:?}"),
        }
    }
}

/// Statistics of half-precision inputs are taken in f32.
fn work_dtype(d: DType) -> DType {
    match d {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

impl ModuleT for BatchNorm2d {
    /// `train`: batch statistics, and the running statistics are updated; otherwise the running ones.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return self.forward_eval(x);
        }
        let (y, stats) = self.forward_train(x)?;
        self.set_running_stats(stats)?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::Device;
    use gen_runtime::Rng;
    use std::collections::HashMap;

    const C: usize = 3;
    const EPS: f64 = 1e-5;

    /// x [2, 3, 2, 2] as nested Vecs, and the module with weight, bias and running stats.
    fn setup(dtype: DType) -> (Vec<f64>, BatchNorm2d, Tensor) {
        let mut r = Rng::new(7);
        let x: Vec<f64> = (0..2 * C * 4).map(|_| r.normal() * 2.0 + 0.5).collect();
        let dev = Device::Cpu;
        let t = |v: &[f64]| Tensor::new(v, &dev).unwrap().to_dtype(dtype).unwrap();
        let bn = BatchNorm2d::from_tensors(
            Some(t(&[0.5, 1.5, -1.0])),
            Some(t(&[0.1, -0.2, 0.3])),
            RunningStats { mean: t(&[0.2, -0.4, 1.0]), var: t(&[0.5, 2.0, 1.5]) },
            EPS,
        )
        .unwrap();
        let xt = Tensor::from_vec(x.clone(), (2, C, 2, 2), &dev).unwrap().to_dtype(dtype).unwrap();
        (x, bn, xt)
    }

    /// The values of channel `c` of the [2, 3, 2, 2] input.
    fn channel(x: &[f64], c: usize) -> Vec<f64> {
        (0..2).flat_map(|n| x[(n * C + c) * 4..(n * C + c + 1) * 4].to_vec()).collect()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < tol, "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn batch_norm_eval_uses_running_stats_as_torch() {
        let (x, bn, xt) = setup(DType::F32);
        let (w, b, rm, rv) = ([0.5, 1.5, -1.0], [0.1, -0.2, 0.3], [0.2, -0.4, 1.0], [0.5, 2.0, 1.5]);
        let y = values(&bn.forward_t(&xt, false).unwrap());
        for (i, &xv) in x.iter().enumerate() {
            let c = (i / 4) % C;
            let want = (xv - rm[c]) / (rv[c] + EPS).sqrt() * w[c] + b[c];
            assert!((y[i] - want).abs() < 1e-5, "{i}: {} vs {want}", y[i]);
        }
        assert_close(&values(&bn.running_stats().mean), &rm, 1e-7, "eval leaves running mean");
    }

    #[test]
    fn batch_norm_train_normalises_with_biased_batch_variance() {
        let (x, bn, xt) = setup(DType::F32);
        let (w, b) = ([0.5, 1.5, -1.0], [0.1, -0.2, 0.3]);
        let (y, _) = bn.forward_train(&xt).unwrap();
        let y = values(&y);
        for c in 0..C {
            let xs = channel(&x, c);
            let mean = xs.iter().sum::<f64>() / 8.0;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 8.0;
            let want: Vec<f64> = xs.iter().map(|v| (v - mean) / (var + EPS).sqrt() * w[c] + b[c]).collect();
            assert_close(&channel(&y, c), &want, 1e-5, &format!("channel {c}"));
        }
    }

    #[test]
    fn batch_norm_train_updates_running_stats_with_unbiased_variance_and_momentum_0_1() {
        let (x, bn, xt) = setup(DType::F32);
        let (rm, rv) = ([0.2, -0.4, 1.0], [0.5, 2.0, 1.5]);
        let (mut want_mean, mut want_var) = (vec![], vec![]);
        for c in 0..C {
            let xs = channel(&x, c);
            let mean = xs.iter().sum::<f64>() / 8.0;
            let unbiased = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 7.0;
            want_mean.push(0.9 * rm[c] + 0.1 * mean);
            want_var.push(0.9 * rv[c] + 0.1 * unbiased);
        }
        // forward_train returns the update and stores nothing
        let (_, stats) = bn.forward_train(&xt).unwrap();
        assert_close(&values(&stats.mean), &want_mean, 1e-6, "returned mean");
        assert_close(&values(&stats.var), &want_var, 1e-5, "returned var");
        assert_close(&values(&bn.running_stats().mean), &rm, 1e-7, "forward_train stores nothing");
        // forward_t(train) stores it, and eval then uses it
        bn.forward_t(&xt, true).unwrap();
        assert_close(&values(&bn.running_stats().mean), &want_mean, 1e-6, "stored mean");
        assert_close(&values(&bn.running_stats().var), &want_var, 1e-5, "stored var");
        let y = values(&bn.forward_t(&xt, false).unwrap());
        let (w, b) = ([0.5, 1.5, -1.0], [0.1, -0.2, 0.3]);
        let c0: Vec<f64> =
            channel(&x, 0).iter().map(|v| (v - want_mean[0]) / (want_var[0] + EPS).sqrt() * w[0] + b[0]).collect();
        assert_close(&channel(&y, 0), &c0, 1e-5, "eval after the update");
    }

    #[test]
    fn batch_norm_train_gradcheck_f64() {
        let (_, bn, xt) = setup(DType::F64);
        let inputs = [xt, bn.weight.clone().unwrap(), bn.bias.clone().unwrap()];
        let stats = bn.running_stats();
        let f = |t: &[Tensor]| {
            let bn = BatchNorm2d::from_tensors(Some(t[1].clone()), Some(t[2].clone()), stats.clone(), EPS)?;
            Ok(bn.forward_train(&t[0])?.0)
        };
        let err = gradcheck(&f, &inputs, 1e-6, 100).unwrap();
        assert!(err < 1e-6, "train: {err}");
        let f = |t: &[Tensor]| {
            let bn = BatchNorm2d::from_tensors(Some(t[1].clone()), Some(t[2].clone()), stats.clone(), EPS)?;
            bn.forward_eval(&t[0])
        };
        let err = gradcheck(&f, &inputs, 1e-6, 100).unwrap();
        assert!(err < 1e-6, "eval: {err}");
    }

    #[test]
    fn batch_norm_reads_torch_keys_and_rejects_bad_input() {
        let dev = Device::Cpu;
        let t = |v: f32| Tensor::full(v, 2, &dev).unwrap();
        let ts = HashMap::from([
            ("bn.weight".to_string(), t(2.0)),
            ("bn.bias".to_string(), t(1.0)),
            ("bn.running_mean".to_string(), t(3.0)),
            ("bn.running_var".to_string(), t(4.0)),
        ]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let bn = BatchNorm2d::new(vb.pp("bn"), 2, 0.0).unwrap();
        let y = bn.forward_t(&Tensor::full(5f32, (1, 2, 1, 1), &dev).unwrap(), false).unwrap();
        assert_eq!(values(&y), vec![3.0, 3.0]); // (5 − 3) / 2 · 2 + 1
        let plain = BatchNorm2d::new_no_affine(vb.pp("bn"), 2, 0.0).unwrap();
        let y = plain.forward_t(&Tensor::full(5f32, (1, 2, 1, 1), &dev).unwrap(), false).unwrap();
        assert_eq!(values(&y), vec![1.0, 1.0]);
        let err = bn.forward_t(&Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap(), false).unwrap_err();
        assert!(err.to_string().contains("expected [N, 2, H, W], got [1, 3, 2, 2]"), "{err}");
        let err = bn.forward_t(&Tensor::zeros((1, 2, 1, 1), DType::F32, &dev).unwrap(), true).unwrap_err();
        assert!(err.to_string().contains("more than 1 value per channel"), "{err}");
    }
}
