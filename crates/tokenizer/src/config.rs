//! The tokenizer's architecture as plain data: named constructors for the official releases, TOML for
//! model folders, and inference from a state dict's key names and shapes (for official `.pth` files).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How the frozen codebook [N, D] is mapped into the latent space (`--use_cblinear`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Projector {
    /// `use_cblinear 0`: the codebook is used as is (D must equal embed_dim).
    None,
    /// `use_cblinear 1`: `Linear(D, embed_dim)` with bias.
    Linear,
    /// `use_cblinear 2`: `Linear(D, hidden) → ReLU → Linear(hidden, embed_dim)` (official hidden 256).
    Mlp { hidden: usize },
}

/// `--quantizer_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizerKind {
    /// `org`: the LC quantizer (frozen codebook, trained projector). Every released model.
    Lc,
    /// `ema`: EMA codebook updates (the official branch; only consistent without a projector).
    Ema,
}

/// taming `ddconfig` + the VQGAN-LC quantizer arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_resolutions: Vec<usize>,
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub z_channels: usize,
    /// From `--embed_dim`, not the YAML (vq-f8.yaml says 256; the release uses 4).
    pub embed_dim: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub projector: Projector,
    pub quantizer: QuantizerKind,
}

impl VqConfig {
    /// Official `vqgan-lc-100K-f16-dim8`: 256² → 16×16 tokens, 100,000 CLIP codes.
    pub fn f16() -> Self {
        VqConfig {
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            z_channels: 256,
            embed_dim: 8,
            codebook_size: 100_000,
            codebook_dim: 768,
            projector: Projector::Linear,
            quantizer: QuantizerKind::Lc,
        }
    }

    /// Official `vqgan-lc-100K-f8-dim4`: 256² → 32×32 tokens (its `[16]` attention level is never reached).
    pub fn f8() -> Self {
        VqConfig { ch_mult: vec![1, 2, 2, 4], embed_dim: 4, ..Self::f16() }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "vq-f16" | "f16" => Some(Self::f16()),
            "vq-f8" | "f8" => Some(Self::f8()),
            _ => None,
        }
    }

    pub fn num_levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// Downsampling factor (16 for f16).
    pub fn factor(&self) -> usize {
        1 << (self.num_levels() - 1)
    }

    /// Token grid side for the configured resolution.
    pub fn latent_size(&self) -> usize {
        self.resolution / self.factor()
    }

    /// Whether level `l` (0 = full resolution) has attention: `curr_res in attn_resolutions`.
    pub fn attn_at_level(&self, l: usize) -> bool {
        self.attn_resolutions.contains(&(self.resolution >> l))
    }

    /// Checks the numbers fit together; the message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.ch_mult.is_empty() || self.ch == 0 || self.num_res_blocks == 0 {
            return Err("ch, ch_mult and num_res_blocks must be non-empty / positive".into());
        }
        if self.ch % 32 != 0 || self.ch_mult.iter().any(|m| (self.ch * m) % 32 != 0) {
            return Err(format!("ch {} × ch_mult {:?} must be multiples of 32 (GroupNorm(32))", self.ch, self.ch_mult));
        }
        if self.resolution % self.factor() != 0 {
            return Err(format!("resolution {} is not divisible by {}", self.resolution, self.factor()));
        }
        if self.projector == Projector::None && self.codebook_dim != self.embed_dim {
            return Err(format!(
                "codebook dim {} differs from embed_dim {} and there is no projector",
                self.codebook_dim, self.embed_dim
            ));
        }
        Ok(())
    }

    /// Reads the architecture off an official state dict (names → shapes). `resolution` is not stored in
    /// the weights: pass the training `image_size` (the `.pth` `args` has it), else the official 256.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>, resolution: usize) -> Result<Self, String> {
        let get = |k: &str| shapes.get(k).ok_or_else(|| format!("missing key '{k}'"));
        let conv_in = get("encoder.conv_in.weight")?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let levels =
            (0..).take_while(|l| shapes.contains_key(&format!("encoder.down.{l}.block.0.conv1.weight"))).count();
        if levels == 0 {
            return Err("missing key 'encoder.down.0.block.0.conv1.weight'".into());
        }
        let ch_mult = (0..levels)
            .map(|l| get(&format!("encoder.down.{l}.block.0.conv2.weight")).map(|s| s[0] / ch))
            .collect::<Result<Vec<_>, _>>()?;
        let num_res_blocks =
            (0..).take_while(|i| shapes.contains_key(&format!("encoder.down.0.block.{i}.conv1.weight"))).count();
        let attn_resolutions = (0..levels)
            .filter(|l| shapes.contains_key(&format!("encoder.down.{l}.attn.0.q.weight")))
            .map(|l| resolution >> l)
            .collect();
        let quant_conv = get("quant_conv.weight")?;
        let (embed_dim, z_channels) = (quant_conv[0], quant_conv[1]);
        let cb = get("tok_embeddings.weight")?;
        let projector = if shapes.contains_key("codebook_projection.weight") {
            Projector::Linear
        } else if let Some(s) = shapes.get("codebook_projection.0.weight") {
            Projector::Mlp { hidden: s[0] }
        } else {
            Projector::None
        };
        let quantizer = if shapes.contains_key("cluster_size") { QuantizerKind::Ema } else { QuantizerKind::Lc };
        let cfg = VqConfig {
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            resolution,
            in_channels,
            out_ch: get("decoder.conv_out.weight")?[0],
            z_channels,
            embed_dim,
            codebook_size: cb[0],
            codebook_dim: cb[1],
            projector,
            quantizer,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_f16_has_16x16_tokens_and_attention_at_16() {
        let c = VqConfig::f16();
        assert_eq!(c.latent_size(), 16);
        assert!(c.attn_at_level(4));
        assert!(!c.attn_at_level(3));
        c.validate().unwrap();
    }

    #[test]
    fn official_f8_never_reaches_its_attention_level() {
        let c = VqConfig::f8();
        assert_eq!(c.latent_size(), 32);
        assert!((0..c.num_levels()).all(|l| !c.attn_at_level(l)));
    }

    #[test]
    fn config_round_trips_through_toml() {
        let c = VqConfig { projector: Projector::Mlp { hidden: 256 }, ..VqConfig::f8() };
        let s = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<VqConfig>(&s).unwrap(), c);
    }
}
