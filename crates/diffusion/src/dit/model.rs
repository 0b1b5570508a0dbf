//! The DiT network, key for key with `dit-lc/models.py` (`DiT`, `DiTBlock`, `FinalLayer`; timm 1.0's
//! `PatchEmbed`, `Attention` and `Mlp`).
//!
//! Patchify (`x_embedder.proj`, a stride-p conv) → row-major tokens + the fixed `pos_embed`; condition
//! `c = t_embedder(t) + y_embedder(y)`; `depth` adaLN-Zero blocks; the final adaLN layer; unpatchify
//! with each token's vector ordered (p_row, p_col, channel).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use gen_nn::kernels::{gated_add, gelu, modulate, Gelu};
use gen_nn::{Conv2d, LayerNorm, Linear};

use super::config::DitConfig;
use crate::embed::{pos_embed_2d, LabelEmbedder, TimestepEmbedder};

/// The LayerNorms of DiT have no affine parameters and eps 1e-6.
const LN_EPS: f64 = 1e-6;

/// timm `Attention(dim, num_heads, qkv_bias=True)`: keys `qkv`, `proj`. The qkv rows are
/// `[q (head 0..H−1); k; v]`; plain softmax attention over all tokens.
#[derive(Clone, Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let qkv = self.qkv.forward(x)?;
        let (q, k, v) = (qkv.narrow(2, 0, d)?, qkv.narrow(2, d, d)?, qkv.narrow(2, 2 * d, d)?);
        let scale = 1.0 / ((d / self.heads) as f64).sqrt();
        self.proj.forward(&gen_nn::attention::attend_heads(&q, &k, &v, self.heads, scale)?)
    }
}

/// `DiTBlock`: `attn`, `mlp.fc1` / `mlp.fc2` (GELU, tanh approximation), `adaLN_modulation.1`.
#[derive(Clone, Debug)]
struct Block {
    attn: Attention,
    fc1: Linear,
    fc2: Linear,
    ada: Linear,
    norm: LayerNorm,
}

impl Block {
    fn new(vb: VarBuilder, c: &DitConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Block {
            attn: Attention {
                qkv: Linear::new(vb.pp("attn.qkv"), d, 3 * d)?,
                proj: Linear::new(vb.pp("attn.proj"), d, d)?,
                heads: c.num_heads,
            },
            fc1: Linear::new(vb.pp("mlp.fc1"), d, c.mlp_hidden())?,
            fc2: Linear::new(vb.pp("mlp.fc2"), c.mlp_hidden(), d)?,
            ada: Linear::new(vb.pp("adaLN_modulation.1"), d, 6 * d)?,
            norm: LayerNorm::new_no_affine(d, LN_EPS),
        })
    }

    /// The six modulations `adaLN_modulation(c)`, [B, 6D]: shift/scale/gate of the attention, then of the MLP.
    fn modulation(&self, c: &Tensor) -> Result<Tensor> {
        self.ada.forward(&c.silu()?)
    }

    fn forward(&self, x: &Tensor, m: &Tensor) -> Result<Tensor> {
        let m = m.chunk(6, 1)?;
        let h = modulate(&self.norm.forward(x)?, &m[0], &m[1])?;
        let x = gated_add(x, &self.attn.forward(&h)?, &m[2])?;
        let h = modulate(&self.norm.forward(&x)?, &m[3], &m[4])?;
        let h = self.fc2.forward(&gelu(&self.fc1.forward(&h)?, Gelu::Tanh)?)?;
        gated_add(&x, &h, &m[5])
    }
}

/// `FinalLayer`: `adaLN_modulation.1` (shift, scale) and `linear` (D → p·p·C_out).
#[derive(Clone, Debug)]
struct FinalLayer {
    ada: Linear,
    linear: Linear,
    norm: LayerNorm,
}

impl FinalLayer {
    fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let m = self.ada.forward(&c.silu()?)?.chunk(2, 1)?;
        self.linear.forward(&modulate(&self.norm.forward(x)?, &m[0], &m[1])?)
    }
}

/// The intermediate values of one forward, for parity tests and debugging.
#[derive(Clone, Debug, Default)]
pub struct DitTrace {
    pub t_emb: Option<Tensor>,
    pub y_emb: Option<Tensor>,
    /// `x_embedder(x)` before the positions are added.
    pub x_tokens: Option<Tensor>,
    pub block_mods: Vec<Tensor>,
    pub blocks: Vec<Tensor>,
    /// `final_layer(x, c)` before unpatchify.
    pub final_tokens: Option<Tensor>,
}

