//! taming `Encoder` (double_z false): image [B, 3, H, W] → h [B, z_channels, H/f, W/f].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::{Conv2d, GroupNorm};

use crate::blocks::{normalize, AttnBlock, Downsample, ResnetBlock};
use crate::config::VqConfig;

struct Level {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    downsample: Option<Downsample>,
}

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: [ResnetBlock; 2],
    mid_attn: AttnBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.in_channels, cfg.ch, 3, 1, 1)?;
        let mut down = Vec::new();
        let mut width = cfg.ch; // level 0 starts from conv_in's width (in_ch_mult = (1,) + ch_mult)
        for (l, &mult) in cfg.ch_mult.iter().enumerate() {
            let vbl = vb.pp("down").pp(l);
            let out = cfg.ch * mult;
            let mut blocks = Vec::new();
            let mut attn = Vec::new();
            for i in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(vbl.pp("block").pp(i), width, out)?);
                width = out;
                if cfg.attn_at_level(l) {
                    attn.push(AttnBlock::new(vbl.pp("attn").pp(i), out)?);
                }
            }
            let downsample =
                if l + 1 < cfg.num_levels() { Some(Downsample::new(vbl.pp("downsample"), out)?) } else { None };
            down.push(Level { blocks, attn, downsample });
        }
        let vbm = vb.pp("mid");
        Ok(Encoder {
            conv_in,
            down,
            mid: [
                ResnetBlock::new(vbm.pp("block_1"), width, width)?,
                ResnetBlock::new(vbm.pp("block_2"), width, width)?,
            ],
            mid_attn: AttnBlock::new(vbm.pp("attn_1"), width)?,
            norm_out: normalize(vb.pp("norm_out"), width)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), width, cfg.z_channels, 3, 1, 1)?,
        })
    }

    /// The forward pass, calling `trace(name, output)` after every ResnetBlock (names as the official
    /// module paths, e.g. `encoder.down.2.block.0`), for parity checks of intermediates.
    pub fn forward_traced(&self, x: &Tensor, trace: &mut dyn FnMut(&str, &Tensor)) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for (l, level) in self.down.iter().enumerate() {
            for (i, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                trace(&format!("encoder.down.{l}.block.{i}"), &h);
                if let Some(a) = level.attn.get(i) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(d) = &level.downsample {
                h = d.forward(&h)?;
            }
        }
        h = self.mid[0].forward(&h)?;
        h = self.mid_attn.forward(&h)?;
        h = self.mid[1].forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, &mut |_, _| {})
    }
}
