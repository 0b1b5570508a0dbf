//! One GEMM entry point for the CPU kernels: `dst = (accumulate ? dst : 0) + lhs · rhs`, with arbitrary
//! row/column strides (so transposes are free). Backed by the `gemm` crate (what Candle uses), with
//! rayon parallelism over all threads. With the `openblas` feature, `sgemm_openblas` calls the system
//! OpenBLAS (`cblas_sgemm`) for the measurement in `gen bench` (see BENCHMARKS.md for the choice).

use gemm::Parallelism;

/// A strided matrix view: element (r, c) is at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub struct Mat<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

impl<T> Mat<T> {
    /// Row-major with `cols` elements per row.
    pub fn row_major(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` elements per row.
    pub fn transposed(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: 1, cs: cols as isize }
    }
}

pub fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[m×n] (row stride dst_rs, column stride dst_cs) (+)= lhs[m×k] · rhs[k×n]`.
///
/// # Safety
/// Every view must address valid memory for its shape; `dst` must not alias `lhs`/`rhs`.
pub unsafe fn gemm<T: 'static + super::real::Real>(
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
    #[link(name = "openblas")]
    extern "C" {
        pub fn cblas_sgemm(
            layout: i32,
            transa: i32,
            transb: i32,
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
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous, through OpenBLAS.
#[cfg(feature = "openblas")]
pub fn sgemm_openblas(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    // SAFETY: the slices cover the dense row-major matrices the call reads and writes
    unsafe {
        cblas::cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m as i32, n as i32, k as i32, 1.0, a.as_ptr(), k as i32, b.as_ptr(), n as i32, 0.0, c.as_mut_ptr(), n as i32)
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous, through the `gemm` crate.
pub fn sgemm_crate(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: as above
    unsafe { gemm(m, n, k, c.as_mut_ptr(), n, 1, false, Mat::row_major(a, k), Mat::row_major(b, n)) }
}
