//! `x·Wᵀ` for a few rows of `x` (decoding: one new token per sequence), with `W` stored [n, k] as
//! `nn.Linear` keeps it. A GEMM library packs `W` into panels on every call, which at a handful of rows
//! costs more than the product (Candle's `gemm` crate spent 42% of a batch-16 GPT step in `pack_lhs`);
//! here each tile of `W` rows is read once, straight from the weights, and dotted with every row of
//! `x` held in cache. Half-precision weights are widened to f32 as they are loaded, so f16/bf16 sampling
//! streams half the bytes instead of running Candle's half GEMM. Accumulation is in f32. Runs where the
//! CPU has AVX-512F; elsewhere `x_wt` is Candle's `matmul`.
//!
//! The backward pass is Candle's `matmul`, so gradients stay correct wherever the op is used.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Most rows of `x` the op takes: beyond this a packed GEMM reuses each weight tile enough to win.
pub const MAX_ROWS: usize = 32;

/// Fewest `W` rows per parallel task.
const MIN_ROWS_PER_TASK: usize = 64;

/// `W` rows per parallel task: about four tasks per thread (enough to balance the threads), at least
/// [`MIN_ROWS_PER_TASK`], a multiple of 8.
fn rows_per_task(n: usize) -> usize {
    let per = n.div_ceil(4 * rayon::current_num_threads().max(1));
    per.max(MIN_ROWS_PER_TASK).next_multiple_of(8)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// A weight element type, widened to 16 f32 lanes as it is loaded.
    pub trait Lanes: Copy + Default + Send + Sync + 'static {
        /// # Safety
        /// AVX-512F is available and `p` addresses 16 elements.
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }

    impl Lanes for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
    }

    impl Lanes for bf16 {
        /// bf16 is the top half of an f32: zero-extend and shift.
        #[inline(always)]
        unsafe fn load16(p: *const bf16) -> __m512 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
        }
    }

    /// `out[i][j] += x_i · w_j` over `len` columns: `M` rows of `x` (pointers to the first column of
    /// each) by the `N` consecutive rows of `W` starting at `w0`, 16 lanes at a time; the ragged end goes
    /// through a zero-padded copy.
    ///
    /// # Safety
    /// AVX-512F is available, every `xs` pointer addresses `len` elements and `w0` addresses `N·len`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn micro<T: Lanes, const M: usize, const N: usize>(
        xs: [*const f32; M],
        w0: *const T,
        len: usize,
        out: &mut [[f32; N]; M],
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let mut w = [_mm512_setzero_ps(); N];
        let ws: [*const T; N] = std::array::from_fn(|j| w0.add(j * len));
        let mut c = 0;
        // The next tile (the N rows after these, one contiguous block) is prefetched at the pace this
        // one is read, a cache line per row per line of columns: one sequential stream the memory
        // system sees early. The hardware prefetcher alone left a core at ~20 GB/s on half-precision
        // rows; a prefetch per row 1 KiB ahead, issued every 16 columns (a prefetch is a load uop),
        // left half-precision rows compute-bound.
        let line = 64 / std::mem::size_of::<T>();
        while c + 16 <= len {
            if c % line == 0 {
                for j in 0..N {
                    _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(N * len + c * N + j * line) as *const i8);
                }
            }
            for j in 0..N {
                w[j] = T::load16(ws[j].add(c));
            }
            for i in 0..M {
                let x = _mm512_loadu_ps(xs[i].add(c));
                for j in 0..N {
                    acc[i][j] = _mm512_fmadd_ps(x, w[j], acc[i][j]);
                }
            }
            c += 16;
        }
        if c < len {
            let rest = len - c;
            for j in 0..N {
                let mut pad = [T::default(); 16];
                std::ptr::copy_nonoverlapping(ws[j].add(c), pad.as_mut_ptr(), rest);
                w[j] = T::load16(pad.as_ptr());
            }
            for i in 0..M {
                let mut pad = [0f32; 16];
                std::ptr::copy_nonoverlapping(xs[i].add(c), pad.as_mut_ptr(), rest);
                let x = _mm512_loadu_ps(pad.as_ptr());
                for j in 0..N {
                    acc[i][j] = _mm512_fmadd_ps(x, w[j], acc[i][j]);
                }
            }
        }
        for i in 0..M {
            for j in 0..N {
                out[i][j] += _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use avx512::Lanes as Weight;
/// Without x86-64 the kernel never runs (`avx512()` is false); the trait only keeps the code typed.
#[cfg(not(target_arch = "x86_64"))]
trait Weight: Copy + Default + Send + Sync + 'static {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Copy + Default + Send + Sync + 'static> Weight for T {}

/// `N` weight rows starting at `r` against every row of `x` ([m, k]), `R` rows of `x` at a time:
/// `out[i][j] = x_i · w_{r+j}`.
fn rows<T: Weight, const R: usize, const N: usize>(x: &[f32], w: &[T], k: usize, r: usize, out: &mut [[f32; N]]) {
    let wp = w[r * k..(r + N) * k].as_ptr();
    let xp = |i: usize| x[i * k..(i + 1) * k].as_ptr();
    let m = out.len();
    let mut i = 0;
    while i < m {
        let take = (m - i).min(R);
        let mut acc = [[0f32; N]; R];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers are gated on `applies` (AVX-512F); each x pointer addresses k elements and `wp`
        // N·k (the slices above).
        unsafe {
            match take {
                4 => avx512::micro::<T, 4, N>(std::array::from_fn(|a| xp(i + a)), wp, k, first(&mut acc)),
                3 => avx512::micro::<T, 3, N>(std::array::from_fn(|a| xp(i + a)), wp, k, first(&mut acc)),
                2 => avx512::micro::<T, 2, N>(std::array::from_fn(|a| xp(i + a)), wp, k, first(&mut acc)),
                _ => avx512::micro::<T, 1, N>([xp(i)], wp, k, first(&mut acc)),
            }
        }
        out[i..i + take].copy_from_slice(&acc[..take]);
        i += take;
    }
}

/// The first `P` rows of a tile's accumulators.
fn first<const P: usize, const R: usize, const N: usize>(acc: &mut [[f32; N]; R]) -> &mut [[f32; N]; P] {
    (&mut acc[..P]).try_into().expect("P ≤ R")
}

/// `x [m, k] · wᵀ` with `w [n, k]`, as `[m, n]` f32, in tiles of up to 4 × 4 (x rows × W rows). At one
/// row, 4 W rows per tile streamed the GPT-LC's weights 8–10% faster than 8 (f16 40 vs 36 GB/s, f32
/// 37 vs 34: fewer concurrent streams), and 2 rows were no faster than 4.
fn product<T: Weight>(x: &[f32], w: &[T], m: usize, k: usize, n: usize) -> Vec<f32> {
    tiled::<T, 4, 4>(x, w, m, k, n)
}

fn tiled<T: Weight, const R: usize, const N: usize>(x: &[f32], w: &[T], m: usize, k: usize, n: usize) -> Vec<f32> {
    // tasks fill [n, m] (contiguous per task); transposed to [m, n] at the end (m·n is small)
    let mut t = vec![0f32; n * m];
    let per = rows_per_task(n);
    t.par_chunks_mut(per * m).enumerate().for_each(|(task, chunk)| {
        let r0 = task * per;
        let count = chunk.len() / m;
        let mut tile = vec![[0f32; N]; m];
        let mut j = 0;
        while j + N <= count {
            rows::<T, R, N>(x, w, k, r0 + j, &mut tile);
            for (i, s) in tile.iter().enumerate() {
                for a in 0..N {
                    chunk[(j + a) * m + i] = s[a];
                }
            }
            j += N;
        }
        let mut one = vec![[0f32; 1]; m];
        while j < count {
            rows::<T, R, 1>(x, w, k, r0 + j, &mut one);
            for (i, s) in one.iter().enumerate() {
                chunk[j * m + i] = s[0];
            }
            j += 1;
        }
    });
    if m == 1 {
        return t;
    }
    let mut out = vec![0f32; m * n];
    for (r, col) in t.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            out[i * n + r] = v;
        }
    }
    out
}

