//! The LDM-LC hyper-parameters: `UNetModel`'s arguments, the `ClassEmbedder` and the DDPM schedule of
//! `LatentDiffusion`, with the two official configurations.

use serde::{Deserialize, Serialize};

/// `openaimodel.UNetModel` as LDM-LC configures it (spatial transformer, legacy heads, no scale-shift
/// norm, conv resampling, dims 2; every other argument at its default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    pub image_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    /// Downsample factors (1, 2, 4, …) at which a SpatialTransformer follows each ResBlock.
    pub attention_resolutions: Vec<usize>,
    pub num_res_blocks: usize,
    pub channel_mult: Vec<usize>,
    pub num_head_channels: usize,
    #[serde(default = "one")]
    pub transformer_depth: usize,
    pub context_dim: usize,
}

fn one() -> usize {
    1
}

/// The whole LDM: UNet, class table (`cond_stage_model`), schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmConfig {
    pub unet: UnetConfig,
    /// Rows of `ClassEmbedder` (classes + the null class, which is the last row).
    pub n_classes: usize,
    #[serde(default = "default_linear_start")]
    pub linear_start: f64,
    #[serde(default = "default_linear_end")]
    pub linear_end: f64,
    #[serde(default = "default_timesteps")]
    pub timesteps: usize,
}

fn default_linear_start() -> f64 {
    0.0015
}
fn default_linear_end() -> f64 {
    0.0195
}
fn default_timesteps() -> usize {
    1000
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ldm config: {0}")]
pub struct LdmConfigError(pub String);

impl UnetConfig {
    /// Heads of a transformer at `ch` channels (`legacy`: ch / num_head_channels heads of ch / heads).
    pub fn heads(&self, ch: usize) -> (usize, usize) {
        let heads = ch / self.num_head_channels;
        (heads, ch / heads)
    }

    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }
}

impl LdmConfig {
    /// `configs/imagenet-f16-vqgan-lc-100K.yaml`: 8×16×16 latent.
    pub fn official_f16() -> Self {
        LdmConfig {
            unet: UnetConfig {
                image_size: 16,
                in_channels: 8,
                out_channels: 8,
                model_channels: 256,
                attention_resolutions: vec![4, 1],
                num_res_blocks: 3,
                channel_mult: vec![1, 4],
                num_head_channels: 32,
                transformer_depth: 1,
                context_dim: 512,
            },
            n_classes: 1001,
            linear_start: 0.0015,
            linear_end: 0.0195,
            timesteps: 1000,
        }
    }

    /// `configs/imagenet-f8-vqgan-lc-100K.yaml`: 4×32×32 latent.
    pub fn official_f8() -> Self {
        let mut c = Self::official_f16();
        c.unet.image_size = 32;
        c.unet.in_channels = 4;
        c.unet.out_channels = 4;
        c.unet.attention_resolutions = vec![4, 2, 1];
        c.unet.num_res_blocks = 2;
        c.unet.channel_mult = vec![1, 2, 4];
        c
    }

    /// The null (unconditional) class: the last row of the class table.
    pub fn null_class(&self) -> u32 {
        (self.n_classes - 1) as u32
    }

    pub fn validate(&self) -> Result<(), LdmConfigError> {
        let u = &self.unet;
        let bad = |m: String| Err(LdmConfigError(m));
        if u.channel_mult.is_empty() || u.num_res_blocks == 0 || u.model_channels == 0 {
            return bad("channel_mult, num_res_blocks and model_channels must be non-empty / positive".into());
        }
        for &m in &u.channel_mult {
            let ch = m * u.model_channels;
            if !ch.is_multiple_of(32) {
                return bad(format!("{ch} channels do not split into GroupNorm's 32 groups"));
            }
            if u.num_head_channels == 0 || !ch.is_multiple_of(u.num_head_channels) {
                return bad(format!("{ch} channels do not split into heads of {}", u.num_head_channels));
            }
        }
        let levels = u.channel_mult.len() as u32;
        if !u.image_size.is_multiple_of(1 << (levels - 1)) {
            return bad(format!("image_size {} does not halve {} times", u.image_size, levels - 1));
        }
        if self.n_classes < 2 {
            return bad("n_classes counts the classes and the null class: at least 2".into());
        }
        if !(0.0 < self.linear_start && self.linear_start < self.linear_end && self.linear_end < 1.0)
            || self.timesteps < 2
        {
            return bad(format!("schedule {}..{} over {} steps", self.linear_start, self.linear_end, self.timesteps));
        }
        Ok(())
    }
}

