//! The UNet's blocks, key for key with `ldm/modules/diffusionmodules/openaimodel.py` (`ResBlock`,
//! `Downsample`, `Upsample`) and `ldm/modules/attention.py` (`SpatialTransformer`,
//! `BasicTransformerBlock`, `CrossAttention`, `FeedForward` with `GEGLU`).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use gen_nn::kernels::{gelu, Gelu};
use gen_nn::{Conv2d, GroupNorm, LayerNorm, Linear};

/// `normalization(ch)`: GroupNorm32, 32 groups, eps 1e-5.
fn norm32(vb: VarBuilder, ch: usize) -> Result<GroupNorm> {
    GroupNorm::new(vb, 32, ch, 1e-5)
}

/// `ResBlock` without scale-shift norm: in_layers (GN, SiLU, conv3×3), emb_layers (SiLU, Linear) added
/// per channel, out_layers (GN, SiLU, dropout 0, conv3×3), plus the skip (identity or a 1×1 conv).
#[derive(Clone, Debug)]
pub struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, emb_dim: usize) -> Result<Self> {
        Ok(ResBlock {
            in_norm: norm32(vb.pp("in_layers.0"), cin)?,
            in_conv: Conv2d::new(vb.pp("in_layers.2"), cin, cout, 3, 1, 1)?,
            emb: Linear::new(vb.pp("emb_layers.1"), emb_dim, cout)?,
            out_norm: norm32(vb.pp("out_layers.0"), cout)?,
            out_conv: Conv2d::new(vb.pp("out_layers.3"), cout, cout, 3, 1, 1)?,
            skip: if cin == cout { None } else { Some(Conv2d::new(vb.pp("skip_connection"), cin, cout, 1, 1, 0)?) },
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.in_conv.forward(&self.in_norm.forward_silu(x)?)?;
        let e = self.emb.forward(&emb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = self.out_conv.forward(&self.out_norm.forward_silu(&h.broadcast_add(&e)?)?)?;
        match &self.skip {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `CrossAttention`: bias-free `to_q`, `to_k`, `to_v`, then `to_out.0`; keys and values from the context
/// (or from x for self-attention), heads head-major along the channels, scale d_head^−½.
#[derive(Clone, Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize, d_head: usize) -> Result<Self> {
        let inner = heads * d_head;
        Ok(CrossAttention {
            to_q: Linear::new_no_bias(vb.pp("to_q"), dim, inner)?,
            to_k: Linear::new_no_bias(vb.pp("to_k"), context_dim, inner)?,
            to_v: Linear::new_no_bias(vb.pp("to_v"), context_dim, inner)?,
            to_out: Linear::new(vb.pp("to_out.0"), inner, dim)?,
            heads,
            scale: 1.0 / (d_head as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (self.to_q.forward(x)?, self.to_k.forward(context)?, self.to_v.forward(context)?);
        self.to_out.forward(&gen_nn::attention::attend_heads(&q, &k, &v, self.heads, self.scale)?)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention on the context, gated feed-forward, each
/// pre-LayerNorm (eps 1e-5) with a residual.
#[derive(Clone, Debug)]
struct TransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff_in: Linear,
    ff_out: Linear,
    norms: [LayerNorm; 3],
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize, d_head: usize) -> Result<Self> {
        Ok(TransformerBlock {
            attn1: CrossAttention::new(vb.pp("attn1"), dim, dim, heads, d_head)?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, context_dim, heads, d_head)?,
            ff_in: Linear::new(vb.pp("ff.net.0.proj"), dim, 8 * dim)?,
            ff_out: Linear::new(vb.pp("ff.net.2"), 4 * dim, dim)?,
            norms: [
                LayerNorm::new(vb.pp("norm1"), dim, 1e-5)?,
                LayerNorm::new(vb.pp("norm2"), dim, 1e-5)?,
                LayerNorm::new(vb.pp("norm3"), dim, 1e-5)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self.norms[0].forward(x)?;
        let x = (self.attn1.forward(&h, &h)? + x)?;
        let x = (self.attn2.forward(&self.norms[1].forward(&x)?, context)? + x)?;
        // GEGLU: the first half is the value, the second the gate (exact-erf GELU)
        let p = self.ff_in.forward(&self.norms[2].forward(&x)?)?;
        let half = p.dim(D::Minus1)? / 2;
        let g = p.narrow(D::Minus1, 0, half)?.mul(&gelu(&p.narrow(D::Minus1, half, half)?, Gelu::Erf)?)?;
        self.ff_out.forward(&g)? + x
    }
}

/// `SpatialTransformer`: GroupNorm (32 groups, eps 1e-6) → `proj_in` 1×1 → tokens in row-major order →
/// the blocks → `proj_out` 1×1 → + x.
#[derive(Clone, Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Conv2d,
    blocks: Vec<TransformerBlock>,
    proj_out: Conv2d,
}

impl SpatialTransformer {
    pub fn new(
        vb: VarBuilder,
        ch: usize,
        heads: usize,
        d_head: usize,
        depth: usize,
        context_dim: usize,
    ) -> Result<Self> {
        let inner = heads * d_head;
        Ok(SpatialTransformer {
            norm: GroupNorm::new(vb.pp("norm"), 32, ch, 1e-6)?,
            proj_in: Conv2d::new(vb.pp("proj_in"), ch, inner, 1, 1, 0)?,
            blocks: (0..depth)
                .map(|i| {
                    TransformerBlock::new(vb.pp(format!("transformer_blocks.{i}")), inner, context_dim, heads, d_head)
                })
                .collect::<Result<_>>()?,
            proj_out: Conv2d::new(vb.pp("proj_out"), inner, ch, 1, 1, 0)?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let p = self.proj_in.forward(&self.norm.forward(x)?)?;
        let c = p.dim(1)?;
        let mut t = p.flatten_from(2)?.transpose(1, 2)?; // [B, HW, C]
        for blk in &self.blocks {
            t = blk.forward(&t, context)?;
        }
        let p = t.transpose(1, 2)?.reshape((b, c, h, w))?;
        self.proj_out.forward(&p)? + x
    }
}

/// `Downsample` (conv3×3 stride 2, key `op`) or `Upsample` (nearest ×2 then conv3×3, key `conv`).
#[derive(Clone, Debug)]
pub enum Resample {
    Down(Conv2d),
    Up(Conv2d),
}

impl Resample {
    pub fn down(vb: VarBuilder, ch: usize) -> Result<Self> {
        Ok(Resample::Down(Conv2d::new(vb.pp("op"), ch, ch, 3, 2, 1)?))
    }

    pub fn up(vb: VarBuilder, ch: usize) -> Result<Self> {
        Ok(Resample::Up(Conv2d::new(vb.pp("conv"), ch, ch, 3, 1, 1)?))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Resample::Down(c) => c.forward(x),
            Resample::Up(c) => c.forward(&gen_nn::ops::upsample_nearest2x(x)?),
        }
    }
}
