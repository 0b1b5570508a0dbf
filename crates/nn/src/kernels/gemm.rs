//! One GEMM entry point for the CPU kernels: `dst = (accumulate ? dst : 0) + lhs · rhs`, with arbitrary
//! row/column strides (so transposes are free).
//!
//! The pure-Rust `gemm` crate (what Candle uses), built with its AVX-512 (`x86-v4`) kernels, runs on the
//! rayon threads. With the `openblas` feature (the default of the `gen` package; `apt-get install
//! libopenblas-dev`) on a CPU without AVX-512, or with `GEN_GEMM=openblas`, calls whose operands have a
//! unit stride on one side go to the system OpenBLAS (`cblas_sgemm` / `cblas_dgemm`) instead, which is
//! the faster of the two where the crate has only AVX2 kernels (BENCHMARKS.md).

use gemm::Parallelism;

/// A strided matrix view: element (r, c) is at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub(crate) ptr: *const T,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl<T> Mat<T> {
    /// Row-major with `cols` elements per row.
    pub(crate) fn row_major(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` elements per row.
    pub(crate) fn transposed(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: 1, cs: cols as isize }
    }
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[m×n] (row stride dst_rs, column stride dst_cs) (+)= lhs[m×k] · rhs[k×n]`.
///
/// # Safety
/// Every view must address valid memory for its shape; `dst` must not alias `lhs`/`rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<T: 'static + super::real::Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(feature = "openblas")]
    if cblas::try_gemm(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs) {
        return;
    }
    rust_gemm(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs)
}

/// The pure-Rust path: the `gemm` crate.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn rust_gemm<T: 'static + super::real::Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        T::from_f64(1.0),
        T::from_f64(1.0),
        false,
        false,
        false,
        parallelism(),
    );
}

#[cfg(feature = "openblas")]
mod cblas {
    use std::any::TypeId;
    use std::sync::OnceLock;

