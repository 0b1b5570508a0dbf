//! Conv2d for the CPU as Candle CustomOps, forward and both gradients, through tiled im2col + GEMM.
//!
//! Candle's conv is well behind torch's, its backward most of all (the input gradient goes through
//! `conv_transpose2d`; CANDLE-NOTES §4). Here all three products are GEMMs over an im2col tile of at most `COL_BYTES`:
//! y = W·col (+b), dW = Σ dY·colᵀ, dcol = Wᵀ·dY scattered back by col2im. 1×1 stride-1 convs skip im2col.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_s1;
use super::gemm::{gemm, Mat};
use super::real::Real;

const COL_BYTES: usize = 8 << 20;

/// Shapes and hyper-parameters of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
}

impl Geom {
    pub fn new(x: &[usize], w: &[usize], stride: usize, (pad_h, pad_w): (usize, usize)) -> Result<Self> {
        if x.len() != 4 || w.len() != 4 || x[1] != w[1] || stride == 0 {
            candle_core::bail!("conv2d: input {x:?} and weight {w:?} do not fit (stride {stride})");
        }
        let g = Geom { n: x[0], cin: x[1], h: x[2], w: x[3], cout: w[0], kh: w[2], kw: w[3], stride, pad_h, pad_w };
        if g.h + 2 * pad_h < g.kh || g.w + 2 * pad_w < g.kw {
            candle_core::bail!("conv2d: kernel {}×{} larger than padded input {:?}", g.kh, g.kw, x);
        }
        Ok(g)
    }
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad_h - self.kh) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad_w - self.kw) / self.stride + 1
    }
    pub(crate) fn p(&self) -> usize {
        self.ho() * self.wo()
    }
    pub(crate) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }
    fn tile<T>(&self) -> usize {
        (COL_BYTES / std::mem::size_of::<T>() / self.k()).max(self.wo()).min(self.p()).max(1)
    }
    fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.cout, self.ho(), self.wo()))
    }
}

/// Walks output pixels p0..p0+len of kernel row (ki, kj): calls `f(col_index, input_index)` for each
/// in-bounds tap; out-of-bounds taps are skipped (zero padding).
#[inline]
fn for_taps(g: &Geom, ki: usize, kj: usize, p0: usize, len: usize, mut f: impl FnMut(usize, usize)) {
    let wo = g.wo();
    let mut p = p0;
    while p < p0 + len {
        let (oy, ox0) = (p / wo, p % wo);
        let run = (wo - ox0).min(p0 + len - p);
        let iy = (oy * g.stride + ki) as isize - g.pad_h as isize;
        if iy >= 0 && (iy as usize) < g.h {
            let row = iy as usize * g.w;
            for ox in ox0..ox0 + run {
                let ix = (ox * g.stride + kj) as isize - g.pad_w as isize;
                if ix >= 0 && (ix as usize) < g.w {
                    f(p - p0 + ox - ox0, row + ix as usize);
                }
            }
        }
        p += run;
    }
}

/// col[K, len] for output pixels p0..p0+len of one image x[cin, h, w].
fn im2col<T: Real>(g: &Geom, x: &[T], p0: usize, len: usize, col: &mut [T]) {
    let kk = g.kh * g.kw;
    col[..g.k() * len].par_chunks_mut(len).enumerate().for_each(|(r, dst)| {
        let (ci, ki, kj) = (r / kk, (r % kk) / g.kw, r % g.kw);
        let src = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        dst.fill(T::default());
        for_taps(g, ki, kj, p0, len, |c, i| dst[c] = src[i]);
    });
}

/// dx[cin, h, w] += col2im(dcol[K, len]) for output pixels p0..p0+len.
fn col2im_add<T: Real>(g: &Geom, dcol: &[T], p0: usize, len: usize, dx: &mut [T]) {
    let kk = g.kh * g.kw;
    dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(ci, dst)| {
        for r in ci * kk..(ci + 1) * kk {
            let (ki, kj) = ((r % kk) / g.kw, r % g.kw);
            let src = &dcol[r * len..(r + 1) * len];
            for_taps(g, ki, kj, p0, len, |c, i| dst[i] = dst[i] + src[c]);
        }
    });
}

