//! Stride-1 convolutions without im2col: one GEMM per kernel tap over a zero-padded copy of the input.
//!
//! With the input padded to [C, Hp, Wp] and the output computed on the same row pitch Wp, tap (i, j)
//! reads the padded planes shifted by `i·Wp + j`: `out[co, p] += W[co, ci, i, j] · xpad[ci, p + i·Wp + j]`,
//! a plain strided GEMM (M = C_out, N ≈ H·Wp, K = C_in). The Wp − Wo extra columns per row are dropped.
//! The input gradient is the same convolution of dY with the flipped, transposed kernel; the weight
//! gradient is one GEMM per tap with the roles swapped. This halves the memory traffic of im2col.

use rayon::prelude::*;

use super::conv::Geom;
use super::gemm::{gemm, Mat};
use super::real::Real;

/// Whether the direct path applies (stride 1, and the flipped kernel's padding is non-negative).
pub fn applies(g: &Geom) -> bool {
    g.stride == 1 && g.pad_h < g.kh && g.pad_w < g.kw
}

struct Padded {
    hp: usize,
    wp: usize,
}

impl Padded {
    fn of(g: &Geom) -> Self {
        Padded { hp: g.h + 2 * g.pad_h, wp: g.w + 2 * g.pad_w }
    }
    fn plane(&self) -> usize {
        self.hp * self.wp
    }
}

/// x[c, h, w] → xpad[c, hp, wp] with zero borders.
fn pad_image<T: Real>(g: &Geom, pd: &Padded, x: &[T], xpad: &mut [T]) {
    xpad.par_chunks_mut(pd.plane()).zip(x.par_chunks(g.h * g.w)).for_each(|(dst, src)| {
        dst.fill(T::default());
        for y in 0..g.h {
            let d0 = (y + g.pad_h) * pd.wp + g.pad_w;
            dst[d0..d0 + g.w].copy_from_slice(&src[y * g.w..(y + 1) * g.w]);
        }
    });
}

/// Number of pitched output positions that are read: the last row needs only Wo columns.
fn n_valid(g: &Geom, pd: &Padded) -> usize {
    (g.ho() - 1) * pd.wp + g.wo()
}

/// The weights regrouped per tap, `[kh·kw][cout][cin]`, so each tap's matrix is dense (BLAS-friendly).
fn taps<T: Real>(g: &Geom, w: &[T]) -> Vec<T> {
    let kk = g.kh * g.kw;
    let mut out = vec![T::default(); w.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for t in 0..kk {
                out[(t * g.cout + co) * g.cin + ci] = w[(co * g.cin + ci) * kk + t];
            }
        }
    }
    out
}

/// y[n, cout, ho, wo] = conv(x, w) + b, stride 1.
pub fn forward<T: Real>(g: &Geom, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let pd = Padded::of(g);
    let (ho, wo) = (g.ho(), g.wo());
    let wt = taps(g, w);
    let pitch = ho * pd.wp;
    let mut y = vec![T::default(); g.n * g.cout * ho * wo];
    T::with_scratch(g.cin * pd.plane() + g.cout * pitch, |buf| {
        let (xpad, full) = buf.split_at_mut(g.cin * pd.plane());
        for i in 0..g.n {
            pad_image(g, &pd, &x[i * g.cin * g.h * g.w..(i + 1) * g.cin * g.h * g.w], xpad);
            full.par_chunks_mut(pitch).zip(b.par_iter()).for_each(|(row, &bv)| row.fill(bv));
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let t = ki * g.kw + kj;
                    let lhs = Mat::row_major(&wt[t * g.cout * g.cin..(t + 1) * g.cout * g.cin], g.cin);
                    let rhs = Mat { ptr: xpad[ki * pd.wp + kj..].as_ptr(), rs: pd.plane() as isize, cs: 1 };
                    // SAFETY: rhs reads xpad[ci·plane + t_off + p] for p < n_valid, inside the padded planes
                    unsafe { gemm(g.cout, n_valid(g, &pd), g.cin, full.as_mut_ptr(), pitch, 1, true, lhs, rhs) };
                }
            }
            let yi = &mut y[i * g.cout * ho * wo..(i + 1) * g.cout * ho * wo];
            yi.par_chunks_mut(ho * wo).zip(full.par_chunks(pitch)).for_each(|(dst, src)| {
                for oy in 0..ho {
                    dst[oy * wo..(oy + 1) * wo].copy_from_slice(&src[oy * pd.wp..oy * pd.wp + wo]);
                }
            });
        }
    });
    y
}

