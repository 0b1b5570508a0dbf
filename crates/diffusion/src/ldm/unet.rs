//! `openaimodel.UNetModel` as LDM-LC uses it: time embedding, input blocks (every output kept as a
//! skip), the middle ResBlock–SpatialTransformer–ResBlock, output blocks that take `cat([h, skip])`,
//! and GroupNorm → SiLU → conv out. The class enters only through the transformers' cross-attention.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{Conv2d, GroupNorm, Linear};

use super::blocks::{ResBlock, Resample, SpatialTransformer};
use super::config::UnetConfig;
use crate::embed::timestep_features;

/// One layer of a `TimestepEmbedSequential`.
#[derive(Clone, Debug)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(SpatialTransformer),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Res(r) => r.forward(x, emb),
            Layer::Attn(a) => a.forward(x, context),
            Layer::Resample(r) => r.forward(x),
        }
    }
}

/// Named activations of one forward (`act.input_blocks.1.0`, …), for parity tests.
pub type UnetTrace = HashMap<String, Tensor>;

#[derive(Clone, Debug)]
pub struct Unet {
    pub config: UnetConfig,
    time_fc1: Linear,
    time_fc2: Linear,
    input_blocks: Vec<Vec<Layer>>,
    middle: Vec<Layer>,
    output_blocks: Vec<Vec<Layer>>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
}

impl Unet {
    pub fn new(vb: VarBuilder, c: &UnetConfig) -> Result<Self> {
        let (mc, emb_dim) = (c.model_channels, c.time_embed_dim());
        let attn = |vb: VarBuilder, ch: usize| {
            let (heads, d_head) = c.heads(ch);
            SpatialTransformer::new(vb, ch, heads, d_head, c.transformer_depth, c.context_dim).map(Layer::Attn)
        };
        let ib = vb.pp("input_blocks");
        let mut input_blocks = vec![vec![Layer::Conv(Conv2d::new(ib.pp("0.0"), c.in_channels, mc, 3, 1, 1)?)]];
        let mut chans = vec![mc];
        let (mut ch, mut ds) = (mc, 1);
        for (level, &mult) in c.channel_mult.iter().enumerate() {
            for _ in 0..c.num_res_blocks {
                let vb = ib.pp(input_blocks.len().to_string());
                let mut layers = vec![Layer::Res(ResBlock::new(vb.pp("0"), ch, mult * mc, emb_dim)?)];
                ch = mult * mc;
                if c.attention_resolutions.contains(&ds) {
                    layers.push(attn(vb.pp("1"), ch)?);
                }
                input_blocks.push(layers);
                chans.push(ch);
            }
            if level + 1 != c.channel_mult.len() {
                let vb = ib.pp(input_blocks.len().to_string());
                input_blocks.push(vec![Layer::Resample(Resample::down(vb.pp("0"), ch)?)]);
                chans.push(ch);
                ds *= 2;
            }
        }
        let mb = vb.pp("middle_block");
        let middle = vec![
            Layer::Res(ResBlock::new(mb.pp("0"), ch, ch, emb_dim)?),
            attn(mb.pp("1"), ch)?,
            Layer::Res(ResBlock::new(mb.pp("2"), ch, ch, emb_dim)?),
        ];
        let ob = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for (level, &mult) in c.channel_mult.iter().enumerate().rev() {
            for i in 0..=c.num_res_blocks {
                let skip = chans.pop().expect("one skip per output block");
                let vb = ob.pp(output_blocks.len().to_string());
                let mut layers = vec![Layer::Res(ResBlock::new(vb.pp("0"), ch + skip, mc * mult, emb_dim)?)];
                ch = mc * mult;
                if c.attention_resolutions.contains(&ds) {
                    layers.push(attn(vb.pp("1"), ch)?);
                }
                if level > 0 && i == c.num_res_blocks {
                    layers.push(Layer::Resample(Resample::up(vb.pp(layers.len().to_string()), ch)?));
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        Ok(Unet {
            config: c.clone(),
            time_fc1: Linear::new(vb.pp("time_embed.0"), mc, emb_dim)?,
            time_fc2: Linear::new(vb.pp("time_embed.2"), emb_dim, emb_dim)?,
            input_blocks,
            middle,
            output_blocks,
            out_norm: GroupNorm::new(vb.pp("out.0"), 32, ch, 1e-5)?,
            out_conv: Conv2d::new(vb.pp("out.2"), ch, c.out_channels, 3, 1, 1)?,
        })
    }

    /// ε-prediction: x [B, C, H, W], t [B] (steps 0..999), context [B, N, context_dim] → [B, C_out, H, W].
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, t, context, None)
    }

    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        mut trace: Option<&mut UnetTrace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (_, ch, h, w) = x.dims4()?;
        if ch != c.in_channels || h != c.image_size || w != c.image_size {
            candle_core::bail!(
                "ldm: latent [{ch}, {h}, {w}] does not match the model's [{}, {}, {}]",
                c.in_channels,
                c.image_size,
                c.image_size
            );
        }
        let dtype = self.time_fc1.weight.dtype();
        let t_emb = timestep_features(t, c.model_channels, 10_000.0)?.to_dtype(dtype)?;
        let emb = self.time_fc2.forward(&self.time_fc1.forward(&t_emb)?.silu()?)?;
        let mut record = |name: String, v: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.insert(name, v.clone());
            }
        };
        record("act.t_emb".into(), &t_emb);
        record("act.emb".into(), &emb);
        let context = context.to_dtype(dtype)?;
        let mut h = x.to_dtype(dtype)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for (i, block) in self.input_blocks.iter().enumerate() {
            for (j, layer) in block.iter().enumerate() {
                h = layer.forward(&h, &emb, &context)?;
                record(format!("act.input_blocks.{i}.{j}"), &h);
            }
            skips.push(h.clone());
        }
        for (j, layer) in self.middle.iter().enumerate() {
            h = layer.forward(&h, &emb, &context)?;
            record(format!("act.middle_block.{j}"), &h);
        }
        for (i, block) in self.output_blocks.iter().enumerate() {
            let skip = skips.pop().expect("one skip per output block");
            h = Tensor::cat(&[&h, &skip], 1)?;
            for (j, layer) in block.iter().enumerate() {
                h = layer.forward(&h, &emb, &context)?;
                record(format!("act.output_blocks.{i}.{j}"), &h);
            }
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.time_fc1.weight.dtype()
    }
}
