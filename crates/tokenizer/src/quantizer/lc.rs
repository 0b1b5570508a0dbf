//! The LC quantizer (`VQModel.quantize`, `quantizer_type org`): a frozen codebook E [N, D] (k-means centres
//! of CLIP features), a trained projector P, and nearest-neighbour search against P(E) [N, e].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::Linear;

use super::{nearest::nearest_codes, Quantized};
use crate::config::{Projector, VqConfig};

/// `codebook_projection`: `Linear(D, e)` or `Linear(D, h) → ReLU → Linear(h, e)` (keys `.0`, `.2`).
pub enum Projection {
    Linear(Linear),
    Mlp(Linear, Linear),
}

impl Module for Projection {
    fn forward(&self, e: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Linear(l) => l.forward(e),
            Projection::Mlp(a, b) => b.forward(&a.forward(e)?.relu()?),
        }
    }
}

/// Key under which model folders store the projected codebook, so inference never recomputes it.
pub const PROJECTED_KEY: &str = "quantize.codebook_projected";

pub struct LcQuantizer {
    /// `tok_embeddings.weight` [N, D], frozen. Absent in inference-only model folders.
    pub tok_embeddings: Option<Tensor>,
    pub projection: Option<Projection>,
    /// P(E) [N, e], computed once for inference; `None` while training the projector.
    projected: Option<Tensor>,
}

impl LcQuantizer {
    pub fn new(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let (n, d, e) = (cfg.codebook_size, cfg.codebook_dim, cfg.embed_dim);
        let stored = if vb.contains_tensor(PROJECTED_KEY) { Some(vb.get((n, e), PROJECTED_KEY)?) } else { None };
        let tok_embeddings = if stored.is_none() || vb.contains_tensor("tok_embeddings.weight") {
            Some(vb.get((n, d), "tok_embeddings.weight")?)
        } else {
            None
        };
        let has_projector =
            vb.contains_tensor("codebook_projection.weight") || vb.contains_tensor("codebook_projection.0.weight");
        let projection = match cfg.projector {
            Projector::None => None,
            _ if stored.is_some() && !has_projector => None,
            Projector::Linear => Some(Projection::Linear(Linear::new(vb.pp("codebook_projection"), d, e)?)),
            Projector::Mlp { hidden } => Some(Projection::Mlp(
                Linear::new(vb.pp("codebook_projection").pp(0), d, hidden)?,
                Linear::new(vb.pp("codebook_projection").pp(2), hidden, e)?,
            )),
        };
        Ok(LcQuantizer { tok_embeddings, projection, projected: stored })
    }

    /// `codebook_projection(tok_embeddings.weight)`, [N, e], with gradient to the projector.
    pub fn project(&self) -> Result<Tensor> {
        let e = self
            .tok_embeddings
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this model folder holds only the projected codebook".into()))?
            .detach(); // frozen: never a gradient into the codebook
        match &self.projection {
            Some(p) => p.forward(&e),
            None => Ok(e),
        }
    }

    /// Fixes P(E) for inference (computed once; `quantize` then skips the projection).
    pub fn freeze_projection(&mut self) -> Result<()> {
        if self.projected.is_none() {
            self.projected = Some(self.project()?.detach());
        }
        Ok(())
    }

    /// Drops the cached P(E) so training sees the projector's current weights.
    pub fn unfreeze_projection(&mut self) {
        if self.tok_embeddings.is_some() {
            self.projected = None;
        }
    }

    /// The codebook the search runs against: cached P(E) at inference, else P(E) with gradient.
    pub fn codebook(&self) -> Result<Tensor> {
        match &self.projected {
            Some(p) => Ok(p.clone()),
            None => self.project(),
        }
    }

    pub fn codebook_size(&self) -> Result<usize> {
        self.codebook()?.dim(0)
    }

    /// z [B, e, h, w] → straight-through z_q, loss `mean((sg[z_q]−z)²) + 0.33·mean((z_q−sg[z])²)`, ids.
    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        let (b, e, h, w) = z.dims4()?;
        let zf = z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))?; // b c h w → (b h w) c
        let cb = self.codebook()?;
        let idx = nearest_codes(&zf, &cb)?;
        let zq = cb.index_select(&idx, 0)?; // [M, e], gradient to the projector
        let commit = (zq.detach() - &zf)?.sqr()?.mean_all()?;
        let codebook_term = (&zq - zf.detach())?.sqr()?.mean_all()?;
        let loss = (commit + (codebook_term * 0.33)?)?;
        let zq_st = (&zf + (zq - &zf)?.detach())?;
        let z_q = zq_st.reshape((b, h, w, e))?.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(Quantized { z_q, loss, indices: idx.reshape((b, h * w))? })
    }

    /// Ids [B, h·w] → code rows as NCHW [B, e, h, w] (official `VQGANTransformer.z_to_image`, first half).
    /// An id past the codebook is an error naming it.
    pub fn embed(&self, indices: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        super::embed_rows(&self.codebook()?, indices, h, w)
    }
}
