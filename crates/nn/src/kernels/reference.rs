//! Straightforward compositions of Candle ops: the reference our fused kernels are tested against, and
//! the path on devices without a fused kernel. Only ops with correct gradients are used (CANDLE-NOTES §2).

use candle_core::{DType, Result, Tensor, D};

#[cfg(test)]
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_hw(x, w, b, stride, (padding, padding))
}

/// Candle's conv2d pads symmetrically by one amount; other paddings are explicit zero pads first.
pub fn conv2d_hw(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    (ph, pw): (usize, usize),
) -> Result<Tensor> {
    let y = if ph == pw {
        x.conv2d(w, ph, stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(w, 0, stride, 1, 1)?
    };
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

pub fn group_norm(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let dtype = x.dtype();
    let xg = x.to_dtype(DType::F32)?.reshape((n, groups, ()))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims.as_slice())?;
    let mut shape = vec![1usize; dims.len()];
    shape[1] = c;
    let y = xn
        .broadcast_mul(&w.to_dtype(DType::F32)?.reshape(shape.as_slice())?)?
        .broadcast_add(&b.to_dtype(DType::F32)?.reshape(shape.as_slice())?)?;
    let y = if silu { candle_nn::ops::silu(&y)? } else { y };
    y.to_dtype(dtype)
}

/// Causal softmax over scores [.., Tq, Tk]: keys j > i + offset of query i are set to −∞ before
/// `softmax` (whose exp gives exactly 0 there), so they get weight 0 and gradient 0.
pub fn softmax_last_dim_causal(x: &Tensor, offset: usize) -> Result<Tensor> {
    let (tq, tk) = match x.dims() {
        [.., tq, tk] => (*tq, *tk),
        d => candle_core::bail!("causal softmax: scores must be [.., Tq, Tk], got {d:?}"),
    };
    let visible: Vec<u8> = (0..tq).flat_map(|i| (0..tk).map(move |j| u8::from(j <= i + offset))).collect();
    let visible = Tensor::from_vec(visible, (tq, tk), x.device())?.broadcast_as(x.shape())?;
    let hidden = Tensor::new(f32::NEG_INFINITY, x.device())?.to_dtype(x.dtype())?.broadcast_as(x.shape())?;
    candle_nn::ops::softmax(&visible.where_cond(x, &hidden)?, D::Minus1)
}

/// `F.avg_pool2d(x, kernel, stride, pad, count_include_pad=False)` from Candle ops: the sum of the
/// k×k shifted views of the zero-padded input, subsampled by `stride`, over the same sum of ones.
pub fn avg_pool2d_exclude_pad(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h + 2 * pad < kernel || w + 2 * pad < kernel || stride == 0 || pad >= kernel {
        candle_core::bail!("avg_pool2d: kernel {kernel} / padding {pad} do not fit a {h}×{w} input");
    }
    let (ho, wo) = ((h + 2 * pad - kernel) / stride + 1, (w + 2 * pad - kernel) / stride + 1);
    let window_sum = |t: &Tensor| -> Result<Tensor> {
        let p = t.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let rows = Tensor::arange_step(0u32, (ho * stride) as u32, stride as u32, t.device())?;
        let cols = Tensor::arange_step(0u32, (wo * stride) as u32, stride as u32, t.device())?;
        let mut sum: Option<Tensor> = None;
        for dy in 0..kernel {
            for dx in 0..kernel {
                let v = p.narrow(2, dy, (ho - 1) * stride + 1)?.narrow(3, dx, (wo - 1) * stride + 1)?;
                let v = v.contiguous()?.index_select(&rows, 2)?.contiguous()?.index_select(&cols, 3)?;
                sum = Some(match sum {
                    None => v,
                    Some(acc) => (acc + v)?,
                });
            }
        }
        sum.ok_or_else(|| candle_core::Error::Msg("avg_pool2d: empty kernel".into()))
    };
    let count = window_sum(&Tensor::ones((1, 1, h, w), x.dtype(), x.device())?)?;
    window_sum(x)?.broadcast_div(&count)
}

/// `mean_i CE(h_i · Wᵀ, t_i)` with label smoothing ε, from Candle ops (the logits materialised).
pub(crate) fn linear_cross_entropy(h: &Tensor, w: &Tensor, targets: &[u32], eps: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&h.matmul(&w.t()?)?, candle_core::D::Minus1)?;
    let t = Tensor::from_slice(targets, (targets.len(), 1), h.device())?;
    let nll = logp.gather(&t, 1)?.squeeze(1)?.neg()?;
    if eps == 0.0 {
        return nll.mean_all();
    }
    let uniform = logp.mean(candle_core::D::Minus1)?.neg()?;
    ((nll * (1.0 - eps))? + (uniform * eps)?)?.mean_all()
}
