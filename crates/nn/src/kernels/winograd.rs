//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): each 2×2 output tile is `Aᵀ[(G g Gᵀ) ⊙
//! (Bᵀ d B)]A` over a 4×4 input tile `d`, so the channel contraction becomes 16 GEMMs of the same size
//! as one tap's, instead of 9 taps over twice the rows and columns: 2.25× fewer multiply-adds in the
//! products that dominate every UNet and tokenizer. The transforms hold only 0, ±1 and ±½, so f32
//! rounding stays at the level of the direct product (tested against it).
//!
//! Layouts (all row-major): transformed weights `U[cout][16][ldc]`, transformed input tiles
//! `V[cin][16][ld]`, products `M[cout][16][ld]` (`ldc`, `ld`: the channel and tile counts padded to an
//! odd pitch, [`padded`]); GEMM ξ reads the ξ-th row of every 16-block through a strided view, so no
//! transform writes scattered memory. Tiles run image-major in chunks of whole tile rows, at most
//! `CHUNK_BYTES` of `V` and `M`; U, V and M live in the per-thread scratch.

use rayon::prelude::*;

use super::conv::Geom;
use super::gemm::{gemm, Mat};
use super::real::Real;

const CHUNK_BYTES: usize = 48 << 20;

/// Channels below which the transforms cost more than the products save (`conv_in` from RGB).
const MIN_CHANNELS: usize = 16;

/// Whether the Winograd path applies: 3×3, stride 1, padding under the kernel, enough channels.
pub fn applies(g: &Geom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad_h < 3
        && g.pad_w < 3
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        && g.ho() > 0
        && g.wo() > 0
}

/// A row pitch of an odd number of elements for `n`: the GEMMs read 16-row blocks at 16 pitches apart,
/// and an even pitch with many factors of two puts those rows in a few cache sets (at 128 channels
/// every one in the same set; the packing of the operands then ran from L2).
fn padded(n: usize) -> usize {
    n | 1
}

/// Tile rows and columns of one image.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.ho().div_ceil(2), g.wo().div_ceil(2))
}

/// `dst = Σ c·src` over whole rows (each pass a contiguous vector loop).
fn combine<T: Real>(dst: &mut [T], terms: &[(f64, &[T])]) {
    let (c0, s0) = terms[0];
    let c0 = T::from_f64(c0);
    for (d, &v) in dst.iter_mut().zip(s0) {
        *d = c0 * v;
    }
    for &(c, src) in &terms[1..] {
        let c = T::from_f64(c);
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = *d + c * v;
        }
    }
}

/// The rows of `G·k·Gᵀ` from the rows of `k` (3×3 → 4×4) as linear combinations, or of `Gᵀ·P·G`
/// (4×4 → 3×3) for the weight gradient: `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `U = G g Gᵀ` for every (cout, cin), as `U[cout][16][ldc]`: per output channel, the kernel is turned
/// tap-major (`[9][cin]`), so each of the 16 rows of U is a combination of whole tap rows.
fn transform_weights<T: Real>(g: &Geom, w: &[T], u: &mut [T]) {
    let (cin, ldc) = (g.cin, padded(g.cin));
    u[..g.cout * 16 * ldc].par_chunks_mut(16 * ldc).enumerate().for_each(|(co, uc)| {
        let mut taps = vec![T::default(); 9 * cin];
        for (ci, k) in w[co * cin * 9..(co + 1) * cin * 9].chunks_exact(9).enumerate() {
            for (t, &v) in k.iter().enumerate() {
                taps[t * cin + ci] = v;
            }
        }
        let tap = |r: usize, c: usize| &taps[(3 * r + c) * cin..][..cin];
        // t = G·k: 4×3 rows over cin
        let mut t = vec![T::default(); 12 * cin];
        for (i, gi) in G.iter().enumerate() {
            for c in 0..3 {
                let terms: Vec<(f64, &[T])> = (0..3).filter(|&r| gi[r] != 0.0).map(|r| (gi[r], tap(r, c))).collect();
                combine(&mut t[(3 * i + c) * cin..][..cin], &terms);
            }
        }
        // U = t·Gᵀ
        for i in 0..4 {
            for (j, gj) in G.iter().enumerate() {
                let terms: Vec<(f64, &[T])> =
                    (0..3).filter(|&c| gj[c] != 0.0).map(|c| (gj[c], &t[(3 * i + c) * cin..][..cin])).collect();
                combine(&mut uc[(4 * i + j) * ldc..][..cin], &terms);
            }
        }
    });
}

