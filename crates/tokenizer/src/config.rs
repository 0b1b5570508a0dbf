//! The tokenizer's architecture as plain data: named constructors for the official releases, TOML for
//! model folders, and inference from a state dict's key names and shapes (for official `.pth` files).

use std::collections::HashMap;

use gen_runtime::{Error, Result};
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

/// The quantizer (`--quantizer_type` and `--tuning_codebook` of the official code, plus FC and SimVQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizerKind {
    /// `org` with a frozen codebook: the LC quantizer (k-means codebook, trained projector). Every released model.
    Lc,
    /// `ema`: EMA codebook updates (the official branch; only consistent without a projector).
    Ema,
    /// `org` with `--tuning_codebook -1`: a learned codebook (VQGAN), no projector.
    Vqgan,
    /// Factorised codes: a learned codebook searched by cosine in the low-dim latent (ViT-VQGAN, LlamaGen).
    Fc,
    /// SimVQ: a frozen random codebook [N, embed_dim] reparameterised by one trained Linear(embed_dim, embed_dim).
    Simvq,
}

impl QuantizerKind {
    pub const ALL: [QuantizerKind; 5] =
        [QuantizerKind::Vqgan, QuantizerKind::Ema, QuantizerKind::Fc, QuantizerKind::Simvq, QuantizerKind::Lc];

