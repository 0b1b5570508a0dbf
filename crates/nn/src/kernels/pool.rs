//! Max-pooling with a correct backward (Candle's gives 0.25× the gradient for k = s and fails for
//! k ≠ s). The gradient goes to the first maximum of each window, as torch; overlapping windows add up.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::real::Real;

/// `F.max_pool2d(x, kernel, stride, padding)` (padding is −∞, no ceil mode).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool2d {
    fn out(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if h + 2 * self.pad < self.kernel || w + 2 * self.pad < self.kernel || self.stride == 0 {
            candle_core::bail!("max_pool2d: kernel {} does not fit a {h}×{w} input", self.kernel);
        }
        Ok(((h + 2 * self.pad - self.kernel) / self.stride + 1, (w + 2 * self.pad - self.kernel) / self.stride + 1))
    }

    /// For every output element: the flat index (within its plane) of the window's first maximum.
    fn argmax<T: Real + PartialOrd>(&self, plane: &[T], h: usize, w: usize, ho: usize, wo: usize, out: &mut [usize]) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best: Option<(T, usize)> = None;
                for ky in 0..self.kernel {
                    let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    for kx in 0..self.kernel {
                        let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                        if ix < 0 || ix as usize >= w {
                            continue;
                        }
                        let i = iy as usize * w + ix as usize;
                        if best.is_none_or(|(b, _)| plane[i] > b) {
                            best = Some((plane[i], i));
                        }
                    }
                }
                out[oy * wo + ox] = best.map(|b| b.1).unwrap_or(0);
            }
        }
    }

    /// The valid input range `[lo, hi)` of output position `o` along an axis of length `n`.
    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        window(o, n, self.kernel, self.stride, self.pad)
    }

    /// The window maxima (the value at `argmax`'s first maximum), without recording where they are:
    /// the backward recomputes that from the input.
    fn fwd<T: Real + PartialOrd>(&self, x: &[T], h: usize, w: usize) -> Result<Vec<T>> {
        let (ho, wo) = self.out(h, w)?;
        let mut y = vec![T::default(); x.len() / (h * w) * ho * wo];
        let cols: Vec<(usize, usize)> = (0..wo).map(|ox| self.window(ox, w)).collect();
        y.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
            for oy in 0..ho {
                let (y0, y1) = self.window(oy, h);
                for (ox, &(x0, x1)) in cols.iter().enumerate() {
                    let mut best = xp[y0 * w + x0];
                    for row in xp[y0 * w..y1 * w].chunks_exact(w) {
                        for &v in &row[x0..x1] {
                            if v > best {
                                best = v;
                            }
                        }
                    }
                    yp[oy * wo + ox] = best;
                }
            }
        });
        Ok(y)
    }

    fn bwd_run<T: Real + PartialOrd>(&self, x: &[T], dy: &[T], h: usize, w: usize) -> Result<Vec<T>> {
        let (ho, wo) = self.out(h, w)?;
        let mut dx = vec![T::default(); x.len()];
        dx.par_chunks_mut(h * w).zip(x.par_chunks(h * w).zip(dy.par_chunks(ho * wo))).for_each(|(dxp, (xp, dyp))| {
            let mut idx = vec![0usize; ho * wo];
            self.argmax(xp, h, w, ho, wo, &mut idx);
            for (&i, &g) in idx.iter().zip(dyp) {
                dxp[i] = dxp[i] + g;
            }
        });
        Ok(dx)
    }
}

/// The valid input range `[lo, hi)` of pooling window `o` along an axis of length `n`.
pub(super) fn window(o: usize, n: usize, kernel: usize, stride: usize, pad: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    (start.max(0) as usize, ((start + kernel as isize).max(0) as usize).min(n))
}

/// (H, W) of an NCHW layout, or an error naming the op.
pub(super) fn plane_dims(l: &Layout, op: &str) -> Result<(usize, usize)> {
    match l.dims() {
        [_, _, h, w] => Ok((*h, *w)),
        d => candle_core::bail!("{op}: expected [N, C, H, W], got {d:?}"),
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "gen-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w) = plane_dims(l, "max_pool2d")?;
        let (ho, wo) = self.out(h, w)?;
        let out = dispatch!(self.name(), (s, l) => |x| self.fwd(x, h, w)?);
        let d = l.dims();
        Ok((out, Shape::from((d[0], d[1], ho, wo))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPoolBwd(*self))?))
    }
}

struct MaxPoolBwd(MaxPool2d);

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "gen-max-pool2d-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w) = plane_dims(l1, "max_pool2d")?;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2) => |x, dy| self.0.bwd_run(x, dy, h, w)?);
        Ok((out, l1.shape().clone()))
    }
}

/// Max-pooling with gradient; fused on CPU f32/f64, Candle's forward elsewhere (inference only there).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(MaxPool2d { kernel, stride, pad });
    }
    if pad != 0 {
        candle_core::bail!("max_pool2d with padding is only implemented on the CPU");
    }
    x.max_pool2d_with_stride(kernel, stride)
}