fn forward<T: Real>(g: &Geom, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    if !g.pointwise() && conv_s1::applies(g) {
        return conv_s1::forward(g, x, w, b);
    }
    let (p, k) = (g.p(), g.k());
    let mut y = vec![T::default(); g.n * g.cout * p];
    let tile = g.tile::<T>();
    let mut col = if g.pointwise() { Vec::new() } else { vec![T::default(); k * tile] };
    for i in 0..g.n {
        let xi = &x[i * g.cin * g.h * g.w..(i + 1) * g.cin * g.h * g.w];
        let yi = &mut y[i * g.cout * p..(i + 1) * g.cout * p];
        yi.par_chunks_mut(p).zip(b.par_iter()).for_each(|(row, &bv)| row.fill(bv));
        if g.pointwise() {
            unsafe { gemm(g.cout, p, k, yi.as_mut_ptr(), p, 1, true, Mat::row_major(w, k), Mat::row_major(xi, p)) };
            continue;
        }
        for p0 in (0..p).step_by(tile) {
            let len = tile.min(p - p0);
            im2col(g, xi, p0, len, &mut col);
            unsafe {
                gemm(g.cout, len, k, yi[p0..].as_mut_ptr(), p, 1, true, Mat::row_major(w, k), Mat::row_major(&col, len))
            };
        }
    }
    y
}

fn backward_input<T: Real>(g: &Geom, w: &[T], dy: &[T]) -> Vec<T> {
    if !g.pointwise() && conv_s1::applies(g) {
        return conv_s1::backward_input(g, w, dy);
    }
    let (p, k, hw) = (g.p(), g.k(), g.h * g.w);
    let mut dx = vec![T::default(); g.n * g.cin * hw];
    let tile = g.tile::<T>();
    let mut dcol = if g.pointwise() { Vec::new() } else { vec![T::default(); k * tile] };
    let wt = Mat::transposed(w, k); // Wᵀ [K, cout]
    for i in 0..g.n {
        let dyi = &dy[i * g.cout * p..(i + 1) * g.cout * p];
        let dxi = &mut dx[i * g.cin * hw..(i + 1) * g.cin * hw];
        if g.pointwise() {
            unsafe { gemm(k, p, g.cout, dxi.as_mut_ptr(), p, 1, false, wt, Mat::row_major(dyi, p)) };
            continue;
        }
        for p0 in (0..p).step_by(tile) {
            let len = tile.min(p - p0);
            let rhs = Mat { ptr: dyi[p0..].as_ptr(), rs: p as isize, cs: 1 };
            unsafe { gemm(k, len, g.cout, dcol.as_mut_ptr(), len, 1, false, wt, rhs) };
            col2im_add(g, &dcol, p0, len, dxi);
        }
    }
    dx
}

/// dW = Σ dY·colᵀ over images and im2col tiles (1×1 stride-1: colᵀ is xᵀ).
fn weight_grad_im2col<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    let (p, k) = (g.p(), g.k());
    let tile = if g.pointwise() { p } else { g.tile::<T>() };
    let mut col = if g.pointwise() { Vec::new() } else { vec![T::default(); k * tile] };
    let mut first = true;
    for i in 0..g.n {
        let xi = &x[i * g.cin * g.h * g.w..(i + 1) * g.cin * g.h * g.w];
        let dyi = &dy[i * g.cout * p..(i + 1) * g.cout * p];
        for p0 in (0..p).step_by(tile) {
            let len = tile.min(p - p0);
            let lhs = Mat { ptr: dyi[p0..].as_ptr(), rs: p as isize, cs: 1 };
            let rhs = if g.pointwise() {
                Mat::transposed(xi, p)
            } else {
                im2col(g, xi, p0, len, &mut col);
                Mat::transposed(&col, len)
            };
            unsafe { gemm(g.cout, k, len, dw.as_mut_ptr(), k, 1, !first, lhs, rhs) };
            first = false;
        }
    }
}

