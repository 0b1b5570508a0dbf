//! taming `Decoder`: z [B, z_channels, h, w] → image [B, out_ch, h·f, w·f]. No tanh, no clamp.
//! `up.0` is the full-resolution level; levels run from `up.{last}` down to `up.0`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{Conv2d, GroupNorm};

use crate::blocks::{normalize, AttnBlock, ResnetBlock, Upsample};
use crate::config::VqConfig;

struct Level {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    upsample: Option<Upsample>,
}

pub struct Decoder {
    conv_in: Conv2d,
    mid: [ResnetBlock; 2],
    mid_attn: AttnBlock,
    up: Vec<Level>, // index = level (0 = full resolution)
    norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn new(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let last = cfg.num_levels() - 1;
        let mut width = cfg.ch * cfg.ch_mult[last];
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.z_channels, width, 3, 1, 1)?;
        let vbm = vb.pp("mid");
        let mid =
            [ResnetBlock::new(vbm.pp("block_1"), width, width)?, ResnetBlock::new(vbm.pp("block_2"), width, width)?];
        let mid_attn = AttnBlock::new(vbm.pp("attn_1"), width)?;
        let mut up: Vec<Option<Level>> = (0..=last).map(|_| None).collect();
        for l in (0..=last).rev() {
            let vbl = vb.pp("up").pp(l);
            let out = cfg.ch * cfg.ch_mult[l];
            let mut blocks = Vec::new();
            let mut attn = Vec::new();
            for i in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(vbl.pp("block").pp(i), width, out)?);
                width = out;
                if cfg.attn_at_level(l) {
                    attn.push(AttnBlock::new(vbl.pp("attn").pp(i), out)?);
                }
            }
            let upsample = if l > 0 { Some(Upsample::new(vbl.pp("upsample"), out)?) } else { None };
            up[l] = Some(Level { blocks, attn, upsample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            mid_attn,
            up: up.into_iter().map(|l| l.expect("every level built")).collect(),
            norm_out: normalize(vb.pp("norm_out"), width)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), width, cfg.out_ch, 3, 1, 1)?,
        })
    }

    /// The forward pass with `trace(name, output)` after every ResnetBlock (`decoder.up.{l}.block.{i}`).
    pub fn forward_traced(&self, z: &Tensor, trace: &mut dyn FnMut(&str, &Tensor)) -> Result<Tensor> {
        Ok(self.forward_with_head_input(z, trace)?.1)
    }

    /// (the input of `conv_out`, the output): training's adaptive GAN weight needs the last layer's input.
    pub fn forward_with_head_input(
        &self,
        z: &Tensor,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid[0].forward(&h)?;
        h = self.mid_attn.forward(&h)?;
        h = self.mid[1].forward(&h)?;
        for (l, level) in self.up.iter().enumerate().rev() {
            for (i, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                trace(&format!("decoder.up.{l}.block.{i}"), &h);
                if let Some(a) = level.attn.get(i) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(u) = &level.upsample {
                h = u.forward(&h)?;
            }
        }
        let head = self.norm_out.forward_silu(&h)?;
        let out = self.conv_out.forward(&head)?;
        Ok((head, out))
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.forward_traced(z, &mut |_, _| {})
    }
}
