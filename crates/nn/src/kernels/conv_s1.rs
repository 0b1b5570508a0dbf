//! Stride-1 convolutions without im2col: one GEMM per kernel tap over a zero-padded copy of the input.
//!
//! With the input padded to [C, Hp, Wp] and the output computed on the same row pitch Wp, tap (i, j)
//! reads the padded planes shifted by `i·Wp + j`: `out[co, p] += W[co, ci, i, j] · xpad[ci, p + i·Wp + j]`,
//! a plain strided GEMM (M = C_out, N ≈ H·Wp, K = C_in). The Wp − Wo extra columns per row are dropped.
//! Small images go side by side ([C, n, Hp, Wp]) so one product covers several (N ≈ n·Hp·Wp): the
//! columns that straddle two images are dropped the same way.
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

/// Positions computed per output pixel: the padded plane over the output's.
pub fn overhead(g: &Geom) -> f64 {
    let pd = Padded::of(g);
    pd.plane() as f64 / (g.ho() * g.wo()).max(1) as f64
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

/// Columns a tap's GEMM should have: images are batched into one product until it has about this many
/// (a GEMM packs its weight panel once per call; at 8×8 one image gave it 78 columns).
const GROUP_COLS: usize = 4096;

/// Images per product: the batch, or fewer where their padded planes pass [`GROUP_COLS`].
fn group(g: &Geom, pd: &Padded) -> usize {
    (GROUP_COLS / pd.plane()).clamp(1, g.n.max(1))
}

/// The images `src` [m, ch, rows, cols] → `dst` [ch, m, hp, wp]: each channel's images side by side on
/// the padded pitch, placed at (`top`, `left`), zeros elsewhere.
fn pad_images<T: Real>(
    src: &[T],
    ch: usize,
    (rows, cols): (usize, usize),
    pd: &Padded,
    (top, left): (usize, usize),
    dst: &mut [T],
) {
    let (plane, img) = (pd.plane(), rows * cols);
    let m = src.len() / (ch * img);
    dst.par_chunks_mut(m * plane).enumerate().for_each(|(c, row)| {
        row.fill(T::default());
        for (a, d) in row.chunks_mut(plane).enumerate() {
            let s = &src[(a * ch + c) * img..][..img];
            for y in 0..rows {
                let d0 = (y + top) * pd.wp + left;
                d[d0..d0 + cols].copy_from_slice(&s[y * cols..(y + 1) * cols]);
            }
        }
    });
}

/// Output positions a product over `m` images computes, on their side-by-side planes: up to the last
/// image's last valid pixel (its final row needs only Wo columns).
fn n_valid(g: &Geom, pd: &Padded, m: usize) -> usize {
    (m - 1) * pd.plane() + (g.ho() - 1) * pd.wp + g.wo()
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
    let (ho, wo, plane) = (g.ho(), g.wo(), pd.plane());
    let wt = taps(g, w);
    let mut y = vec![T::default(); g.n * g.cout * ho * wo];
    let (per, xi) = (group(g, &pd), g.cin * g.h * g.w);
    T::with_scratch((g.cin + g.cout) * per * plane, |buf| {
        let (xpad, full) = buf.split_at_mut(g.cin * per * plane);
        for i0 in (0..g.n).step_by(per) {
            let m = per.min(g.n - i0);
            let row = m * plane; // one channel's images
            let (xpad, full) = (&mut xpad[..g.cin * row], &mut full[..g.cout * row]);
            pad_images(&x[i0 * xi..(i0 + m) * xi], g.cin, (g.h, g.w), &pd, (g.pad_h, g.pad_w), xpad);
            full.par_chunks_mut(row).zip(b.par_iter()).for_each(|(r, &bv)| r.fill(bv));
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let t = ki * g.kw + kj;
                    let lhs = Mat::row_major(&wt[t * g.cout * g.cin..(t + 1) * g.cout * g.cin], g.cin);
                    let rhs = Mat { ptr: xpad[ki * pd.wp + kj..].as_ptr(), rs: row as isize, cs: 1 };
                    // SAFETY: rhs reads xpad[ci·row + t_off + p] for p < n_valid, inside channel ci's row
                    unsafe { gemm(g.cout, n_valid(g, &pd, m), g.cin, full.as_mut_ptr(), row, 1, true, lhs, rhs) };
                }
            }
            let ys = &mut y[i0 * g.cout * ho * wo..(i0 + m) * g.cout * ho * wo];
            ys.par_chunks_mut(ho * wo).enumerate().for_each(|(ac, dst)| {
                let (a, co) = (ac / g.cout, ac % g.cout);
                let src = &full[co * row + a * plane..][..plane];
                for oy in 0..ho {
                    dst[oy * wo..(oy + 1) * wo].copy_from_slice(&src[oy * pd.wp..oy * pd.wp + wo]);
                }
            });
        }
    });
    y
}