/// Packed `[dW (cout·K) | db (cout)]`.
fn backward_weight<T: Real>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k) = (g.p(), g.k());
    let mut out = vec![T::default(); g.cout * k + g.cout];
    if !g.pointwise() && conv_s1::applies(g) {
        conv_s1::backward_weight(g, x, dy, &mut out[..g.cout * k]);
    } else {
        weight_grad_im2col(g, x, dy, &mut out[..g.cout * k]);
    }
    let db: Vec<f64> = (0..g.cout)
        .into_par_iter()
        .map(|co| (0..g.n).map(|i| T::sum(&dy[(i * g.cout + co) * p..(i * g.cout + co + 1) * p])).sum())
        .collect();
    for (co, v) in db.into_iter().enumerate() {
        out[g.cout * k + co] = T::from_f64(v);
    }
    out
}

/// y = conv2d(x, w) + b, optionally followed by ReLU.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOp {
    pub stride: usize,
    /// Zero padding (top = bottom, left = right).
    pub pad: (usize, usize),
    /// ReLU in the same pass (inference networks such as the FID Inception apply it after every conv).
    pub relu: bool,
}

/// max(y, 0) in place, in chunks over the rayon threads.
fn relu_in_place<T: Real>(y: &mut [T]) {
    y.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            if *v < T::default() {
                *v = T::default();
            }
        }
    });
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "gen-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2), (s3, l3) => |x, w, b| {
            let mut y = forward(&g, x, w, b);
            if self.relu {
                relu_in_place(&mut y);
            }
            y
        });
        Ok((out, g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        // through the ReLU: the gradient passes where the output is positive
        let dy = if self.relu { (dy * y.gt(0.0)?.to_dtype(dy.dtype())?)? } else { dy.clone() };
        let dy = dy.contiguous()?;
        let dx = w.apply_op2_no_bwd(&dy, &Conv2dBwdInput(g))?;
        let packed = x.apply_op2_no_bwd(&dy, &Conv2dBwdWeight(g))?;
        let nw = w.elem_count();
        let dw = packed.narrow(0, 0, nw)?.reshape(w.shape())?;
        let db = packed.narrow(0, nw, g.cout)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct Conv2dBwdInput(Geom);

impl CustomOp2 for Conv2dBwdInput {
    fn name(&self) -> &'static str {
        "gen-conv2d-bwd-input"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2) => |w, dy| backward_input(g, w, dy));
        Ok((out, Shape::from((g.n, g.cin, g.h, g.w))))
    }
}

struct Conv2dBwdWeight(Geom);

impl CustomOp2 for Conv2dBwdWeight {
    fn name(&self) -> &'static str {
        "gen-conv2d-bwd-weight"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let out = dispatch!(self.name(), (s1, l1), (s2, l2) => |x, dy| backward_weight(g, x, dy));
        Ok((out, Shape::from(g.cout * g.k() + g.cout)))
    }
}