impl LdmConfig {
    /// The architecture of a Lightning checkpoint's UNet and class table from their shapes (`shape(key)`
    /// with the full `model.diffusion_model.*` / `cond_stage_model.*` keys). Two numbers are not stored
    /// in the weights: the head width (`num_head_channels`, 32 in both official configs) and the latent
    /// side (`image_size`, which only sizes the noise); the schedule keeps its defaults. A checkpoint
    /// whose shapes are an official config's gets that config as it is.
    pub fn infer(
        shape: &dyn Fn(&str) -> Option<Vec<usize>>,
        num_head_channels: usize,
        image_size: usize,
    ) -> Result<Self, LdmConfigError> {
        let unet = |k: &str| shape(&format!("model.diffusion_model.{k}"));
        let need = |k: &str| unet(k).ok_or_else(|| LdmConfigError(format!("no tensor model.diffusion_model.{k}")));
        let conv_in = need("input_blocks.0.0.weight")?;
        let (mc, in_channels) = (conv_in[0], conv_in.get(1).copied().unwrap_or(0));
        let out_channels = need("out.2.weight")?[0];
        let (mut channel_mult, mut attention_resolutions) = (Vec::new(), Vec::new());
        let (mut per_level, mut blocks, mut ds) = (None, 0, 1);
        for i in 1.. {
            if unet(&format!("input_blocks.{i}.0.op.weight")).is_some() {
                // a Downsample closes the level
                if *per_level.get_or_insert(blocks) != blocks {
                    return Err(LdmConfigError(format!(
                        "levels with {} and {blocks} ResBlocks",
                        per_level.unwrap_or(0)
                    )));
                }
                (blocks, ds) = (0, ds * 2);
                continue;
            }
            let Some(w) = unet(&format!("input_blocks.{i}.0.in_layers.2.weight")) else { break };
            if blocks == 0 {
                channel_mult.push(w[0] / mc.max(1));
            }
            blocks += 1;
            if unet(&format!("input_blocks.{i}.1.proj_in.weight")).is_some() && !attention_resolutions.contains(&ds) {
                attention_resolutions.push(ds);
            }
        }
        let num_res_blocks = *per_level.get_or_insert(blocks);
        if blocks != num_res_blocks || num_res_blocks == 0 {
            return Err(LdmConfigError(format!("levels with {num_res_blocks} and {blocks} ResBlocks")));
        }
        let transformer_depth = (0..)
            .take_while(|j| unet(&format!("middle_block.1.transformer_blocks.{j}.attn1.to_q.weight")).is_some())
            .count();
        let context_dim = need("middle_block.1.transformer_blocks.0.attn2.to_k.weight")?[1];
        let classes = shape("cond_stage_model.embedding.weight")
            .ok_or_else(|| LdmConfigError("no class table cond_stage_model.embedding.weight".into()))?;
        if classes.get(1) != Some(&context_dim) {
            return Err(LdmConfigError(format!(
                "class table {classes:?} does not match the context width {context_dim}"
            )));
        }
        let config = LdmConfig {
            unet: UnetConfig {
                image_size,
                in_channels,
                out_channels,
                model_channels: mc,
                attention_resolutions,
                num_res_blocks,
                channel_mult,
                num_head_channels,
                transformer_depth,
                context_dim,
            },
            n_classes: classes[0],
            ..Self::official_f16()
        };
        config.validate()?;
        // the official configs list attention at factors their UNets never reach (f16: 4): same network
        // (and in their own order)
        let official = [Self::official_f16(), Self::official_f8()].into_iter().find(|o| {
            let mut o2 = o.clone();
            o2.unet.attention_resolutions.retain(|d| config.unet.attention_resolutions.contains(d));
            o2.unet.attention_resolutions.sort_unstable();
            o2 == config
        });
        Ok(official.unwrap_or(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gen_nn::ShapeRecorder;

    fn unet_parameters(c: &LdmConfig) -> usize {
        let rec = ShapeRecorder::default();
        crate::ldm::Unet::new(rec.var_builder(), &c.unet).unwrap();
        rec.parameter_count()
    }

    #[test]
    fn official_unet_parameter_counts_match_the_fixture_readme() {
        // ../shared/golden/ldm/README.md: f16 270.27 M, f8 394.98 M (400 and 626 tensors)
        let f16 = unet_parameters(&LdmConfig::official_f16());
        assert_eq!((f16 as f64 / 1e4).round() / 100.0, 270.27, "{f16}");
        let f8 = unet_parameters(&LdmConfig::official_f8());
        assert_eq!((f8 as f64 / 1e4).round() / 100.0, 394.98, "{f8}");
    }

    #[test]
    fn the_architecture_is_read_off_the_checkpoint_shapes() {
        let shapes = |c: &LdmConfig| {
            let rec = ShapeRecorder::default();
            crate::ldm::Ldm::new(rec.var_builder(), c).unwrap(); // the Lightning keys
            rec.shapes()
        };
        for official in [LdmConfig::official_f16(), LdmConfig::official_f8()] {
            let m = shapes(&official);
            let got = LdmConfig::infer(&|k| m.get(k).cloned(), 32, official.unet.image_size).unwrap();
            assert_eq!(got, official);
        }
        // another size: three levels, two blocks, attention at 2 and 4, depth 2, 11 classes
        let mut c = LdmConfig::official_f8();
        c.unet.model_channels = 64;
        c.unet.num_res_blocks = 1;
        c.unet.attention_resolutions = vec![2, 4]; // inferred in increasing order
        c.unet.transformer_depth = 2;
        c.unet.context_dim = 96;
        c.n_classes = 11;
        let m = shapes(&c);
        assert_eq!(LdmConfig::infer(&|k| m.get(k).cloned(), 32, 32).unwrap(), c);
        let e = LdmConfig::infer(&|_| None, 32, 32).unwrap_err().to_string();
        assert!(e.contains("input_blocks.0.0.weight"), "{e}");
    }

    #[test]
    fn configs_that_cannot_build_are_named() {
        let mut c = LdmConfig::official_f16();
        c.unet.num_head_channels = 48;
        assert!(c.validate().unwrap_err().to_string().contains("heads of 48"));
        let mut c = LdmConfig::official_f16();
        c.unet.image_size = 15;
        assert!(c.validate().unwrap_err().to_string().contains("does not halve"));
    }
}
