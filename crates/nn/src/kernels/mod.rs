//! The op entry points every model calls. Each dispatches to our fused CPU kernel where one exists and
//! to a composition of Candle ops elsewhere (CUDA, half precision), so every device gets correct values
//! and gradients.

/// The contiguous slice a layout addresses; our kernels read dense operands.
pub(crate) fn dense<'a, T>(s: &'a [T], l: &candle_core::Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{op}: operands must be contiguous"),
    }
}

/// Runs `$body` on the operands as `&[f32]` or `&[f64]` slices (all the same dtype) and wraps the
/// returned `Vec` in the matching `CpuStorage`.
macro_rules! dispatch {
    ($op:expr, $(($s:expr, $l:expr)),+ => |$($a:ident),+| $body:expr) => {
        match ($($s,)+) {
            ($(candle_core::CpuStorage::F32($a),)+) => {
                $(let $a = $crate::kernels::dense($a, $l, $op)?;)+
                candle_core::CpuStorage::F32($body)
            }
            ($(candle_core::CpuStorage::F64($a),)+) => {
                $(let $a = $crate::kernels::dense($a, $l, $op)?;)+
                candle_core::CpuStorage::F64($body)
            }
            #[allow(unreachable_patterns)]
            _ => candle_core::bail!("{}: operands must all be f32 or all f64", $op),
        }
    };
}

pub(crate) mod avg_pool;
pub(crate) mod conv;
pub(crate) mod conv_s1;
pub(crate) mod gelu;
/// Only the two dense GEMMs `gen bench` times are public; the strided GEMM the kernels use is not.
pub mod gemm;
pub(crate) mod group_norm;
pub(crate) mod linear;
pub(crate) mod linear_ce;
pub(crate) mod modulate;
pub(crate) mod pool;
pub(crate) mod real;
pub(crate) mod reference;
pub(crate) mod rows;
pub(crate) mod simd;
pub(crate) mod skinny;
pub(crate) mod sum_product;
#[cfg(test)]
mod tests;
pub(crate) mod winograd;

use candle_core::{Result, Tensor};

/// Whether the CPU has AVX-512F (detected once): the `gemm` crate's `x86-v4` kernels, `skinny`'s
/// streaming product and the tokenizer's nearest-code search use it.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub use avg_pool::avg_pool2d_exclude_pad;
pub use gelu::{gelu, Gelu};
pub use linear::linear;
pub use linear_ce::linear_cross_entropy;
pub use modulate::{gated_add, modulate};
pub use pool::max_pool2d;
pub use rows::{layer_norm, softmax_last_dim, softmax_last_dim_causal};
pub use sum_product::sum_product;

/// `conv2d(x, w) + b` with symmetric zero padding.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_hw(x, w, b, stride, (padding, padding))
}

/// `conv2d` with separate vertical and horizontal padding (Inception's 1×7 / 7×1 convs).
pub fn conv2d_hw(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: (usize, usize)) -> Result<Tensor> {
    match conv::try_fused(x, w, b, stride, pad, false)? {
        Some(y) => Ok(y),
        None => reference::conv2d_hw(x, w, b, stride, pad),
    }
}

/// `relu(conv2d_hw(x, w, b))` in one pass where the fused kernel applies.
pub fn conv2d_hw_relu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    pad: (usize, usize),
) -> Result<Tensor> {
    match conv::try_fused(x, w, b, stride, pad, true)? {
        Some(y) => Ok(y),
        None => reference::conv2d_hw(x, w, b, stride, pad)?.relu(),
    }
}

/// GroupNorm with affine `weight`/`bias` [C], optionally followed by SiLU.
pub fn group_norm(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
    match group_norm::try_fused(x, w, b, groups, eps, silu)? {
        Some(y) => Ok(y),
        None => reference::group_norm(x, w, b, groups, eps, silu),
    }
}