/// Fused path for CPU f32/f64; `None` when the reference composition must be used instead.
pub fn try_fused(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: (usize, usize),
    relu: bool,
) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(None);
    }
    let w = w.to_dtype(x.dtype())?.contiguous()?;
    let b = match b {
        Some(b) => b.to_dtype(x.dtype())?.contiguous()?,
        None => Tensor::zeros(w.dim(0)?, x.dtype(), x.device())?,
    };
    Ok(Some(x.contiguous()?.apply_op3(&w, &b, Conv2dOp { stride, pad, relu })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use crate::kernels::reference;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    /// (input shape, kernel h, kernel w, cout, stride, padding).
    type Case = ([usize; 4], usize, usize, usize, usize, (usize, usize));

    /// Every conv shape the models use.
    const CASES: &[Case] = &[
        ([2, 5, 7, 6], 3, 3, 4, 1, (1, 1)),  // 3×3 s1 p1, non-square
        ([1, 4, 8, 8], 3, 3, 3, 2, (0, 0)),  // 3×3 s2 after the taming pad
        ([3, 6, 5, 4], 1, 1, 7, 1, (0, 0)),  // 1×1
        ([2, 3, 8, 6], 4, 4, 5, 2, (1, 1)),  // 4×4 s2 p1 (discriminator)
        ([1, 4, 9, 9], 1, 7, 3, 1, (0, 3)),  // Inception 1×7
        ([2, 4, 9, 8], 7, 1, 3, 1, (3, 0)),  // Inception 7×1
        ([1, 3, 11, 9], 3, 3, 4, 2, (0, 0)), // Inception 3×3 s2
        ([5, 3, 4, 6], 3, 3, 2, 1, (1, 1)),  // stride 1, a batch of five (the weight gradient sums them)
        ([4, 2, 6, 5], 3, 3, 3, 1, (0, 0)),  // stride 1 unpadded
    ];

    fn tensors(rng: &mut Rng, x: &[usize], kh: usize, kw: usize, cout: usize, dtype: DType) -> [Tensor; 3] {
        let dev = Device::Cpu;
        [
            rng.randn(x, 1.0, &dev).unwrap().to_dtype(dtype).unwrap(),
            rng.randn((cout, x[1], kh, kw), 0.3, &dev).unwrap().to_dtype(dtype).unwrap(),
            rng.randn(cout, 0.3, &dev).unwrap().to_dtype(dtype).unwrap(),
        ]
    }

    #[test]
    fn conv2d_gradcheck_f64_every_shape() {
        let mut rng = Rng::new(3);
        for &(x, kh, kw, cout, stride, pad) in CASES {
            for relu in [false, true] {
                let inputs = tensors(&mut rng, &x, kh, kw, cout, DType::F64);
                let f = |t: &[Tensor]| t[0].apply_op3(&t[1], &t[2], Conv2dOp { stride, pad, relu });
                let err = gradcheck(&f, &inputs, 1e-6, 150).unwrap();
                assert!(err < 1e-7, "{x:?} k{kh}x{kw} s{stride} p{pad:?} relu {relu}: relative error {err}");
            }
        }
    }

    #[test]
    fn conv2d_equals_reference_composition_forward_and_backward() {
        let mut rng = Rng::new(4);
        for (&(x, kh, kw, cout, stride, pad), relu) in CASES.iter().zip([false, true].into_iter().cycle()) {
            let [xt, wt, bt] = tensors(&mut rng, &x, kh, kw, cout, DType::F32);
            let run = |fused: bool| {
                let vars: Vec<Var> = [&xt, &wt, &bt].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                let (a, b, c) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
                let y = if fused {
                    try_fused(a, b, Some(c), stride, pad, relu).unwrap().unwrap()
                } else {
                    let y = reference::conv2d_hw(a, b, Some(c), stride, pad).unwrap();
                    if relu {
                        y.relu().unwrap()
                    } else {
                        y
                    }
                };
                let r = Tensor::ones(y.shape(), DType::F32, &Device::Cpu).unwrap();
                let g = (&y * (r * 0.5).unwrap()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let grads: Vec<Tensor> = vars.iter().map(|v| g.get(v.as_tensor()).unwrap().clone()).collect();
                (y, grads)
            };
            let ((y1, g1), (y0, g0)) = (run(true), run(false));
            let rel = |a: &Tensor, b: &Tensor| {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6)
            };
            assert_eq!(y1.dims(), y0.dims());
            assert!(rel(&y1, &y0) < 1e-5, "forward {x:?} k{kh}x{kw} relu {relu}");
            for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
                assert!(rel(a, b) < 1e-5, "grad {i} of {x:?} k{kh}x{kw}: {}", rel(a, b));
            }
        }
    }

    #[test]
    fn conv2d_large_batch_tiles_match_reference() {
        // more output pixels than one im2col tile, batch > 1
        let mut rng = Rng::new(5);
        let [x, w, b] = tensors(&mut rng, &[2, 256, 48, 40], 3, 3, 32, DType::F32);
        let g = Geom::new(x.dims(), w.dims(), 1, (1, 1)).unwrap();
        assert!(g.tile::<f32>() < g.p(), "the case must span several tiles");
        let y1 = try_fused(&x, &w, Some(&b), 1, (1, 1), false).unwrap().unwrap();
        let y0 = reference::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
        let d = (y1 - y0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
        // and the im2col path (stride 2) over several tiles
        let [x, w, b] = tensors(&mut rng, &[1, 256, 96, 80], 3, 3, 16, DType::F32);
        let y1 = try_fused(&x, &w, Some(&b), 2, (1, 1), false).unwrap().unwrap();
        let y0 = reference::conv2d(&x, &w, Some(&b), 2, 1).unwrap();
        let g2 = Geom::new(x.dims(), w.dims(), 2, (1, 1)).unwrap();
        assert!(g2.tile::<f32>() < g2.p());
        let d = (y1 - y0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
    }
}
