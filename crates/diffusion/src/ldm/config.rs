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
    fn configs_that_cannot_build_are_named() {
        let mut c = LdmConfig::official_f16();
        c.unet.num_head_channels = 48;
        assert!(c.validate().unwrap_err().to_string().contains("heads of 48"));
        let mut c = LdmConfig::official_f16();
        c.unet.image_size = 15;
        assert!(c.validate().unwrap_err().to_string().contains("does not halve"));
    }
}
