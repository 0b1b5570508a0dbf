//! Average pooling that excludes the zero padding from each window's count
//! (`F.avg_pool2d(x, k, stride, padding, count_include_pad=False)`, the FID Inception's pools), with its
//! backward: each input receives `dy / count` from every window that holds it.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::pool::plane_dims;
use super::real::Real;

#[derive(Clone, Copy, Debug)]
struct AvgPool2d {
    kernel: usize,
    stride: usize,
    pad: usize,
}

impl AvgPool2d {
    fn out(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if h + 2 * self.pad < self.kernel
            || w + 2 * self.pad < self.kernel
            || self.stride == 0
            || self.pad >= self.kernel
        {
            candle_core::bail!("avg_pool2d: kernel {} / padding {} do not fit a {h}×{w} input", self.kernel, self.pad);
        }
        Ok(((h + 2 * self.pad - self.kernel) / self.stride + 1, (w + 2 * self.pad - self.kernel) / self.stride + 1))
    }

    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        super::pool::window(o, n, self.kernel, self.stride, self.pad)
    }

    fn fwd<T: Real>(&self, x: &[T], h: usize, w: usize) -> Result<Vec<T>> {
        let (ho, wo) = self.out(h, w)?;
        let mut y = vec![T::default(); x.len() / (h * w) * ho * wo];
        let cols: Vec<(usize, usize)> = (0..wo).map(|ox| self.window(ox, w)).collect();
        y.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
            for oy in 0..ho {
                let (y0, y1) = self.window(oy, h);
                for (ox, &(x0, x1)) in cols.iter().enumerate() {
                    let mut sum = T::default();
                    for row in xp[y0 * w..y1 * w].chunks_exact(w) {
                        for &v in &row[x0..x1] {
                            sum = sum + v;
                        }
                    }
                    yp[oy * wo + ox] = sum / T::from_f64(((y1 - y0) * (x1 - x0)) as f64);
                }
            }
        });
        Ok(y)
    }

    fn bwd_run<T: Real>(&self, dy: &[T], h: usize, w: usize) -> Result<Vec<T>> {
        let (ho, wo) = self.out(h, w)?;
        let mut dx = vec![T::default(); dy.len() / (ho * wo) * h * w];
        let cols: Vec<(usize, usize)> = (0..wo).map(|ox| self.window(ox, w)).collect();
        dx.par_chunks_mut(h * w).zip(dy.par_chunks(ho * wo)).for_each(|(dxp, dyp)| {
            for oy in 0..ho {
                let (y0, y1) = self.window(oy, h);
                for (ox, &(x0, x1)) in cols.iter().enumerate() {
                    let g = dyp[oy * wo + ox] / T::from_f64(((y1 - y0) * (x1 - x0)) as f64);
                    for row in dxp[y0 * w..y1 * w].chunks_exact_mut(w) {
                        for v in &mut row[x0..x1] {
                            *v = *v + g;
                        }
                    }
                }
            }
        });
        Ok(dx)
    }
}

impl CustomOp1 for AvgPool2d {
    fn name(&self) -> &'static str {
        "gen-avg-pool2d-exclude-pad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w) = plane_dims(l, "avg_pool2d")?;
        let (ho, wo) = self.out(h, w)?;
        let out = dispatch!(self.name(), (s, l) => |x| self.fwd(x, h, w)?);
        let d = l.dims();
        Ok((out, Shape::from((d[0], d[1], ho, wo))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &AvgPoolBwd(*self))?))
    }
}

struct AvgPoolBwd(AvgPool2d);

impl CustomOp2 for AvgPoolBwd {
    fn name(&self) -> &'static str {
        "gen-avg-pool2d-exclude-pad-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w) = plane_dims(l1, "avg_pool2d")?;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2) => |_x, dy| self.0.bwd_run(dy, h, w)?);
        Ok((out, l1.shape().clone()))
    }
}

/// `F.avg_pool2d(x, kernel, stride, pad, count_include_pad=False)`: fused on CPU f32/f64 (with backward),
/// a composition of Candle ops elsewhere.
pub fn avg_pool2d_exclude_pad(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(AvgPool2d { kernel, stride, pad });
    }
    super::reference::avg_pool2d_exclude_pad(x, kernel, stride, pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::Device;
    use gen_runtime::Rng;

    #[test]
    fn fused_equals_reference_on_borders_and_strides() {
        let mut r = Rng::new(4);
        for (shape, k, s, p) in [([2, 3, 7, 5], 3, 1, 1), ([1, 2, 8, 9], 3, 2, 1), ([1, 1, 4, 4], 2, 2, 0)] {
            let x = r.randn(&shape[..], 1.0, &Device::Cpu).unwrap();
            let got = avg_pool2d_exclude_pad(&x, k, s, p).unwrap();
            let want = super::super::reference::avg_pool2d_exclude_pad(&x, k, s, p).unwrap();
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "{shape:?} k{k} s{s} p{p}: {d}");
        }
        // a corner window of a 3×3 pool with padding 1 averages 4 pixels, an edge window 6
        let x = Tensor::arange(0f32, 9.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 3)).unwrap();
        let y = avg_pool2d_exclude_pad(&x, 3, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[0], (0.0 + 1.0 + 3.0 + 4.0) / 4.0);
        assert_eq!(y[1], (0.0 + 1.0 + 2.0 + 3.0 + 4.0 + 5.0) / 6.0);
        assert_eq!(y[4], 4.0);
    }

    #[test]
    fn avg_pool_gradcheck_f64() {
        let mut r = Rng::new(5);
        let x = r.randn((2, 2, 5, 4), 1.0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        for (k, s, p) in [(3, 1, 1), (3, 2, 1)] {
            let f = |v: &[Tensor]| avg_pool2d_exclude_pad(&v[0], k, s, p);
            let err = gradcheck(&f, std::slice::from_ref(&x), 1e-6, 200).unwrap();
            assert!(err < 1e-7, "k{k} s{s} p{p}: {err}");
        }
    }
}