    pub fn name(self) -> &'static str {
        match self {
            QuantizerKind::Lc => "lc",
            QuantizerKind::Ema => "ema",
            QuantizerKind::Vqgan => "vqgan",
            QuantizerKind::Fc => "fc",
            QuantizerKind::Simvq => "simvq",
        }
    }

    /// Whether the codebook rows are trained parameters (else frozen, or moved by EMA).
    pub fn learns_codebook(self) -> bool {
        matches!(self, QuantizerKind::Vqgan | QuantizerKind::Fc)
    }
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

    /// The same network working at `resolution`: the attention stays on the levels it was trained on
    /// (its `attn_resolutions` scale with the size), so a 256² model encodes 512² images with attention
    /// over a 32×32 grid instead of 16×16. Every layer is convolutional or attends over whatever grid
    /// arrives; only the size of the images and the token grid change.
    pub fn at_resolution(&self, resolution: usize) -> Self {
        let attn_resolutions =
            (0..self.num_levels()).filter(|&l| self.attn_at_level(l)).map(|l| resolution >> l).collect();
        VqConfig { resolution, attn_resolutions, ..self.clone() }
    }

    /// Whether level `l` (0 = full resolution) has attention: `curr_res in attn_resolutions`.
    pub fn attn_at_level(&self, l: usize) -> bool {
        self.attn_resolutions.contains(&(self.resolution >> l))
    }

    /// Checks the numbers fit together; the error names the field at fault. Every config read from a file
    /// or inferred from weights passes here before a layer is built.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("ch", self.ch),
            ("num_res_blocks", self.num_res_blocks),
            ("resolution", self.resolution),
            ("in_channels", self.in_channels),
            ("out_ch", self.out_ch),
            ("z_channels", self.z_channels),
            ("embed_dim", self.embed_dim),
            ("codebook_size", self.codebook_size),
            ("codebook_dim", self.codebook_dim),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(*field, "must be at least 1"));
        }
        if self.ch_mult.is_empty() || self.ch_mult.len() > MAX_LEVELS || self.ch_mult.contains(&0) {
            return Err(Error::config(
                "ch_mult",
                format!("{:?} must hold 1 to {MAX_LEVELS} positive multipliers", self.ch_mult),
            ));
        }
        if !self.ch.is_multiple_of(32) || self.ch_mult.iter().any(|m| !(self.ch * m).is_multiple_of(32)) {
            return Err(Error::config(
                "ch",
                format!("{} × ch_mult {:?} must be multiples of 32 (GroupNorm(32))", self.ch, self.ch_mult),
            ));
        }
        if !self.resolution.is_multiple_of(self.factor()) {
            return Err(Error::config(
                "resolution",
                format!("{} is not a multiple of the downsampling factor {}", self.resolution, self.factor()),
            ));
        }
        if let Projector::Mlp { hidden: 0 } = self.projector {
            return Err(Error::config("projector.hidden", "must be at least 1"));
        }
        let projected = matches!(self.quantizer, QuantizerKind::Lc | QuantizerKind::Simvq);
        if !projected && self.projector != Projector::None {
            return Err(Error::config(
                "projector",
                format!("the {} quantizer has no codebook projector (use kind = \"none\")", self.quantizer.name()),
            ));
        }
        if self.quantizer == QuantizerKind::Simvq && self.codebook_dim != self.embed_dim {
            return Err(Error::config(
                "codebook_dim",
                format!("SimVQ's random codebook has the latent's dim {}, not {}", self.embed_dim, self.codebook_dim),
            ));
        }
        if self.projector == Projector::None && self.codebook_dim != self.embed_dim {
            return Err(Error::config(
                "codebook_dim",
                format!("{} differs from embed_dim {} and there is no projector", self.codebook_dim, self.embed_dim),
            ));
        }
        Ok(())
    }

    /// Reads the architecture off an official state dict (names → shapes). `resolution` is not stored in
    /// the weights: pass the training `image_size` (the `.pth` `args` has it), else the official 256.
    /// Every shape is checked for its rank and for zero sizes before it is used.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>, resolution: usize) -> Result<Self> {
        let get = |k: &str, rank: usize| -> Result<&[usize]> {
            let s = shapes.get(k).ok_or_else(|| Error::config(k, "missing from the weights"))?;
            if s.len() != rank || s.contains(&0) {
                return Err(Error::config(k, format!("has shape {s:?}, expected {rank} non-zero dimensions")));
            }
            Ok(s)
        };
        let conv_in = get("encoder.conv_in.weight", 4)?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let levels = (0..MAX_LEVELS + 1)
            .take_while(|l| shapes.contains_key(&format!("encoder.down.{l}.block.0.conv1.weight")))
            .count();
        if levels == 0 || levels > MAX_LEVELS {
            return Err(Error::config(
                "encoder.down",
                format!("found {levels} levels ('encoder.down.<l>.block.0.conv1.weight'), expected 1 to {MAX_LEVELS}"),
            ));
        }
        let ch_mult = (0..levels)
            .map(|l| {
                let key = format!("encoder.down.{l}.block.0.conv2.weight");
                let width = get(&key, 4)?[0];
                if !width.is_multiple_of(ch) {
                    return Err(Error::config(key, format!("width {width} is not a multiple of ch {ch}")));
                }
                Ok(width / ch)
            })
            .collect::<Result<Vec<_>>>()?;
        let num_res_blocks =
            (0..).take_while(|i| shapes.contains_key(&format!("encoder.down.0.block.{i}.conv1.weight"))).count();
        let attn_resolutions = (0..levels)
            .filter(|l| shapes.contains_key(&format!("encoder.down.{l}.attn.0.q.weight")))
            .map(|l| resolution >> l)
            .collect();
        let quant_conv = get("quant_conv.weight", 4)?;
        let (embed_dim, z_channels) = (quant_conv[0], quant_conv[1]);
        let cb = get("tok_embeddings.weight", 2)?;
        let projector = if shapes.contains_key("codebook_projection.weight") {
            get("codebook_projection.weight", 2)?;
            Projector::Linear
        } else if shapes.contains_key("codebook_projection.0.weight") {
            Projector::Mlp { hidden: get("codebook_projection.0.weight", 2)?[0] }
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
            out_ch: get("decoder.conv_out.weight", 4)?[0],
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

/// More levels than this would downsample by more than 2^11; no config comes close.
const MAX_LEVELS: usize = 12;

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

    fn official_shapes() -> HashMap<String, Vec<usize>> {
        let mut s = HashMap::new();
        s.insert("encoder.conv_in.weight".to_string(), vec![32, 3, 3, 3]);
        s.insert("encoder.down.0.block.0.conv1.weight".to_string(), vec![32, 32, 3, 3]);
        s.insert("encoder.down.0.block.0.conv2.weight".to_string(), vec![32, 32, 3, 3]);
        s.insert("quant_conv.weight".to_string(), vec![8, 32, 1, 1]);
        s.insert("tok_embeddings.weight".to_string(), vec![100, 16]);
        s.insert("codebook_projection.weight".to_string(), vec![8, 16]);
        s.insert("decoder.conv_out.weight".to_string(), vec![3, 32, 3, 3]);
        s
    }

    #[test]
    fn inferring_from_well_formed_shapes_works() {
        let c = VqConfig::infer(&official_shapes(), 64).unwrap();
        assert_eq!((c.ch, c.ch_mult.clone(), c.embed_dim, c.codebook_size), (32, vec![1], 8, 100));
    }

    #[test]
    fn inferring_from_crafted_shapes_is_an_error_naming_the_key_not_a_panic() {
        let cases: [(&str, Vec<usize>, &str); 6] = [
            ("encoder.conv_in.weight", vec![32], "encoder.conv_in.weight: has shape [32]"),
            ("encoder.conv_in.weight", vec![0, 3, 3, 3], "encoder.conv_in.weight: has shape [0, 3, 3, 3]"),
            ("encoder.down.0.block.0.conv2.weight", vec![48, 32, 3, 3], "not a multiple of ch 32"),
            ("tok_embeddings.weight", vec![100], "tok_embeddings.weight: has shape [100]"),
            ("codebook_projection.weight", vec![8], "codebook_projection.weight: has shape [8]"),
            ("quant_conv.weight", vec![0, 32, 1, 1], "quant_conv.weight"),
        ];
        for (key, shape, needle) in cases {
            let mut s = official_shapes();
            s.insert(key.to_string(), shape);
            let e = VqConfig::infer(&s, 64).unwrap_err().to_string();
            assert!(e.contains(needle), "{key}: {e}");
        }
        let mut s = official_shapes();
        s.remove("quant_conv.weight");
        assert!(VqConfig::infer(&s, 64).unwrap_err().to_string().contains("quant_conv.weight"));
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let cases = [
            (VqConfig { resolution: 0, ..VqConfig::f16() }, "resolution: must be at least 1"),
            (VqConfig { resolution: 100, ..VqConfig::f16() }, "resolution: 100 is not a multiple"),
            (VqConfig { ch_mult: vec![1; 70], ..VqConfig::f16() }, "ch_mult"),
            (VqConfig { ch_mult: vec![1, 0], ..VqConfig::f16() }, "ch_mult"),
            (VqConfig { codebook_size: 0, ..VqConfig::f16() }, "codebook_size"),
            (VqConfig { projector: Projector::Mlp { hidden: 0 }, ..VqConfig::f16() }, "projector.hidden"),
        ];
        for (cfg, needle) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn config_round_trips_through_toml() {
        let c = VqConfig { projector: Projector::Mlp { hidden: 256 }, ..VqConfig::f8() };
        let s = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<VqConfig>(&s).unwrap(), c);
    }
}
