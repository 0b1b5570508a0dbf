//! Kernel items: conv, GroupNorm(+SiLU), softmax / LayerNorm rows, the GEMM shapes of a conv and of
//! DiT-XL/2's MLP (batch 8 × 64 tokens).

use anyhow::Result;
use candle_core::Var;
use gen_nn::kernels;
use gen_runtime::Rng;

use super::{rand, Item, Timed};

pub(super) const ITEMS: &[Item] = &[
    ("conv3x3_fwd", |_| conv(false)),
    ("conv3x3_fwdbwd", |_| conv(true)),
    ("groupnorm_fwd", |_| group_norm(false, false)),
    ("groupnorm_fwdbwd", |_| group_norm(false, true)),
    ("groupnorm_silu_fwd", |_| group_norm(true, false)),
    ("groupnorm_silu_fwdbwd", |_| group_norm(true, true)),
    ("softmax_fwd", |_| rows(RowOp::Softmax)),
    ("softmax_candle_nograd", |_| rows(RowOp::CandleSoftmax)),
    ("layernorm_fwd", |_| rows(RowOp::LayerNorm)),
    ("layernorm_candle_nograd", |_| rows(RowOp::CandleLayerNorm)),
    ("sgemm_conv_tap", |_| sgemm(128, 4222, 128, false)),
    ("sgemm_conv_wgrad", |_| sgemm(128, 128, 4222, false)),
    ("sgemm_im2col", |_| sgemm(128, 1024, 1152, false)),
    ("sgemm_dit_mlp", |_| sgemm(512, 4608, 1152, false)),
    ("linear_dit_mlp_fwdbwd", |_| linear()),
    #[cfg(feature = "openblas")]
    ("sgemm_conv_tap_openblas", |_| sgemm(128, 4222, 128, true)),
    #[cfg(feature = "openblas")]
    ("sgemm_conv_wgrad_openblas", |_| sgemm(128, 128, 4222, true)),
    #[cfg(feature = "openblas")]
    ("sgemm_im2col_openblas", |_| sgemm(128, 1024, 1152, true)),
];

#[derive(Clone, Copy)]
enum RowOp {
    Softmax,
    CandleSoftmax,
    LayerNorm,
    CandleLayerNorm,
}

/// Row ops on [16·256, 256] (attention scores of 16 heads × 256 tokens): ours (with a gradient)
/// against Candle's fused versions, which have none.
fn rows(op: RowOp) -> Result<Timed> {
    let mut rng = Rng::new(0);
    let x = rand(&mut rng, &[4096, 256], 1.0)?;
    let w = (rand(&mut rng, &[256], 0.1)? + 1.0)?;
    let b = rand(&mut rng, &[256], 0.1)?;
    Ok(Box::new(move || {
        match op {
            RowOp::Softmax => kernels::softmax_last_dim(&x)?,
            RowOp::CandleSoftmax => candle_nn::ops::softmax_last_dim(&x)?,
            RowOp::LayerNorm => kernels::layer_norm(&x, &w, &b, 1e-5)?,
            RowOp::CandleLayerNorm => candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)?,
        };
        Ok(())
    }))
}

/// The GEMM shapes of a [8,128,64,64] conv: one kernel tap (stride-1 path), one tap's weight gradient,
/// and a stride-2 im2col tile. `openblas` selects the system BLAS (feature `openblas`).
fn sgemm(m: usize, n: usize, k: usize, openblas: bool) -> Result<Timed> {
    let mut rng = Rng::new(0);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let mut c = vec![0f32; m * n];
    Ok(Box::new(move || {
        if openblas {
            #[cfg(feature = "openblas")]
            kernels::gemm::sgemm_openblas(m, n, k, &a, &b, &mut c);
        } else {
            kernels::gemm::sgemm_crate(m, n, k, &a, &b, &mut c);
        }
        Ok(())
    }))
}

/// DiT-XL/2's fc1 as a layer (`gen_nn::Linear`): x [512, 1152], W [4608, 1152],
/// forward and the backward of `sum(y·g)`.
fn linear() -> Result<Timed> {
    let mut rng = Rng::new(0);
    let x = Var::from_tensor(&rand(&mut rng, &[512, 1152], 1.0)?)?;
    let w = Var::from_tensor(&rand(&mut rng, &[4608, 1152], 0.03)?)?;
    let b = Var::from_tensor(&rand(&mut rng, &[4608], 0.1)?)?;
    let g = rand(&mut rng, &[512, 4608], 1.0)?;
    let layer = gen_nn::Linear { weight: w.as_tensor().clone(), bias: Some(b.as_tensor().clone()) };
    Ok(Box::new(move || {
        let y = candle_core::Module::forward(&layer, x.as_tensor())?;
        kernels::sum_product(&y, &g)?.backward()?;
        Ok(())
    }))
}

fn conv(backward: bool) -> Result<Timed> {
    let mut rng = Rng::new(0);
    let x = Var::from_tensor(&rand(&mut rng, &[8, 128, 64, 64], 1.0)?)?;
    let w = Var::from_tensor(&rand(&mut rng, &[128, 128, 3, 3], 0.03)?)?;
    let b = Var::from_tensor(&rand(&mut rng, &[128], 0.1)?)?;
    let g = rand(&mut rng, &[8, 128, 64, 64], 1.0)?;
    Ok(Box::new(move || {
        let y = kernels::conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1, 1)?;
        if backward {
            kernels::sum_product(&y, &g)?.backward()?;
        }
        Ok(())
    }))
}

fn group_norm(silu: bool, backward: bool) -> Result<Timed> {
    let mut rng = Rng::new(0);
    let x = Var::from_tensor(&rand(&mut rng, &[8, 128, 64, 64], 1.0)?)?;
    let w = Var::from_tensor(&(rand(&mut rng, &[128], 0.1)? + 1.0)?)?;
    let b = Var::from_tensor(&rand(&mut rng, &[128], 0.1)?)?;
    let g = rand(&mut rng, &[8, 128, 64, 64], 1.0)?;
    Ok(Box::new(move || {
        let y = kernels::group_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 32, 1e-6, silu)?;
        if backward {
            kernels::sum_product(&y, &g)?.backward()?;
        }
        Ok(())
    }))
}