/// `V = Bᵀ d B` for the tile rows `r0..r0 + rows` (image-major) of every input channel:
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. Row by row over whole tile rows,
/// so every step is a contiguous vector operation: the four input rows combine into `Bᵀd`, whose even
/// and odd columns then give the column transform of all tiles at once.
fn transform_input<T: Real>(g: &Geom, x: &[T], r0: usize, rows: usize, ld: usize, v: &mut [T]) {
    let (th, tw) = tiles(g);
    let (hw, wp) = (g.h * g.w, 2 * tw + 2);
    v[..g.cin * 16 * ld].par_chunks_mut(16 * ld).enumerate().for_each(|(ci, vc)| {
        // d: 4 zero-padded input rows; s: Bᵀd split into even / odd columns (tw + 1 each)
        let mut d = vec![T::default(); 4 * wp];
        let mut r = vec![T::default(); wp];
        let mut s = vec![T::default(); 2 * (tw + 1)];
        for rr in 0..rows {
            let (img, ty) = ((r0 + rr) / th, (r0 + rr) % th);
            let plane = &x[(img * g.cin + ci) * hw..][..hw];
            for i in 0..4 {
                let dst = &mut d[i * wp..(i + 1) * wp];
                dst.fill(T::default());
                let iy = (2 * ty + i) as isize - g.pad_h as isize;
                if iy >= 0 && iy < g.h as isize {
                    let n = g.w.min(wp - g.pad_w);
                    dst[g.pad_w..g.pad_w + n].copy_from_slice(&plane[iy as usize * g.w..][..n]);
                }
            }
            let (d0, rest) = d.split_at(wp);
            let (d1, rest) = rest.split_at(wp);
            let (d2, d3) = rest.split_at(wp);
            let base = rr * tw;
            for k in 0..4 {
                // row k of Bᵀd over the full width, then split into even / odd columns
                let (a, b, sign) = match k {
                    0 => (d0, d2, -1.0),
                    1 => (d1, d2, 1.0),
                    2 => (d2, d1, -1.0),
                    _ => (d1, d3, -1.0),
                };
                let sign = T::from_f64(sign);
                for ((o, &av), &bv) in r.iter_mut().zip(a).zip(b) {
                    *o = av + sign * bv;
                }
                let (se, so) = s.split_at_mut(tw + 1);
                for ((e, o), pair) in se.iter_mut().zip(so.iter_mut()).zip(r.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                let (e0, e1, o0, o1) = (&se[..tw], &se[1..], &so[..tw], &so[1..]);
                let at = |j: usize| (4 * k + j) * ld + base;
                for ((o, &a), &b) in vc[at(0)..][..tw].iter_mut().zip(e0).zip(e1) {
                    *o = a - b;
                }
                for ((o, &a), &b) in vc[at(1)..][..tw].iter_mut().zip(o0).zip(e1) {
                    *o = a + b;
                }
                for ((o, &a), &b) in vc[at(2)..][..tw].iter_mut().zip(e1).zip(o0) {
                    *o = a - b;
                }
                for ((o, &a), &b) in vc[at(3)..][..tw].iter_mut().zip(o0).zip(o1) {
                    *o = a - b;
                }
            }
        }
    });
}

/// `y = Aᵀ M A + b` for the tile rows `r0..r0 + rows`, cropped at odd edges:
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`. `y` holds the images the chunk touches, from image `img0` on.
#[allow(clippy::too_many_arguments)]
fn transform_output<T: Real>(g: &Geom, m: &[T], b: &[T], r0: usize, rows: usize, ld: usize, img0: usize, y: &mut [T]) {
    let (th, tw) = tiles(g);
    let (ho, wo) = (g.ho(), g.wo());
    y.par_chunks_mut(ho * wo).enumerate().for_each(|(plane_index, plane)| {
        let (img, co) = (img0 + plane_index / g.cout, plane_index % g.cout);
        let mc = &m[co * 16 * ld..][..16 * ld];
        let bias = b[co];
        // s[i][j]: row i of AᵀM, column j, for every tile of the row
        let mut s = vec![T::default(); 8 * tw];
        // this image's tile rows within the chunk
        let first = (img * th).max(r0);
        let last = ((img + 1) * th).min(r0 + rows);
        for r in first..last {
            let (base, ty) = ((r - r0) * tw, r - img * th);
            for j in 0..4 {
                let row = |i: usize| &mc[(4 * i + j) * ld + base..][..tw];
                let (m0, m1, m2, m3) = (row(0), row(1), row(2), row(3));
                let (s0, s1) = s.split_at_mut(4 * tw);
                let (s0, s1) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                for (((a, b), (&v0, &v1)), (&v2, &v3)) in
                    s0.iter_mut().zip(s1.iter_mut()).zip(m0.iter().zip(m1)).zip(m2.iter().zip(m3))
                {
                    *a = v0 + v1 + v2;
                    *b = v1 - v2 - v3;
                }
            }
            for i in 0..2 {
                let oy = 2 * ty + i;
                if oy >= ho {
                    break;
                }
                let si = &s[4 * i * tw..4 * (i + 1) * tw];
                let (a, rest) = si.split_at(tw);
                let (bb, rest) = rest.split_at(tw);
                let (c, e) = rest.split_at(tw);
                let out = &mut plane[oy * wo..(oy + 1) * wo];
                let full = wo / 2;
                for (pair, ((&va, &vb), (&vc, &ve))) in
                    out[..2 * full].chunks_exact_mut(2).zip(a.iter().zip(bb).zip(c.iter().zip(e)))
                {
                    pair[0] = va + vb + vc + bias;
                    pair[1] = vb - vc - ve + bias;
                }
                if wo % 2 == 1 {
                    out[wo - 1] = a[full] + bb[full] + c[full] + bias;
                }
            }
        }
    });
}

/// y[n, cout, ho, wo] = conv2d(x, w) + b for a geometry [`applies`] accepts.
pub fn forward<T: Real>(g: &Geom, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    forward_in_chunks(g, x, w, b, CHUNK_BYTES)
}

fn forward_in_chunks<T: Real>(g: &Geom, x: &[T], w: &[T], b: &[T], chunk_bytes: usize) -> Vec<T> {
    let (th, tw) = tiles(g);
    let plane = g.ho() * g.wo();
    // chunks of whole tile rows (image-major)
    let total_rows = g.n * th;
    let rows_per_chunk = rows_per_chunk::<T>(g, chunk_bytes);
    let chunk = rows_per_chunk * tw;
    let ldc = padded(g.cin);
    let mut y = vec![T::default(); g.n * g.cout * plane];
    // U (as large as 16/9 of the weights: 134 MB at 1024 → 2048 channels) lives in the reused scratch
    // with the tile buffers, not in fresh pages the kernel must zero on every call
    T::with_scratch(16 * g.cout * ldc + 16 * (g.cin + g.cout) * padded(chunk), |buf| {
        let (u, buf) = buf.split_at_mut(16 * g.cout * ldc);
        transform_weights(g, w, u);
        let (v, m) = buf.split_at_mut(16 * g.cin * padded(chunk));
        for r0 in (0..total_rows).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(total_rows - r0);
            let (len, ld) = (rows * tw, padded(rows * tw));
            transform_input(g, x, r0, rows, ld, v);
            for xi in 0..16 {
                let lhs = Mat { ptr: u[xi * ldc..].as_ptr(), rs: (16 * ldc) as isize, cs: 1 };
                let rhs = Mat { ptr: v[xi * ld..].as_ptr(), rs: (16 * ld) as isize, cs: 1 };
                // SAFETY: U is [cout][16][ldc], V [cin][16][ld], M [cout][16][ld]: every view stays in its buffer
                unsafe { gemm(g.cout, len, g.cin, m[xi * ld..].as_mut_ptr(), 16 * ld, 1, false, lhs, rhs) };
            }
            let (img0, img1) = (r0 / th, (r0 + rows).div_ceil(th));
            let ys = &mut y[img0 * g.cout * plane..img1 * g.cout * plane];
            transform_output(g, m, b, r0, rows, ld, img0, ys);
        }
    });
    y
}

/// `Q = A dY Aᵀ` (the gradient reaching `U ⊙ V`) for the tile rows `r0..r0 + rows` of every output
/// channel, zero past odd edges: `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`.
fn transform_grad_output<T: Real>(g: &Geom, dy: &[T], r0: usize, rows: usize, ld: usize, q: &mut [T]) {
    let (th, tw) = tiles(g);
    let (ho, wo) = (g.ho(), g.wo());
    q[..g.cout * 16 * ld].par_chunks_mut(16 * ld).enumerate().for_each(|(co, qc)| {
        // the tile row's two dY rows, split into even / odd columns (zero past the edges)
        let mut e = vec![T::default(); 4 * tw];
        for rr in 0..rows {
            let (img, ty) = ((r0 + rr) / th, (r0 + rr) % th);
            let plane = &dy[(img * g.cout + co) * ho * wo..][..ho * wo];
            e.fill(T::default());
            for i in 0..2 {
                let oy = 2 * ty + i;
                if oy >= ho {
                    break;
                }
                let row = &plane[oy * wo..(oy + 1) * wo];
                let (ev, od) = e[2 * i * tw..2 * (i + 1) * tw].split_at_mut(tw);
                for (t, pair) in row.chunks(2).enumerate() {
                    ev[t] = pair[0];
                    if pair.len() == 2 {
                        od[t] = pair[1];
                    }
                }
            }
            let (a, rest) = e.split_at(tw);
            let (b, rest) = rest.split_at(tw);
            let (c, d) = rest.split_at(tw);
            let base = rr * tw;
            // rows of A·dY: (a, b), (a + c, b + d), (a − c, b − d), (−c, −d); then each row (u, v) → (u, u + v, u − v, −v)
            for i in 0..4 {
                for t in 0..tw {
                    let (u, v) = match i {
                        0 => (a[t], b[t]),
                        1 => (a[t] + c[t], b[t] + d[t]),
                        2 => (a[t] - c[t], b[t] - d[t]),
                        _ => (T::default() - c[t], T::default() - d[t]),
                    };
                    qc[(4 * i) * ld + base + t] = u;
                    qc[(4 * i + 1) * ld + base + t] = u + v;
                    qc[(4 * i + 2) * ld + base + t] = u - v;
                    qc[(4 * i + 3) * ld + base + t] = T::default() - v;
                }
            }
        }
    });
}

/// dW [cout, cin, 3, 3] (Σ over the batch) for a geometry [`applies`] accepts: the derivative of the
/// forward's algebra, `∂U_ξ = Σ_tiles Q_ξ · V_ξᵀ` (16 GEMMs with the tiles as the inner dimension),
/// then `dW = Gᵀ ∂U G`.
pub fn backward_weight<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    backward_weight_in_chunks(g, x, dy, dw, CHUNK_BYTES)
}

/// Whole tile rows per chunk: as many as fit `chunk_bytes` of the two transformed operands, at least one.
fn rows_per_chunk<T>(g: &Geom, chunk_bytes: usize) -> usize {
    let (th, tw) = tiles(g);
    (chunk_bytes / std::mem::size_of::<T>() / (16 * (g.cin + g.cout) * tw)).clamp(1, (g.n * th).max(1))
}

fn backward_weight_in_chunks<T: Real>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T], chunk_bytes: usize) {
    let (th, tw) = tiles(g);
    let total_rows = g.n * th;
    if total_rows == 0 {
        return;
    }
    let rows_per_chunk = rows_per_chunk::<T>(g, chunk_bytes);
    let chunk = rows_per_chunk * tw;
    let ldc = padded(g.cin);
    T::with_scratch(16 * g.cout * ldc + 16 * (g.cin + g.cout) * padded(chunk), |buf| {
        // ∂U is written by the first chunk's GEMMs (no accumulation) and added to by the others
        let (du, buf) = buf.split_at_mut(16 * g.cout * ldc);
        let (v, q) = buf.split_at_mut(16 * g.cin * padded(chunk));
        for r0 in (0..total_rows).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(total_rows - r0);
            let (len, ld) = (rows * tw, padded(rows * tw));
            transform_input(g, x, r0, rows, ld, v);
            transform_grad_output(g, dy, r0, rows, ld, q);
            for xi in 0..16 {
                let lhs = Mat { ptr: q[xi * ld..].as_ptr(), rs: (16 * ld) as isize, cs: 1 };
                let rhs = Mat { ptr: v[xi * ld..].as_ptr(), rs: 1, cs: (16 * ld) as isize };
                // SAFETY: Q is [cout][16][ld], V [cin][16][ld], ∂U [cout][16][ldc]
                unsafe { gemm(g.cout, g.cin, len, du[xi * ldc..].as_mut_ptr(), 16 * ldc, 1, r0 > 0, lhs, rhs) };
            }
        }
        // dW = Gᵀ ∂U G, row by row over cin, then back to [cin][9] per output channel
        let cin = g.cin;
        dw.par_chunks_mut(cin * 9).zip(du[..g.cout * 16 * ldc].par_chunks(16 * ldc)).for_each(|(wc, uc)| {
            let p = |i: usize, j: usize| &uc[(4 * i + j) * ldc..][..cin];
            // t = Gᵀ·∂U: 3×4 rows
            let mut t = vec![T::default(); 12 * cin];
            for r in 0..3 {
                for j in 0..4 {
                    let terms: Vec<(f64, &[T])> =
                        (0..4).filter(|&i| G[i][r] != 0.0).map(|i| (G[i][r], p(i, j))).collect();
                    combine(&mut t[(4 * r + j) * cin..][..cin], &terms);
                }
            }
            let mut taps = vec![T::default(); 9 * cin];
            for r in 0..3 {
                for c in 0..3 {
                    let terms: Vec<(f64, &[T])> =
                        (0..4).filter(|&j| G[j][c] != 0.0).map(|j| (G[j][c], &t[(4 * r + j) * cin..][..cin])).collect();
                    combine(&mut taps[(3 * r + c) * cin..][..cin], &terms);
                }
            }
            for (ci, k) in wc.chunks_exact_mut(9).enumerate() {
                for (tp, v) in k.iter_mut().enumerate() {
                    *v = taps[tp * cin + ci];
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_s1;
    use gen_runtime::Rng;

    fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    /// (n, cin, h, w, cout, pad, chunk bytes): odd sizes, every padding, and chunks that split images.
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
        (2, 16, 8, 8, 16, 1, CHUNK_BYTES),
        (3, 17, 7, 5, 18, 1, CHUNK_BYTES),
        (2, 16, 9, 6, 20, 0, CHUNK_BYTES),
        (1, 20, 5, 7, 16, 2, CHUNK_BYTES),
        (3, 16, 7, 7, 16, 1, 16 * 32 * 8 * 4 * 3), // 3 tile rows per chunk: chunks straddle images
        (2, 24, 3, 3, 16, 1, 1),                   // one tile row per chunk
    ];

    /// Against the shifted-tap direct product, in f64 (the algebra) and f32 (the rounding).
    #[test]
    fn winograd_equals_the_direct_convolution() {
        let mut rng = Rng::new(7);
        for (n, cin, h, w, cout, pad, bytes) in CASES {
            let g = Geom { n, cin, h, w, cout, kh: 3, kw: 3, stride: 1, pad_h: pad, pad_w: pad };
            assert!(applies(&g));
            let x = random(&mut rng, n * cin * h * w, 1.0);
            let k = random(&mut rng, cout * cin * 9, 0.2);
            let b = random(&mut rng, cout, 0.5);
            let want = conv_s1::forward(&g, &x, &k, &b);
            let got = forward_in_chunks(&g, &x, &k, &b, bytes);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "f64 {n}x{cin}x{h}x{w} → {cout}, pad {pad}: {err}");
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x32, k32, b32) = (f(&x), f(&k), f(&b));
            let got32 = forward_in_chunks(&g, &x32, &k32, &b32, bytes / 2);
            let direct32 = conv_s1::forward(&g, &x32, &k32, &b32);
            let (mut e_w, mut e_d) = (0f64, 0f64);
            for ((a, d), t) in got32.iter().zip(&direct32).zip(&want) {
                e_w = e_w.max((*a as f64 - t).abs());
                e_d = e_d.max((*d as f64 - t).abs());
            }
            // Winograd's f32 error within a small multiple of the direct product's
            assert!(e_w < 4.0 * e_d.max(1e-6), "f32 {n}x{cin}x{h}x{w}: winograd {e_w} direct {e_d}");
        }
    }

    #[test]
    fn winograd_weight_gradient_equals_the_direct_one() {
        let mut rng = Rng::new(8);
        for (n, cin, h, w, cout, pad, bytes) in CASES {
            let g = Geom { n, cin, h, w, cout, kh: 3, kw: 3, stride: 1, pad_h: pad, pad_w: pad };
            let x = random(&mut rng, n * cin * h * w, 1.0);
            let dy = random(&mut rng, n * cout * g.ho() * g.wo(), 1.0);
            let mut want = vec![0.0; cout * cin * 9];
            conv_s1::backward_weight(&g, &x, &dy, &mut want);
            let mut got = vec![0.0; cout * cin * 9];
            backward_weight_in_chunks(&g, &x, &dy, &mut got, bytes);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-10, "f64 {n}x{cin}x{h}x{w} → {cout}, pad {pad}: {err}");
        }
    }

    #[test]
    fn small_channel_counts_and_other_kernels_keep_the_direct_path() {
        let g = Geom { n: 1, cin: 3, h: 8, w: 8, cout: 64, kh: 3, kw: 3, stride: 1, pad_h: 1, pad_w: 1 };
        assert!(!applies(&g));
        assert!(!applies(&Geom { cin: 64, stride: 2, ..g }));
        assert!(!applies(&Geom { cin: 64, kh: 1, kw: 1, pad_h: 0, pad_w: 0, ..g }));
        assert!(applies(&Geom { cin: 64, ..g }));
    }
}
