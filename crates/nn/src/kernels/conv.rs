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
use super::winograd;

const COL_BYTES: usize = 32 << 20;

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
    /// Columns per im2col tile: as many output pixels of the batch (image-major) as fit `COL_BYTES`, so
    /// small images share one product (an 8×8 image alone gave the GEMM 64 columns).
    fn tile<T>(&self) -> usize {
        (COL_BYTES / std::mem::size_of::<T>() / self.k()).max(self.wo()).min(self.n * self.p()).max(1)
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

/// The pieces of the batch's output pixels `q0..q0 + len` (image-major: q = image·p + pixel), one per
/// image: (image, first pixel, pixels, offset in the tile).
fn segments(g: &Geom, q0: usize, len: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let p = g.p();
    let mut q = q0;
    std::iter::from_fn(move || {
        (q < q0 + len).then(|| {
            let (i, p0) = (q / p, q % p);
            let l = (p - p0).min(q0 + len - q);
            let seg = (i, p0, l, q - q0);
            q += l;
            seg
        })
    })
}

/// col[K, len] for the batch's output pixels q0..q0+len, from x[n, cin, h, w].
fn im2col<T: Real>(g: &Geom, x: &[T], q0: usize, len: usize, col: &mut [T]) {
    let (kk, hw) = (g.kh * g.kw, g.h * g.w);
    col[..g.k() * len].par_chunks_mut(len).enumerate().for_each(|(r, dst)| {
        let (ci, ki, kj) = (r / kk, (r % kk) / g.kw, r % g.kw);
        dst.fill(T::default());
        for (i, p0, l, off) in segments(g, q0, len) {
            let src = &x[(i * g.cin + ci) * hw..][..hw];
            for_taps(g, ki, kj, p0, l, |c, s| dst[off + c] = src[s]);
        }
    });
}

/// dx[n, cin, h, w] += col2im(dcol[K, len]) for the batch's output pixels q0..q0+len.
fn col2im_add<T: Real>(g: &Geom, dcol: &[T], q0: usize, len: usize, dx: &mut [T]) {
    let (kk, hw) = (g.kh * g.kw, g.h * g.w);
    for (i, p0, l, off) in segments(g, q0, len) {
        dx[i * g.cin * hw..(i + 1) * g.cin * hw].par_chunks_mut(hw).enumerate().for_each(|(ci, dst)| {
            for r in ci * kk..(ci + 1) * kk {
                let (ki, kj) = ((r % kk) / g.kw, r % g.kw);
                let src = &dcol[r * len + off..];
                for_taps(g, ki, kj, p0, l, |c, s| dst[s] = dst[s] + src[c]);
            }
        });
    }
}

/// t[cout, len] ← a[n, cout, p] over the batch's output pixels q0..q0+len (`gather`), or the reverse
/// plus a per-channel bias (`scatter`).
fn gather<T: Real>(g: &Geom, a: &[T], q0: usize, len: usize, t: &mut [T]) {
    let (p, ch) = (g.p(), g.cout);
    t[..ch * len].par_chunks_mut(len).enumerate().for_each(|(c, row)| {
        for (i, p0, l, off) in segments(g, q0, len) {
            row[off..off + l].copy_from_slice(&a[(i * ch + c) * p + p0..][..l]);
        }
    });
}

fn scatter<T: Real>(g: &Geom, t: &[T], b: &[T], q0: usize, len: usize, a: &mut [T]) {
    let (p, ch) = (g.p(), g.cout);
    for (i, p0, l, off) in segments(g, q0, len) {
        a[i * ch * p..(i + 1) * ch * p].par_chunks_mut(p).enumerate().for_each(|(c, row)| {
            for (d, &v) in row[p0..p0 + l].iter_mut().zip(&t[c * len + off..][..l]) {
                *d = v + b[c];
            }
        });
    }
}

/// Stride-1 convs take the shifted-tap path unless padding is a large share of each image (8×8 with
/// padding 1: 100 padded positions computed per 64 outputs), where im2col's exact product is cheaper.
fn shifted(g: &Geom) -> bool {
    !g.pointwise() && conv_s1::applies(g) && conv_s1::overhead(g) <= 1.3
}

fn forward<T: Real>(g: &Geom, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    if winograd::applies(g) {
        return winograd::forward(g, x, w, b);
    }
    if shifted(g) {
        return conv_s1::forward(g, x, w, b);
    }
    let (p, k) = (g.p(), g.k());
    let mut y = vec![T::default(); g.n * g.cout * p];
    if g.pointwise() {
        for i in 0..g.n {
            let xi = &x[i * g.cin * p..(i + 1) * g.cin * p];
            let yi = &mut y[i * g.cout * p..(i + 1) * g.cout * p];
            yi.par_chunks_mut(p).zip(b.par_iter()).for_each(|(row, &bv)| row.fill(bv));
            unsafe { gemm(g.cout, p, k, yi.as_mut_ptr(), p, 1, true, Mat::row_major(w, k), Mat::row_major(xi, p)) };
        }
        return y;
    }
    for_tiles(g, |q0, len, col, out| {
        im2col(g, x, q0, len, col);
        unsafe {
            gemm(g.cout, len, k, out.as_mut_ptr(), len, 1, false, Mat::row_major(w, k), Mat::row_major(col, len))
        };
        scatter(g, out, b, q0, len, &mut y);
    });
    y
}

fn backward_input<T: Real>(g: &Geom, w: &[T], dy: &[T]) -> Vec<T> {
    if !g.pointwise() && conv_s1::applies(g) {
        // the flipped kernel's stride-1 forward, on whichever path suits its shape
        let (gt, wf) = conv_s1::flipped(g, w);
        return forward(&gt, dy, &wf, &vec![T::default(); g.cin]);
    }
    let (p, k, hw) = (g.p(), g.k(), g.h * g.w);
    let mut dx = vec![T::default(); g.n * g.cin * hw];
    let wt = Mat::transposed(w, k); // Wᵀ [K, cout]
    if g.pointwise() {
        for i in 0..g.n {
            let dyi = &dy[i * g.cout * p..(i + 1) * g.cout * p];
            let dxi = &mut dx[i * g.cin * hw..(i + 1) * g.cin * hw];
            unsafe { gemm(k, p, g.cout, dxi.as_mut_ptr(), p, 1, false, wt, Mat::row_major(dyi, p)) };
        }
        return dx;
    }
    for_tiles(g, |q0, len, dcol, dyt| {
        gather(g, dy, q0, len, dyt);
        unsafe { gemm(k, len, g.cout, dcol.as_mut_ptr(), len, 1, false, wt, Mat::row_major(dyt, len)) };
        col2im_add(g, dcol, q0, len, &mut dx);
    });
    dx
}

/// dW = Σ dY·colᵀ over the batch's im2col tiles (1×1 stride-1: colᵀ is xᵀ, image by image).
fn weight_grad_im2col<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    let (p, k) = (g.p(), g.k());
    if g.pointwise() {
        for i in 0..g.n {
            let xi = &x[i * g.cin * p..(i + 1) * g.cin * p];
            let lhs = Mat::row_major(&dy[i * g.cout * p..(i + 1) * g.cout * p], p);
            unsafe { gemm(g.cout, k, p, dw.as_mut_ptr(), k, 1, i > 0, lhs, Mat::transposed(xi, p)) };
        }
        return;
    }
    for_tiles(g, |q0, len, col, dyt| {
        im2col(g, x, q0, len, col);
        gather(g, dy, q0, len, dyt);
        let (lhs, rhs) = (Mat::row_major(dyt, len), Mat::transposed(col, len));
        unsafe { gemm(g.cout, k, len, dw.as_mut_ptr(), k, 1, q0 > 0, lhs, rhs) };
    });
}