struct XWt;

impl CustomOp2 for XWt {
    fn name(&self) -> &'static str {
        "gen-skinny-xwt"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (n, kw) = lw.shape().dims2()?;
        if k != kw {
            candle_core::bail!("x·Wᵀ: x has {k} columns, W has {kw}");
        }
        let x = match sx {
            CpuStorage::F32(x) => Cow::Borrowed(super::dense(x, lx, "x·Wᵀ")?),
            CpuStorage::F16(x) => Cow::Owned(super::dense(x, lx, "x·Wᵀ")?.iter().map(|v| v.to_f32()).collect()),
            CpuStorage::BF16(x) => Cow::Owned(super::dense(x, lx, "x·Wᵀ")?.iter().map(|v| v.to_f32()).collect()),
            _ => candle_core::bail!("x·Wᵀ: x must be f32, f16 or bf16"),
        };
        let y = match sw {
            CpuStorage::F32(w) => product(&x, super::dense(w, lw, "x·Wᵀ")?, m, k, n),
            CpuStorage::F16(w) => product(&x, super::dense(w, lw, "x·Wᵀ")?, m, k, n),
            CpuStorage::BF16(w) => product(&x, super::dense(w, lw, "x·Wᵀ")?, m, k, n),
            _ => candle_core::bail!("x·Wᵀ: W must be f32, f16 or bf16"),
        };
        // the output in x's dtype (`applies` admits f32 x with any of the three weights, else equal dtypes)
        let out = match sx {
            CpuStorage::F16(_) => CpuStorage::F16(y.into_iter().map(f16::from_f32).collect()),
            CpuStorage::BF16(_) => CpuStorage::BF16(y.into_iter().map(bf16::from_f32).collect()),
            _ => CpuStorage::F32(y),
        };
        Ok((out, Shape::from((m, n))))
    }

    /// y = x·Wᵀ: ∂x = ∂y·W, ∂W = ∂yᵀ·x (each in its operand's dtype).
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = g.matmul(&w.to_dtype(g.dtype())?)?.to_dtype(x.dtype())?;
        let gw = g.t()?.matmul(&x.to_dtype(g.dtype())?)?.to_dtype(w.dtype())?;
        Ok((Some(gx), Some(gw)))
    }
}

