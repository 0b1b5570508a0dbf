//! One GEMM entry point for the CPU kernels: `dst = (accumulate ? dst : 0) + lhs · rhs`, with arbitrary
//! row/column strides (so transposes are free). Backed by the `gemm` crate (what Candle uses), with
//! rayon parallelism over all threads.

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
