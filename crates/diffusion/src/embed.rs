//! Embeddings DiT and SiT share (the LDM UNet uses the same timestep features): sinusoidal timestep
//! features, the timestep MLP, the class table with its null row, and the fixed 2-D sin-cos positions.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{Embedding, Linear};

/// `TimestepEmbedder.timestep_embedding` / openaimodel `timestep_embedding`: t [B] (any float or integer
/// dtype, fractional for SiT) → [B, dim] F32 `[cos(t·f_k), sin(t·f_k)]`, **cos first**, with
/// `f_k = exp(−ln(max_period)·k/half)`. Computed in f32 on the host like the official code (which
/// hard-codes float32), so the features match it to round-off.
pub fn timestep_features(t: &Tensor, dim: usize, max_period: f64) -> Result<Tensor> {
    let ts = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let half = dim / 2;
    let c = -(max_period.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|k| (c * k as f32 / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &tv in &ts {
        let args: Vec<f32> = freqs.iter().map(|f| tv * f).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (ts.len(), dim), t.device())
}

/// DiT's `TimestepEmbedder`: 256 sinusoidal features → `mlp.0` Linear → SiLU → `mlp.2` Linear.
#[derive(Clone, Debug)]
pub struct TimestepEmbedder {
    fc1: Linear,
    fc2: Linear,
    pub frequency_dim: usize,
}

impl TimestepEmbedder {
    pub const FREQUENCY_DIM: usize = 256;

    pub fn new(vb: VarBuilder, hidden: usize) -> Result<Self> {
        let f = Self::FREQUENCY_DIM;
        Ok(TimestepEmbedder {
            fc1: Linear::new(vb.pp("mlp.0"), f, hidden)?,
            fc2: Linear::new(vb.pp("mlp.2"), hidden, hidden)?,
            frequency_dim: f,
        })
    }

    /// The sinusoidal features of t, in the weights' dtype.
    pub fn features(&self, t: &Tensor) -> Result<Tensor> {
        timestep_features(t, self.frequency_dim, 10_000.0)?.to_dtype(self.fc1.weight.dtype())
    }

    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(&self.features(t)?)?.silu()?)
    }
}

/// DiT's `LabelEmbedder`: `embedding_table` with `num_classes + 1` rows when classifier-free guidance is
/// trained (the last row is the null class). Label dropout is the trainer's job ([`drop_labels`]); the
/// forward is the plain lookup of eval mode.
#[derive(Clone, Debug)]
pub struct LabelEmbedder {
    table: Embedding,
}

impl LabelEmbedder {
    pub fn new(vb: VarBuilder, rows: usize, hidden: usize) -> Result<Self> {
        Ok(LabelEmbedder { table: Embedding::new(vb.pp("embedding_table"), rows, hidden)? })
    }

    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        self.table.forward(y)
    }
}

/// `LabelEmbedder.token_drop`: label i becomes `null` where `u[i] < prob` (u uniform in [0, 1), one per label).
pub fn drop_labels(labels: &[u32], u: &[f64], prob: f64, null: u32) -> Vec<u32> {
    labels.iter().zip(u).map(|(&y, &u)| if u < prob { null } else { y }).collect()
}

/// `get_2d_sincos_pos_embed(dim, grid)`: [grid², dim] F32, token `n = r·grid + c`. Dims `[0, dim/2)`
/// encode the **column** c, `[dim/2, dim)` the row r (the official meshgrid puts w first); each half is
/// `[sin(p·ω_k), cos(p·ω_k)]` with `ω_k = 10000^(−k/(dim/4))`, computed in f64 and cast like numpy.
pub fn pos_embed_2d(dim: usize, grid: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10_000f64.powf(k as f64 / (dim as f64 / 4.0))).collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for r in 0..grid {
        for c in 0..grid {
            for p in [c as f64, r as f64] {
                out.extend(omega.iter().map(|w| (p * w).sin() as f32));
                out.extend(omega.iter().map(|w| (p * w).cos() as f32));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn timestep_features_put_cos_first_and_are_one_at_t_zero() {
        let t = Tensor::new(&[0f32, 3.0], &Device::Cpu).unwrap();
        let f = timestep_features(&t, 8, 10_000.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(f[0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // k = 0 has frequency 1: cos(3), then sin(3) at half
        assert!((f[1][0] - 3f32.cos()).abs() < 1e-7 && (f[1][4] - 3f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn pos_embed_puts_column_in_the_first_half() {
        let (dim, g) = (8, 3);
        let e = pos_embed_2d(dim, g);
        // token (r=2, c=1): first quarter sin(1·ω), third quarter sin(2·ω); ω_0 = 1
        let n = 2 * g + 1;
        assert!((e[n * dim] - 1f32.sin()).abs() < 1e-7);
        assert!((e[n * dim + dim / 2] - 2f32.sin()).abs() < 1e-7);
        assert!((e[n * dim + dim / 4] - 1f32.cos()).abs() < 1e-7);
    }

    #[test]
    fn labels_drop_to_null_below_the_probability() {
        assert_eq!(drop_labels(&[1, 4, 7, 9], &[0.05, 0.5, 0.95, 0.09], 0.1, 10), vec![10, 4, 7, 10]);
    }
}
