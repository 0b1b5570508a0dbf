//! Learned codebooks: **VQGAN** (the codebook is a trained parameter; VQGAN-LC's baseline, official
//! `--tuning_codebook -1`: rows drawn U(−1/N, 1/N), the same loss as LC) and **FC** (factorised codes, as
//! ViT-VQGAN and LlamaGen: the low-dim latent and the codebook are l2-normalised before the lookup, so
//! the search is by cosine; loss `‖z_q − sg z‖² + 0.25 ‖sg z_q − z‖²`, LlamaGen's β).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::{nearest::nearest_codes, rows, unrows, Quantized};
use crate::config::VqConfig;

pub struct LearnedQuantizer {
    /// `tok_embeddings.weight` [N, e]: a Var while training.
    pub embedding: Tensor,
    /// FC: l2-normalise latents and rows before the lookup.
    pub normalize: bool,
}

/// `F.normalize(x, dim=-1)`: x / max(‖x‖, 1e-12).
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)
}

impl LearnedQuantizer {
    pub fn new(vb: VarBuilder, cfg: &VqConfig, normalize: bool) -> Result<Self> {
        Ok(LearnedQuantizer {
            embedding: vb.get((cfg.codebook_size, cfg.embed_dim), "tok_embeddings.weight")?,
            normalize,
        })
    }

    pub fn size(&self) -> usize {
        self.embedding.dim(0).unwrap_or(0)
    }

    /// The rows a code stands for (normalised for FC), with gradient to the codebook.
    pub fn codebook(&self) -> Result<Tensor> {
        if self.normalize {
            l2_normalize(&self.embedding)
        } else {
            Ok(self.embedding.clone())
        }
    }

    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        let shape = z.dims4()?;
        let zf = if self.normalize { l2_normalize(&rows(z)?)? } else { rows(z)? };
        let cb = self.codebook()?;
        let idx = nearest_codes(&zf, &cb)?;
        let zq = cb.index_select(&idx, 0)?;
        let commit = (zq.detach() - &zf)?.sqr()?.mean_all()?;
        let codebook_term = (&zq - zf.detach())?.sqr()?.mean_all()?;
        let loss =
            if self.normalize { (codebook_term + (commit * 0.25)?)? } else { (commit + (codebook_term * 0.33)?)? };
        let z_q = unrows(&(&zf + (zq - &zf)?.detach())?, shape)?;
        Ok(Quantized { z_q, loss, indices: idx.reshape((shape.0, shape.2 * shape.3))? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use gen_runtime::Rng;

    fn setup(normalize: bool) -> (Var, LearnedQuantizer, Tensor) {
        let mut rng = Rng::new(1);
        let e = Var::from_tensor(&rng.randn((16, 4), 1.0, &Device::Cpu).unwrap()).unwrap();
        let q = LearnedQuantizer { embedding: e.as_tensor().clone(), normalize };
        let z = rng.randn((2, 4, 3, 3), 1.0, &Device::Cpu).unwrap();
        (e, q, z)
    }

    #[test]
    fn vqgan_codes_are_the_nearest_rows_and_the_codebook_learns_from_the_033_term() {
        let (e, q, z) = setup(false);
        let zv = Var::from_tensor(&z).unwrap();
        let out = q.quantize(zv.as_tensor()).unwrap();
        let ids = out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let rows = rows(&z).unwrap().to_vec2::<f32>().unwrap();
        let cb = e.as_tensor().to_vec2::<f32>().unwrap();
        for (r, &i) in rows.iter().zip(&ids) {
            let d = |c: &Vec<f32>| c.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
            assert!(cb.iter().all(|c| d(&cb[i as usize]) <= d(c)));
        }
        // d loss / d E[i] = 0.33 · 2 (E[i] − z) / numel for each use; no gradient from z_q's straight-through
        let g = out.loss.backward().unwrap();
        let ge = g.get(e.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let numel = (rows.len() * 4) as f32;
        let mut want = vec![vec![0f32; 4]; 16];
        for (r, &i) in rows.iter().zip(&ids) {
            for c in 0..4 {
                want[i as usize][c] += 0.33 * 2.0 * (cb[i as usize][c] - r[c]) / numel;
            }
        }
        for (a, b) in ge.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // the latent gets the commitment gradient 2 (z − E[i]) / numel
        let gz = g.get(zv.as_tensor()).unwrap();
        assert!(gz.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn fc_looks_up_by_cosine_on_unit_vectors() {
        let (e, q, z) = setup(true);
        let out = q.quantize(&z).unwrap();
        // every output row is a unit vector, and the chosen row has the largest cosine
        let zq = rows(&out.z_q).unwrap().to_vec2::<f32>().unwrap();
        assert!(zq.iter().all(|r| (r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5));
        let ids = out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let cb = e.as_tensor().to_vec2::<f32>().unwrap();
        let cos = |a: &[f32], b: &[f32]| {
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (n(a) * n(b))
        };
        for (r, &i) in rows(&z).unwrap().to_vec2::<f32>().unwrap().iter().zip(&ids) {
            let best = cb.iter().map(|c| cos(r, c)).fold(f32::MIN, f32::max);
            assert!((cos(r, &cb[i as usize]) - best).abs() < 1e-6);
        }
    }
}
