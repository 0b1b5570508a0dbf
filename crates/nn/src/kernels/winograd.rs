//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): each 2×2 output tile is `Aᵀ[(G g Gᵀ) ⊙
//! (Bᵀ d B)]A` over a 4×4 input tile `d`, so the channel contraction becomes 16 GEMMs of the same size
//! as one tap's, instead of 9 taps over twice the rows and columns: 2.25× fewer multiply-adds in the
//! products that dominate every UNet and tokenizer. The transforms hold only 0, ±1 and ±½, so f32
//! rounding stays at the level of the direct product (tested against it).
//!
//! Layouts (all row-major): transformed weights `U[cout][16][cin]`, transformed input tiles
//! `V[cin][16][tiles]`, products `M[cout][16][tiles]`; GEMM ξ reads the ξ-th row of every 16-block
//! through a strided view, so no transform writes scattered memory. Tiles run image-major in chunks
//! of at most `CHUNK_BYTES` of `V` and `M`.

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

/// Tile rows and columns of one image.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.ho().div_ceil(2), g.wo().div_ceil(2))
}

/// `U = G g Gᵀ` for every (cout, cin): `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights<T: Real>(g: &Geom, w: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let mut u = vec![T::default(); g.cout * 16 * g.cin];
    u.par_chunks_mut(16 * g.cin).enumerate().for_each(|(co, uc)| {
        for ci in 0..g.cin {
            let k = &w[(co * g.cin + ci) * 9..][..9];
            // rows: t = G·k (4×3)
            let mut t = [T::default(); 12];
            for c in 0..3 {
                let (k0, k1, k2) = (k[c], k[3 + c], k[6 + c]);
                t[c] = k0;
                t[3 + c] = half * (k0 + k1 + k2);
                t[6 + c] = half * (k0 - k1 + k2);
                t[9 + c] = k2;
            }
            // columns: U = t·Gᵀ (4×4)
            for r in 0..4 {
                let (a, b, c) = (t[3 * r], t[3 * r + 1], t[3 * r + 2]);
                let row = [a, half * (a + b + c), half * (a - b + c), c];
                for (j, v) in row.into_iter().enumerate() {
                    uc[(4 * r + j) * g.cin + ci] = v;
                }
            }
        }
    });
    u
}

/// `V = Bᵀ d B` for the tile rows `r0..r0 + rows` (image-major) of every input channel:
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. Row by row over whole tile rows,
/// so every step is a contiguous vector operation: the four input rows combine into `Bᵀd`, whose even
/// and odd columns then give the column transform of all tiles at once.
fn transform_input<T: Real>(g: &Geom, x: &[T], r0: usize, rows: usize, v: &mut [T]) {
    let (th, tw) = tiles(g);
    let (hw, wp, len) = (g.h * g.w, 2 * tw + 2, rows * tw);
    v[..g.cin * 16 * len].par_chunks_mut(16 * len).enumerate().for_each(|(ci, vc)| {
        // d: 4 zero-padded input rows; s: Bᵀd split into even / odd columns (tw + 1 each)
        let mut d = vec![T::default(); 4 * wp];
        let mut s = vec![T::default(); 8 * (tw + 1)];
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
            for (k, (se, so)) in s.chunks_mut(2 * (tw + 1)).map(|c| c.split_at_mut(tw + 1)).enumerate() {
                for c in 0..tw + 1 {
                    let (e, o) = (2 * c, 2 * c + 1);
                    let (ve, vo) = match k {
                        0 => (d0[e] - d2[e], d0[o] - d2[o]),
                        1 => (d1[e] + d2[e], d1[o] + d2[o]),
                        2 => (d2[e] - d1[e], d2[o] - d1[o]),
                        _ => (d1[e] - d3[e], d1[o] - d3[o]),
                    };
                    se[c] = ve;
                    so[c] = vo;
                }
            }
            let base = rr * tw;
            for k in 0..4 {
                let (se, so) = s[k * 2 * (tw + 1)..(k + 1) * 2 * (tw + 1)].split_at(tw + 1);
                let out = |j: usize| (4 * k + j) * len + base;
                for t in 0..tw {
                    vc[out(0) + t] = se[t] - se[t + 1];
                }
                for t in 0..tw {
                    vc[out(1) + t] = so[t] + se[t + 1];
                }
                for t in 0..tw {
                    vc[out(2) + t] = se[t + 1] - so[t];
                }
                for t in 0..tw {
                    vc[out(3) + t] = so[t] - so[t + 1];
                }
            }
        }
    });
}

