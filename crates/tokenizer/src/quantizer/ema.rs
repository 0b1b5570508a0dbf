//! The official EMA branch (`quantizer_type ema`), reproduced as it is, quirks included: the update runs
//! on every call (eval too), `z_q` comes from the codebook *before* the update, the loss is commitment
//! only, and starting from `cluster_size = 0`, `embed_avg = E` blows unused rows up by ~1/eps.
//! Only consistent without a projector (it updates raw rows with `z` statistics), as the official code.
//!
//! Training here starts it from a consistent state instead (`EmaStart::Consistent`: `cluster_size = 1`,
//! `embed_avg = E`, so every row equals E until codes are used; the update rule is the same VQ-VAE-2
//! rule: decay 0.99, Laplace smoothing eps 1e-5) and updates only while `updating` is set.

use candle_core::{Device, Result, Tensor};

use super::{nearest::nearest_codes, Quantized};

pub struct EmaQuantizer {
    pub embedding: Vec<f32>,    // [N, e]
    pub cluster_size: Vec<f32>, // [N]
    pub embed_avg: Vec<f32>,    // [N, e]
    pub n: usize,
    pub dim: usize,
    pub decay: f32,
    pub eps: f32,
    /// Whether `quantize` moves the rows (the official code always does, at evaluation too).
    pub updating: bool,
}

/// Where the moving averages start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmaStart {
    /// `cluster_size = 0`, `embed_avg = E`: the first update divides unused rows by ~eps.
    Official,
    /// `cluster_size = 1`, `embed_avg = E`: rows stay E until used.
    Consistent,
}

impl EmaQuantizer {
    /// The official initial state: `cluster_size = 0`, `embed_avg = E`.
    pub fn new(embedding: &Tensor) -> Result<Self> {
        Self::start(embedding, EmaStart::Official)
    }

    pub fn start(embedding: &Tensor, start: EmaStart) -> Result<Self> {
        let (n, dim) = embedding.dims2()?;
        let e = embedding.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let cs = if start == EmaStart::Official { 0.0 } else { 1.0 };
        Ok(EmaQuantizer {
            embed_avg: e.clone(),
            embedding: e,
            cluster_size: vec![cs; n],
            n,
            dim,
            decay: 0.99,
            eps: 1e-5,
            updating: true,
        })
    }

    /// A saved state (`tok_embeddings.weight`, `cluster_size`, `embed_avg`).
    pub fn from_state(embedding: &Tensor, cluster_size: &Tensor, embed_avg: &Tensor) -> Result<Self> {
        let mut q = Self::new(embedding)?;
        let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>();
        q.cluster_size = f(cluster_size)?;
        q.embed_avg = f(embed_avg)?;
        if q.cluster_size.len() != q.n || q.embed_avg.len() != q.n * q.dim {
            candle_core::bail!(
                "EMA state: cluster_size has {} entries and embed_avg {} values for a {}×{} codebook",
                q.cluster_size.len(),
                q.embed_avg.len(),
                q.n,
                q.dim
            );
        }
        Ok(q)
    }

    /// The state to save: (`tok_embeddings.weight` [N, e], `cluster_size` [N], `embed_avg` [N, e]).
    pub fn state(&self, dev: &Device) -> Result<[Tensor; 3]> {
        Ok([
            self.embedding_tensor(dev)?,
            Tensor::from_vec(self.cluster_size.clone(), self.n, dev)?,
            Tensor::from_vec(self.embed_avg.clone(), (self.n, self.dim), dev)?,
        ])
    }

    pub fn embedding_tensor(&self, dev: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.embedding.clone(), (self.n, self.dim), dev)
    }

    /// Quantises z [B, e, h, w] and updates the codebook. Arithmetic in f32 in the official order.
    pub fn quantize(&mut self, z: &Tensor) -> Result<Quantized> {
        let (b, e, h, w) = z.dims4()?;
        if e != self.dim {
            candle_core::bail!("EMA quantizer: latent has {e} channels, codebook rows have {}", self.dim);
        }
        let dev = z.device().clone();
        let zf = z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))?;
        let old = self.embedding_tensor(&dev)?;
        let idx = nearest_codes(&zf, &old)?;
        let zq = old.index_select(&idx, 0)?;
        let loss = (zq.detach() - &zf)?.sqr()?.mean_all()?; // F.mse_loss(z_q.detach(), z)
        let z_q = (&zf + (zq - &zf)?.detach())?.reshape((b, h, w, e))?.permute((0, 3, 1, 2))?.contiguous()?;
        if !self.updating {
            return Ok(Quantized { z_q, loss, indices: idx.reshape((b, h * w))? });
        }

        let ids = idx.to_vec1::<u32>()?;
        let zv = zf.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.apply_update(&ids, &zv);
        Ok(Quantized { z_q, loss, indices: idx.reshape((b, h * w))? })
    }

    /// The moving-average update for latents `zv` (rows of `dim`, row-major) assigned to codes `ids`:
    /// the official arithmetic, in f32 and its order. Training with batch shards calls it once per
    /// step with every shard's rows, in shard order, so the update equals the whole batch's.
    pub fn apply_update(&mut self, ids: &[u32], zv: &[f32]) {
        let e = self.dim;
        let mut counts = vec![0f32; self.n];
        let mut embed_sum = vec![0f32; self.n * e];
        for (r, &i) in ids.iter().enumerate() {
            counts[i as usize] += 1.0;
            for c in 0..e {
                embed_sum[i as usize * e + c] += zv[r * e + c];
            }
        }
        // `mul_(decay).add_(x, alpha=1 − decay)`; alpha is the double 1 − 0.99 rounded to f32
        let alpha = (1.0f64 - self.decay as f64) as f32;
        for (cs, x) in self.cluster_size.iter_mut().zip(&counts) {
            *cs = *cs * self.decay + alpha * x;
        }
        for (ea, x) in self.embed_avg.iter_mut().zip(&embed_sum) {
            *ea = *ea * self.decay + alpha * x;
        }
        let total: f32 = self.cluster_size.iter().sum();
        for k in 0..self.n {
            let smoothed = (self.cluster_size[k] + self.eps) / (total + self.n as f32 * self.eps) * total;
            for c in 0..e {
                self.embedding[k * e + c] = self.embed_avg[k * e + c] / smoothed;
            }
        }
    }
}
