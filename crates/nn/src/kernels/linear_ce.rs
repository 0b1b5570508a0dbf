//! Cross-entropy of a linear head, `mean_i CE(h_i · Wᵀ, t_i)`, without the [N, V] logits.
//!
//! A GPT over a 100,000-token vocabulary spends its training step in the head: the logits of a
//! 2,048-token batch are 800 MB, and log-softmax, gather and their backward pass over them half a dozen
//! times. This kernel walks the rows in blocks: one GEMM gives a block's logits, one pass their
//! log-sum-exp and the loss, the same buffer becomes `∂loss/∂logits`, and two more GEMMs add the block's
//! share of `∂h` and `∂W`. Memory is one block of logits; the gradients are computed in the forward pass
//! (the backward only scales them by the upstream gradient), as fused kernels for this loss do.
//!
//! Label smoothing ε (the official GPT-LC `LabelSmoothing`): `(1 − ε)·(−log p_t) + ε·(−mean_v log p_v)`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::gemm::{gemm, Mat};
use super::real::Real;

/// Rows per block: 64 rows of 100k logits are 25 MB of f32.
const BLOCK: usize = 64;

pub(crate) struct LinearCrossEntropy {
    targets: Vec<u32>,
    smoothing: f64,
    with_grad: bool,
    /// (∂h, ∂W) of the mean loss, filled by the forward pass.
    grads: Mutex<Option<(Tensor, Tensor)>>,
}

/// ∂h [N, C] and ∂W [V, C], row-major.
type Grads<T> = (Vec<T>, Vec<T>);

/// The loss (mean over rows) and, when asked, its gradients.
fn run<T: Real>(h: &[T], w: &[T], c: usize, targets: &[u32], eps: f64, with_grad: bool) -> (f64, Option<Grads<T>>) {
    let n = targets.len();
    let v = w.len() / c.max(1);
    let mut total = 0.0;
    let (mut dh, mut dw) =
        if with_grad { (vec![T::default(); n * c], vec![T::default(); v * c]) } else { (vec![], vec![]) };
    let inv_n = 1.0 / n.max(1) as f64;
    T::with_scratch(BLOCK.min(n.max(1)) * v, |z| {
        for start in (0..n).step_by(BLOCK) {
            let r = BLOCK.min(n - start);
            let (hb, zb) = (&h[start * c..(start + r) * c], &mut z[..r * v]);
            // SAFETY: the views address hb [r×c], wᵀ [c×v] and zb [r×v], which do not overlap.
            unsafe { gemm(r, v, c, zb.as_mut_ptr(), v, 1, false, Mat::row_major(hb, c), Mat::transposed(w, c)) };
            for (i, row) in zb.chunks_mut(v).enumerate() {
                let t = targets[start + i] as usize;
                let m = row.iter().copied().fold(row[0], |a, b| if b > a { b } else { a });
                let (zt, mean) = (row[t].to_f64(), T::sum(row) / v as f64);
                for x in row.iter_mut() {
                    *x = *x - m;
                }
                T::exp_in_place(row);
                let lse = m.to_f64() + T::sum(row).ln();
                total += lse - (1.0 - eps) * zt - eps * mean;
                if with_grad {
                    // ∂/∂z = (softmax − (1 − ε)·onehot − ε/V) / N
                    let scale = T::from_f64((-(lse - m.to_f64())).exp() * inv_n);
                    let shift = T::from_f64(eps / v as f64 * inv_n);
                    for x in row.iter_mut() {
                        *x = *x * scale - shift;
                    }
                    row[t] = row[t] - T::from_f64((1.0 - eps) * inv_n);
                }
            }
            if with_grad {
                let db = &mut dh[start * c..(start + r) * c];
                // SAFETY: zb [r×v], w [v×c] → db [r×c]; zbᵀ [v×r], hb [r×c] → dw [v×c]; no aliasing.
                unsafe {
                    gemm(r, c, v, db.as_mut_ptr(), c, 1, false, Mat::row_major(zb, v), Mat::row_major(w, c));
                    gemm(v, c, r, dw.as_mut_ptr(), c, 1, true, Mat::transposed(zb, v), Mat::row_major(hb, c));
                }
            }
        }
    });
    (total * inv_n, with_grad.then_some((dh, dw)))
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "gen-linear-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = hl.shape().dims2()?;
        let dev = candle_core::Device::Cpu;
        let (loss, grads) = match (hs, ws) {
            (CpuStorage::F32(h), CpuStorage::F32(w)) => {
                let (h, w) = (super::dense(h, hl, self.name())?, super::dense(w, wl, self.name())?);
                let (l, g) = run(h, w, c, &self.targets, self.smoothing, self.with_grad);
                (
                    CpuStorage::F32(vec![l as f32]),
                    g.map(|(dh, dw)| {
                        (Tensor::from_vec(dh, (n, c), &dev), Tensor::from_vec(dw, (w.len() / c, c), &dev))
                    }),
                )
            }
            (CpuStorage::F64(h), CpuStorage::F64(w)) => {
                let (h, w) = (super::dense(h, hl, self.name())?, super::dense(w, wl, self.name())?);
                let (l, g) = run(h, w, c, &self.targets, self.smoothing, self.with_grad);
                (
                    CpuStorage::F64(vec![l]),
                    g.map(|(dh, dw)| {
                        (Tensor::from_vec(dh, (n, c), &dev), Tensor::from_vec(dw, (w.len() / c, c), &dev))
                    }),
                )
            }
            _ => candle_core::bail!("{}: h and W must both be f32 or both f64", self.name()),
        };
        if let Some((dh, dw)) = grads {
            *self.grads.lock().expect("grads lock") = Some((dh?, dw?));
        }
        Ok((loss, Shape::from(())))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _loss: &Tensor,
        dloss: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.lock().expect("grads lock").take() else {
            candle_core::bail!("{}: the backward pass ran twice or without a forward", self.name());
        };
        let g = dloss.to_dtype(dh.dtype())?;
        Ok((Some(dh.broadcast_mul(&g)?), Some(dw.broadcast_mul(&g)?)))
    }
}

/// `mean_i CE(h_i · Wᵀ, targets_i)` with label smoothing `smoothing`: h [N, C], W [V, C], targets N ids
/// below V. Fused on CPU f32/f64 (no [N, V] tensor), composed of Candle ops elsewhere.
pub fn linear_cross_entropy(h: &Tensor, w: &Tensor, targets: &[u32], smoothing: f64) -> Result<Tensor> {
    let (n, c) = h.dims2()?;
    let (v, cw) = w.dims2()?;
    if c != cw || n != targets.len() {
        candle_core::bail!(
            "linear_cross_entropy: h {:?}, W {:?} and {} targets do not fit",
            h.dims(),
            w.dims(),
            targets.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("linear_cross_entropy: target {t} is outside the {v} classes");
    }
    if h.device().is_cpu() && h.dtype() == w.dtype() && matches!(h.dtype(), DType::F32 | DType::F64) {
        let op = LinearCrossEntropy {
            targets: targets.to_vec(),
            smoothing,
            with_grad: h.track_op() || w.track_op(),
            grads: Mutex::new(None),
        };
        return h.contiguous()?.apply_op2(&w.contiguous()?, op);
    }
    super::reference::linear_cross_entropy(h, w, targets, smoothing)
}