/// Whether [`x_wt`] takes `x [rows, k]`·`wᵀ` on the streaming kernel rather than a packed GEMM.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    use candle_core::DType::{BF16, F16, F32};
    super::avx512()
        && x.device().is_cpu()
        && matches!((x.dtype(), w.dtype()), (F32, F32 | F16 | BF16) | (F16, F16) | (BF16, BF16))
        && x.dims().len() == 2
        && x.dims()[0] <= MAX_ROWS
}

/// `x [m, k] · wᵀ` for `w [n, k]`, in x's dtype, on the streaming kernel; only where [`applies`]
/// (`kernels::linear`, the one entry point for x·Wᵀ, chooses between this and the GEMM).
pub fn x_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !applies(x, w) {
        candle_core::bail!(
            "skinny x·Wᵀ: x {:?} {:?} against w {:?} {:?} is not a streaming shape (use kernels::linear)",
            x.dims(),
            x.dtype(),
            w.dims(),
            w.dtype()
        );
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, XWt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use gen_runtime::Rng;

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.to_dtype(DType::F64).unwrap();
        let b = b.to_dtype(DType::F64).unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12);
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale
    }

    #[test]
    fn streaming_product_matches_matmul_over_ragged_shapes_and_dtypes() {
        let mut r = Rng::new(3);
        let dev = Device::Cpu;
        // rows around the 4-row tile, k around the 16 lanes and the 512 chunk, n around the 4-row tile and
        // the 64-row task
        for (m, k, n) in [(1, 1, 1), (3, 17, 5), (4, 64, 67), (5, 1030, 130), (16, 96, 9), (32, 33, 64)] {
            let x = r.randn((m, k), 1.0, &dev).unwrap();
            let w = r.randn((n, k), 1.0, &dev).unwrap();
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-3), (DType::BF16, 1e-2)] {
                let (xd, wd) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
                assert!(applies(&xd, &wd));
                let got = x_wt(&xd, &wd).unwrap();
                assert_eq!(got.dtype(), dtype);
                // the reference: the same (rounded) operands multiplied in f32
                let want =
                    xd.to_dtype(DType::F32).unwrap().matmul(&wd.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
                let e = max_rel(&got, &want);
                assert!(e < tol, "{m}×{k}·({n}×{k})ᵀ {dtype:?}: relative error {e}");
            }
        }
    }

    #[test]
    fn f32_activations_against_half_weights_give_f32() {
        let mut r = Rng::new(5);
        let dev = Device::Cpu;
        // through the one entry point: the streaming kernel up to MAX_ROWS, the GEMM beyond
        for (m, k, n) in [(1, 40, 9), (6, 1030, 67), (MAX_ROWS + 1, 24, 5)] {
            let x = r.randn((m, k), 1.0, &dev).unwrap();
            for dtype in [DType::F16, DType::BF16] {
                let w = r.randn((n, k), 1.0, &dev).unwrap().to_dtype(dtype).unwrap();
                let got = crate::kernels::linear(&x, &w, None).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                let want = x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
                let e = max_rel(&got, &want);
                assert!(e < 1e-5, "{m}×{k} f32 · ({n}×{k} {dtype:?})ᵀ: {e}");
            }
        }
    }

    #[test]
    fn gradients_through_the_op_equal_matmuls() {
        let mut r = Rng::new(4);
        let dev = Device::Cpu;
        let x = Var::from_tensor(&r.randn((3, 20), 1.0, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&r.randn((7, 20), 1.0, &dev).unwrap()).unwrap();
        let probe = r.randn((3, 7), 1.0, &dev).unwrap();
        let grads = |y: Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            (g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
        };
        let (gx, gw) = grads(x_wt(&x, &w).unwrap());
        let (rx, rw) = grads(x.matmul(&w.t().unwrap()).unwrap());
        assert!(max_rel(&gx, &rx) < 1e-6 && max_rel(&gw, &rw) < 1e-6);
    }

    #[test]
    fn more_rows_than_the_limit_or_f64_are_not_streamed() {
        let dev = Device::Cpu;
        let w = Tensor::ones((4, 8), DType::F32, &dev).unwrap();
        let many = Tensor::ones((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        assert!(!applies(&many, &w));
        assert!(!applies(&Tensor::ones((2, 8), DType::F64, &dev).unwrap(), &w.to_dtype(DType::F64).unwrap()));
        let err = x_wt(&many, &w).unwrap_err().to_string();
        assert!(err.contains("not a streaming shape"), "{err}");
        // the entry point takes them to the GEMM
        let y = crate::kernels::linear(&many, &w, None).unwrap();
        assert_eq!(y.dims(), &[MAX_ROWS + 1, 4]);
        assert_eq!(y.to_vec2::<f32>().unwrap()[0], vec![8.0; 4]);
    }
}