/// The whole network.
#[derive(Clone, Debug)]
pub struct Dit {
    pub config: DitConfig,
    x_embedder: Conv2d,
    pos_embed: Tensor, // [1, N, D]
    t_embedder: TimestepEmbedder,
    y_embedder: LabelEmbedder,
    blocks: Vec<Block>,
    final_layer: FinalLayer,
}

impl Dit {
    /// Builds the network from official key names. `pos_embed` is read when present (real checkpoints
    /// hold it) and computed otherwise; it is a fixed table either way.
    pub fn new(vb: VarBuilder, config: &DitConfig) -> Result<Self> {
        config.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (d, p, g) = (config.hidden_size, config.patch_size, config.grid());
        let x_embedder = Conv2d::new(vb.pp("x_embedder.proj"), config.in_channels, d, p, p, 0)?;
        let pos_embed = if vb.contains_tensor("pos_embed") {
            vb.get((1, g * g, d), "pos_embed")?
        } else {
            Tensor::from_vec(pos_embed_2d(d, g), (1, g * g, d), vb.device())?.to_dtype(vb.dtype())?
        };
        let blocks =
            (0..config.depth).map(|i| Block::new(vb.pp(format!("blocks.{i}")), config)).collect::<Result<_>>()?;
        let f = vb.pp("final_layer");
        let final_layer = FinalLayer {
            ada: Linear::new(f.pp("adaLN_modulation.1"), d, 2 * d)?,
            linear: Linear::new(f.pp("linear"), d, p * p * config.out_channels())?,
            norm: LayerNorm::new_no_affine(d, LN_EPS),
        };
        Ok(Dit {
            config: config.clone(),
            x_embedder,
            pos_embed,
            t_embedder: TimestepEmbedder::new(vb.pp("t_embedder"), d)?,
            y_embedder: LabelEmbedder::new(vb.pp("y_embedder"), config.label_rows(), d)?,
            blocks,
            final_layer,
        })
    }

    /// The fixed position table, [1, N, D].
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// `DiT.forward(x, t, y)` in eval mode: x [B, C, H, W], t [B] (diffusion steps, or SiT's times in
    /// [0, 1]), y [B] class ids (the null class gives the unconditional branch) → [B, C_out, H, W].
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, t, y, None)
    }

    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: &Tensor,
        mut trace: Option<&mut DitTrace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = x.dims4()?;
        if ch != c.in_channels || h != c.input_size || w != c.input_size {
            candle_core::bail!(
                "dit: latent [{ch}, {h}, {w}] does not match the model's [{}, {}, {}]",
                c.in_channels,
                c.input_size,
                c.input_size
            );
        }
        if t.dims1()? != b || y.dims1()? != b {
            candle_core::bail!("dit: {b} latents need {b} timesteps and labels, got {} and {}", t.dims1()?, y.dims1()?);
        }
        let tokens = self.x_embedder.forward(x)?.flatten_from(2)?.transpose(1, 2)?; // [B, N, D]
        let t_emb = self.t_embedder.forward(t)?;
        let y_emb = self.y_embedder.forward(y)?;
        let cond = (&t_emb + &y_emb)?;
        let mut x = tokens.broadcast_add(&self.pos_embed)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.t_emb = Some(t_emb);
            tr.y_emb = Some(y_emb);
            tr.x_tokens = Some(tokens);
        }
        for block in &self.blocks {
            let m = block.modulation(&cond)?;
            x = block.forward(&x, &m)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.block_mods.push(m);
                tr.blocks.push(x.clone());
            }
        }
        let out = self.final_layer.forward(&x, &cond)?;
        if let Some(tr) = trace {
            tr.final_tokens = Some(out.clone());
        }
        self.unpatchify(&out)
    }

    /// [B, N, p·p·C] → [B, C, H, W]: token (r, c)'s vector is (p_row, p_col, channel), channel fastest.
    fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (p, g, c) = (self.config.patch_size, self.config.grid(), self.config.out_channels());
        let b = x.dim(0)?;
        x.reshape((b, g, g, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, c, g * p, g * p))
    }
}