/// dx = conv(dy, flip(w)ᵀ) with padding (kh−1−ph, kw−1−pw).
pub fn backward_input<T: Real>(g: &Geom, w: &[T], dy: &[T]) -> Vec<T> {
    let kk = g.kh * g.kw;
    let mut wf = vec![T::default(); w.len()]; // [cin, cout, kh, kw]
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for t in 0..kk {
                wf[(ci * g.cout + co) * kk + (kk - 1 - t)] = w[(co * g.cin + ci) * kk + t];
            }
        }
    }
    let gt = Geom {
        n: g.n,
        cin: g.cout,
        h: g.ho(),
        w: g.wo(),
        cout: g.cin,
        kh: g.kh,
        kw: g.kw,
        stride: 1,
        pad_h: g.kh - 1 - g.pad_h,
        pad_w: g.kw - 1 - g.pad_w,
    };
    debug_assert_eq!((gt.ho(), gt.wo()), (g.h, g.w));
    forward(&gt, dy, &wf, &vec![T::default(); g.cin])
}

/// dW [cout, cin, kh, kw] (Σ over the batch) for stride 1.
pub fn backward_weight<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    let pd = Padded::of(g);
    let (ho, wo, kk, k) = (g.ho(), g.wo(), g.kh * g.kw, g.cin * g.kh * g.kw);
    let pitch = ho * pd.wp;
    let (nx, ndy) = (g.cin * pd.plane(), g.cout * pitch);
    let plane = g.cout * g.cin;
    T::with_scratch(nx + ndy + kk * plane, |buf| {
        let (xpad, rest) = buf.split_at_mut(nx);
        // dY on the padded pitch (zeros past Wo); every tap's dW summed over the batch, tap-major, so
        // each GEMM accumulates into a dense [cout, cin] block and dW's [cout, cin, kh·kw] layout is
        // scattered into once, not once per image
        let (dyfull, taps) = rest.split_at_mut(ndy);
        for i in 0..g.n {
            pad_image(g, &pd, &x[i * g.cin * g.h * g.w..(i + 1) * g.cin * g.h * g.w], xpad);
            let dyi = &dy[i * g.cout * ho * wo..(i + 1) * g.cout * ho * wo];
            dyfull.par_chunks_mut(pitch).zip(dyi.par_chunks(ho * wo)).for_each(|(dst, src)| {
                dst.fill(T::default());
                for oy in 0..ho {
                    dst[oy * pd.wp..oy * pd.wp + wo].copy_from_slice(&src[oy * wo..(oy + 1) * wo]);
                }
            });
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let lhs = Mat { ptr: dyfull.as_ptr(), rs: pitch as isize, cs: 1 };
                    let rhs = Mat { ptr: xpad[ki * pd.wp + kj..].as_ptr(), rs: 1, cs: pd.plane() as isize };
                    let tap = &mut taps[(ki * g.kw + kj) * plane..][..plane];
                    // SAFETY: as in `forward`; `tap` is a dense [cout, cin] block
                    unsafe { gemm(g.cout, g.cin, n_valid(g, &pd), tap.as_mut_ptr(), g.cin, 1, i > 0, lhs, rhs) };
                }
            }
        }
        if g.n == 0 {
            return;
        }
        dw.par_chunks_mut(k).enumerate().for_each(|(co, row)| {
            for (t, tap) in taps.chunks(plane).enumerate() {
                let src = &tap[co * g.cin..(co + 1) * g.cin];
                for (ci, v) in src.iter().enumerate() {
                    row[ci * kk + t] = row[ci * kk + t] + *v;
                }
            }
        });
    });
}