/// The input gradient's convolution: dx = conv(dy, flip(w)ᵀ) with padding (kh−1−ph, kw−1−pw), as its
/// geometry and kernel [cin, cout, kh, kw].
pub fn flipped<T: Real>(g: &Geom, w: &[T]) -> (Geom, Vec<T>) {
    let kk = g.kh * g.kw;
    let mut wf = vec![T::default(); w.len()];
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
    (gt, wf)
}

/// dW [cout, cin, kh, kw] (Σ over the batch) for stride 1.
pub fn backward_weight<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    let pd = Padded::of(g);
    let (ho, wo, kk, k, plane) = (g.ho(), g.wo(), g.kh * g.kw, g.cin * g.kh * g.kw, pd.plane());
    let (per, xi, dyi) = (group(g, &pd), g.cin * g.h * g.w, g.cout * ho * wo);
    let (nx, ndy) = (g.cin * per * plane, g.cout * per * plane);
    let wplane = g.cout * g.cin;
    T::with_scratch(nx + ndy + kk * wplane, |buf| {
        let (xpad, rest) = buf.split_at_mut(nx);
        // dY on the padded pitch (zeros past Wo and Ho); every tap's dW summed over the batch, tap-major,
        // so each GEMM accumulates into a dense [cout, cin] block and dW's [cout, cin, kh·kw] layout is
        // scattered into once, not once per group
        let (dyfull, taps) = rest.split_at_mut(ndy);
        for i0 in (0..g.n).step_by(per) {
            let m = per.min(g.n - i0);
            let row = m * plane;
            let (xpad, dyfull) = (&mut xpad[..g.cin * row], &mut dyfull[..g.cout * row]);
            pad_images(&x[i0 * xi..(i0 + m) * xi], g.cin, (g.h, g.w), &pd, (g.pad_h, g.pad_w), xpad);
            pad_images(&dy[i0 * dyi..(i0 + m) * dyi], g.cout, (ho, wo), &pd, (0, 0), dyfull);
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let lhs = Mat { ptr: dyfull.as_ptr(), rs: row as isize, cs: 1 };
                    let rhs = Mat { ptr: xpad[ki * pd.wp + kj..].as_ptr(), rs: 1, cs: row as isize };
                    let tap = &mut taps[(ki * g.kw + kj) * wplane..][..wplane];
                    // SAFETY: as in `forward`; `tap` is a dense [cout, cin] block
                    unsafe { gemm(g.cout, g.cin, n_valid(g, &pd, m), tap.as_mut_ptr(), g.cin, 1, i0 > 0, lhs, rhs) };
                }
            }
        }
        if g.n == 0 {
            return;
        }
        dw.par_chunks_mut(k).enumerate().for_each(|(co, row)| {
            for (t, tap) in taps.chunks(wplane).enumerate() {
                let src = &tap[co * g.cin..(co + 1) * g.cin];
                for (ci, v) in src.iter().enumerate() {
                    row[ci * kk + t] = row[ci * kk + t] + *v;
                }
            }
        });
    });
}