/// Runs `f(q0, len, a, b)` over the batch's im2col tiles (output pixels `q0..q0 + len`, image-major),
/// with per-thread scratch `a` of K·len and `b` of cout·len elements.
fn for_tiles<T: Real>(g: &Geom, mut f: impl FnMut(usize, usize, &mut [T], &mut [T])) {
    let (total, k, tile) = (g.n * g.p(), g.k(), g.tile::<T>());
    T::with_scratch((k + g.cout) * tile, |buf| {
        let (a, b) = buf.split_at_mut(k * tile);
        for q0 in (0..total).step_by(tile) {
            f(q0, tile.min(total - q0), a, b);
        }
    });
}

/// Packed `[dW (cout·K) | db (cout)]`.
fn backward_weight<T: Real>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    let (p, k) = (g.p(), g.k());
    let mut out = vec![T::default(); g.cout * k + g.cout];
    if winograd::applies(g) {
        winograd::backward_weight(g, x, dy, &mut out[..g.cout * k]);
    } else if shifted(g) {
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
        ([2, 5, 7, 6], 3, 3, 4, 1, (1, 1)),   // 3×3 s1 p1, non-square
        ([1, 4, 8, 8], 3, 3, 3, 2, (0, 0)),   // 3×3 s2 after the taming pad
        ([3, 6, 5, 4], 1, 1, 7, 1, (0, 0)),   // 1×1
        ([2, 3, 8, 6], 4, 4, 5, 2, (1, 1)),   // 4×4 s2 p1 (discriminator)
        ([1, 4, 9, 9], 1, 7, 3, 1, (0, 3)),   // Inception 1×7
        ([2, 4, 9, 8], 7, 1, 3, 1, (3, 0)),   // Inception 7×1
        ([1, 3, 11, 9], 3, 3, 4, 2, (0, 0)),  // Inception 3×3 s2
        ([5, 3, 4, 6], 3, 3, 2, 1, (1, 1)),   // stride 1, a batch of five (the weight gradient sums them)
        ([4, 2, 6, 5], 3, 3, 3, 1, (0, 0)),   // stride 1 unpadded
        ([3, 2, 40, 38], 3, 3, 2, 1, (1, 1)), // stride 1, images side by side in groups of 2 and 1
        ([2, 16, 7, 6], 3, 3, 16, 1, (1, 1)), // 3×3 stride 1 with 16 channels: the Winograd path
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
    fn conv2d_tiles_spanning_images_match_reference() {
        let mut rng = Rng::new(5);
        let check = |x: &Tensor, w: &Tensor, b: &Tensor, stride: usize| {
            let y1 = try_fused(x, w, Some(b), stride, (1, 1), false).unwrap().unwrap();
            let y0 = reference::conv2d(x, w, Some(b), stride, 1).unwrap();
            let d = (y1 - y0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{:?} stride {stride}: {d}", x.dims());
        };
        // small images: one im2col tile holds the whole batch
        let [x, w, b] = tensors(&mut rng, &[6, 64, 16, 16], 3, 3, 8, DType::F32);
        let g = Geom::new(x.dims(), w.dims(), 2, (1, 1)).unwrap();
        assert!(g.tile::<f32>() == g.n * g.p() && g.n > 1);
        check(&x, &w, &b, 2);
        // large images: tiles end inside images, and one tile spans the end of one and the start of the next
        let [x, w, b] = tensors(&mut rng, &[2, 512, 192, 160], 3, 3, 4, DType::F32);
        let g = Geom::new(x.dims(), w.dims(), 2, (1, 1)).unwrap();
        assert!(g.tile::<f32>() < g.p() && !g.p().is_multiple_of(g.tile::<f32>()));
        check(&x, &w, &b, 2);
        // stride 1 with a large share of padding (8×8) takes im2col; 40×40 takes the shifted taps
        for hw in [8, 40] {
            let [x, w, b] = tensors(&mut rng, &[5, 16, hw, hw], 3, 3, 8, DType::F32);
            let g = Geom::new(x.dims(), w.dims(), 1, (1, 1)).unwrap();
            assert_eq!(shifted(&g), hw == 40);
            check(&x, &w, &b, 1);
        }
    }
}