    use super::Mat;

    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    #[link(name = "openblas")]
    extern "C" {
        pub fn cblas_sgemm(
            layout: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        pub fn cblas_dgemm(
            layout: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f64,
            a: *const f64,
            lda: i32,
            b: *const f64,
            ldb: i32,
            beta: f64,
            c: *mut f64,
            ldc: i32,
        );
        fn openblas_set_num_threads(n: i32);
        fn openblas_get_corename() -> *const std::ffi::c_char;
    }

    /// The kernel family OpenBLAS runs ("Haswell", "SkylakeX", "Cooperlake", …); it follows the CPU
    /// unless `OPENBLAS_CORETYPE` pins it.
    pub fn core_name() -> String {
        // SAFETY: returns a pointer to a static NUL-terminated string
        unsafe { std::ffi::CStr::from_ptr(openblas_get_corename()) }.to_string_lossy().into_owned()
    }

    /// Runs `f` with OpenBLAS single-threaded (concurrent single-threaded calls from several threads
    /// run in parallel; a multi-threaded OpenBLAS 0.3.21 serialises them). Nested and concurrent scopes
    /// share one count; the last to leave gives OpenBLAS its rayon-sized pool back.
    pub fn serial<R>(f: impl FnOnce() -> R) -> R {
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                let mut n = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
                *n -= 1;
                if *n == 0 && enabled() {
                    // SAFETY: plain setter of the library's thread count
                    unsafe { openblas_set_num_threads(rayon::current_num_threads() as i32) };
                }
            }
        }
        {
            let mut n = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            if *n == 0 && enabled() {
                // SAFETY: as above
                unsafe { openblas_set_num_threads(1) };
            }
            *n += 1;
        }
        let _leave = Leave;
        f()
    }
    static SERIAL: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

    /// Whether products go to OpenBLAS: `GEN_GEMM=openblas` or `GEN_GEMM=rust` decide; unset, OpenBLAS
    /// only on CPUs without AVX-512F, where the `gemm` crate has only its AVX2 kernels and OpenBLAS was
    /// faster (with AVX-512 the crate's `x86-v4` kernels beat OpenBLAS's Haswell ones 1.5–3×,
    /// BENCHMARKS.md). Its own thread pool gets as many threads as rayon (so `--threads` holds for both).
    pub(super) fn enabled() -> bool {
        *ENABLED.get_or_init(|| {
            let on = match std::env::var("GEN_GEMM").as_deref() {
                Ok("openblas") => true,
                Ok("rust") => false,
                _ => !super::super::avx512(),
            };
            if on {
                // SAFETY: plain setter of the library's thread count
                unsafe { openblas_set_num_threads(rayon::current_num_threads() as i32) };
            }
            on
        })
    }
    static ENABLED: OnceLock<bool> = OnceLock::new();

    /// (transpose flag, leading dimension) of a view with `cols` columns, if BLAS can read it.
    fn layout<T>(v: &Mat<T>, rows: usize, cols: usize) -> Option<(i32, i32)> {
        if v.cs == 1 && v.rs >= cols.max(1) as isize {
            Some((NO_TRANS, v.rs as i32))
        } else if v.rs == 1 && v.cs >= rows.max(1) as isize {
            Some((TRANS, v.cs as i32))
        } else {
            None
        }
    }

    /// Runs the product through OpenBLAS when the operands allow it; false leaves it to the caller.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn try_gemm<T: 'static>(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut T,
        dst_rs: usize,
        dst_cs: usize,
        accumulate: bool,
        lhs: Mat<T>,
        rhs: Mat<T>,
    ) -> bool {
        if dst_cs != 1 || dst_rs < n.max(1) || k == 0 || !enabled() {
            return false;
        }
        let (Some((ta, lda)), Some((tb, ldb))) = (layout(&lhs, m, k), layout(&rhs, k, n)) else {
            return false;
        };
        let beta = if accumulate { 1.0 } else { 0.0 };
        let (m, n, k, ldc) = (m as i32, n as i32, k as i32, dst_rs as i32);
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            cblas_sgemm(
                ROW_MAJOR,
                ta,
                tb,
                m,
                n,
                k,
                1.0,
                lhs.ptr as _,
                lda,
                rhs.ptr as _,
                ldb,
                beta as f32,
                dst as _,
                ldc,
            );
        } else if TypeId::of::<T>() == TypeId::of::<f64>() {
            cblas_dgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, lhs.ptr as _, lda, rhs.ptr as _, ldb, beta, dst as _, ldc);
        } else {
            return false;
        }
        true
    }
}

/// Runs `f` with the GEMM calls made on each thread single-threaded: for callers that already spread
/// independent work (images of a batch) over the rayon threads.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "openblas")]
    return cblas::serial(f);
    #[cfg(not(feature = "openblas"))]
    f()
}

/// `c[m×n] = a[m×k] · b[n×k]ᵀ`, `a` and `b` row-major and contiguous (one distance block of k-means:
/// points against centres). OpenBLAS where installed, else the `gemm` crate.
pub fn matmul_abt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    // SAFETY: the slices cover the dense matrices the call reads and writes; c does not alias a or b
    unsafe { gemm(m, n, k, c.as_mut_ptr(), n, 1, false, Mat::row_major(a, k), Mat::transposed(b, k)) }
}

/// What products run on: `OpenBLAS <core>` or `gemm crate` (for benchmark headers).
pub fn backend() -> String {
    #[cfg(feature = "openblas")]
    if cblas::enabled() {
        return format!("OpenBLAS {}", cblas::core_name());
    }
    if super::avx512() {
        "gemm crate (AVX-512)".into()
    } else {
        "gemm crate".into()
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous, through OpenBLAS.
#[cfg(feature = "openblas")]
pub fn sgemm_openblas(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the slices cover the dense row-major matrices the call reads and writes
    unsafe {
        cblas::cblas_sgemm(
            101,
            111,
            111,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            k as i32,
            b.as_ptr(),
            n as i32,
            0.0,
            c.as_mut_ptr(),
            n as i32,
        )
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous, through the `gemm` crate.
pub fn sgemm_crate(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: as above
    unsafe { rust_gemm(m, n, k, c.as_mut_ptr(), n, 1, false, Mat::row_major(a, k), Mat::row_major(b, n)) }
}