/// `y = Aᵀ M A + b` for the tile rows `r0..r0 + rows`, cropped at odd edges:
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`. `y` holds the images the chunk touches, from image `img0` on.
fn transform_output<T: Real>(g: &Geom, m: &[T], b: &[T], r0: usize, rows: usize, img0: usize, y: &mut [T]) {
    let (th, tw) = tiles(g);
    let (ho, wo, len) = (g.ho(), g.wo(), rows * tw);
    y.par_chunks_mut(ho * wo).enumerate().for_each(|(plane_index, plane)| {
        let (img, co) = (img0 + plane_index / g.cout, plane_index % g.cout);
        let mc = &m[co * 16 * len..][..16 * len];
        let bias = b[co];
        // s[i][j]: row i of AᵀM, column j, for every tile of the row
        let mut s = vec![T::default(); 8 * tw];
        // this image's tile rows within the chunk
        let first = (img * th).max(r0);
        let last = ((img + 1) * th).min(r0 + rows);
        for r in first..last {
            let (base, ty) = ((r - r0) * tw, r - img * th);
            for j in 0..4 {
                let row = |i: usize| &mc[(4 * i + j) * len + base..][..tw];
                let (m0, m1, m2, m3) = (row(0), row(1), row(2), row(3));
                let (s0, s1) = s.split_at_mut(4 * tw);
                for t in 0..tw {
                    s0[j * tw + t] = m0[t] + m1[t] + m2[t];
                    s1[j * tw + t] = m1[t] - m2[t] - m3[t];
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
                for (t, pair) in out[..2 * full].chunks_exact_mut(2).enumerate() {
                    pair[0] = a[t] + bb[t] + c[t] + bias;
                    pair[1] = bb[t] - c[t] - e[t] + bias;
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
    // chunks of whole tile rows (image-major), at least one
    let total_rows = g.n * th;
    let rows_per_chunk = (chunk_bytes / std::mem::size_of::<T>() / (16 * (g.cin + g.cout) * tw)).clamp(1, total_rows);
    let chunk = rows_per_chunk * tw;
    let u = transform_weights(g, w);
    let mut y = vec![T::default(); g.n * g.cout * plane];
    T::with_scratch(16 * (g.cin + g.cout) * chunk, |buf| {
        let (v, m) = buf.split_at_mut(16 * g.cin * chunk);
        for r0 in (0..total_rows).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(total_rows - r0);
            let len = rows * tw;
            transform_input(g, x, r0, rows, v);
            for xi in 0..16 {
                let lhs = Mat { ptr: u[xi * g.cin..].as_ptr(), rs: (16 * g.cin) as isize, cs: 1 };
                let rhs = Mat { ptr: v[xi * len..].as_ptr(), rs: (16 * len) as isize, cs: 1 };
                // SAFETY: U is [cout][16][cin], V [cin][16][len], M [cout][16][len]: every view stays in its buffer
                unsafe { gemm(g.cout, len, g.cin, m[xi * len..].as_mut_ptr(), 16 * len, 1, false, lhs, rhs) };
            }
            let (img0, img1) = (r0 / th, (r0 + rows).div_ceil(th));
            let ys = &mut y[img0 * g.cout * plane..img1 * g.cout * plane];
            transform_output(g, m, b, r0, rows, img0, ys);
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_s1;
    use gen_runtime::Rng;

    fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    /// Against the shifted-tap direct product, in f64 (the algebra) and f32 (the rounding), over odd
    /// sizes, every padding, and chunks that split images.
    #[test]
    fn winograd_equals_the_direct_convolution() {
        let mut rng = Rng::new(7);
        // (n, cin, h, w, cout, pad, chunk bytes)
        let cases = [
            (2, 16, 8, 8, 16, 1, CHUNK_BYTES),
            (3, 17, 7, 5, 18, 1, CHUNK_BYTES),
            (2, 16, 9, 6, 20, 0, CHUNK_BYTES),
            (1, 20, 5, 7, 16, 2, CHUNK_BYTES),
            (3, 16, 7, 7, 16, 1, 16 * 32 * 8 * 4 * 3), // 3 tile rows per chunk: chunks straddle images
            (2, 24, 3, 3, 16, 1, 1),                   // one tile row per chunk
        ];
        for (n, cin, h, w, cout, pad, bytes) in cases {
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
    fn small_channel_counts_and_other_kernels_keep_the_direct_path() {
        let g = Geom { n: 1, cin: 3, h: 8, w: 8, cout: 64, kh: 3, kw: 3, stride: 1, pad_h: 1, pad_w: 1 };
        assert!(!applies(&g));
        assert!(!applies(&Geom { cin: 64, stride: 2, ..g }));
        assert!(!applies(&Geom { cin: 64, kh: 1, kw: 1, pad_h: 0, pad_w: 0, ..g }));
        assert!(applies(&Geom { cin: 64, ..g }));
    }
}
