//! The DiT hyper-parameters (`DiT.__init__`) and the official named sizes (`DiT_models`).

use serde::{Deserialize, Serialize};

/// The arguments of the official `DiT(...)` constructor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Latent side (16 for the f16 LC latent of a 256×256 image).
    pub input_size: usize,
    pub patch_size: usize,
    /// Latent channels (`embed_dim` of the tokenizer: 8 for VQGAN-LC).
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_class_dropout")]
    pub class_dropout_prob: f64,
    pub num_classes: usize,
    /// Predict the variance too (`out_channels = 2·in_channels`).
    #[serde(default = "default_true")]
    pub learn_sigma: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_class_dropout() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

/// `DiT_models`: (name, depth, hidden, heads); each exists with patch 2, 4 and 8 (`DiT-XL/2`, …).
pub const NAMED_SIZES: [(&str, usize, usize, usize); 4] =
    [("DiT-S", 12, 384, 6), ("DiT-B", 12, 768, 12), ("DiT-L", 24, 1024, 16), ("DiT-XL", 28, 1152, 16)];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DitConfigError {
    #[error("dit config: unknown size '{0}' (DiT-S, DiT-B, DiT-L or DiT-XL, each /2, /4 or /8)")]
    UnknownSize(String),
    #[error("dit config: {0}")]
    Invalid(String),
}

impl DitConfig {
    /// A named official size (`"DiT-XL/2"`) over a latent of `in_channels × input_size²` and `num_classes`.
    pub fn named(
        name: &str,
        input_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<Self, DitConfigError> {
        let unknown = || DitConfigError::UnknownSize(name.to_string());
        let (base, patch) = name.split_once('/').ok_or_else(unknown)?;
        let patch: usize = patch.parse().map_err(|_| unknown())?;
        let &(_, depth, hidden, heads) =
            NAMED_SIZES.iter().find(|s| s.0 == base).filter(|_| matches!(patch, 2 | 4 | 8)).ok_or_else(unknown)?;
        let c = DitConfig {
            input_size,
            patch_size: patch,
            in_channels,
            hidden_size: hidden,
            depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            class_dropout_prob: 0.1,
            num_classes,
            learn_sigma: true,
        };
        c.validate()?;
        Ok(c)
    }

    /// The official DiT-LC: DiT-XL/2 on the 8×16×16 latent, 1000 ImageNet classes.
    pub fn official_lc() -> Self {
        Self::named("DiT-XL/2", 16, 8, 1000).expect("a named size")
    }

    pub fn validate(&self) -> Result<(), DitConfigError> {
        let bad = |m: String| Err(DitConfigError::Invalid(m));
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!("input_size {} is not a multiple of patch_size {}", self.input_size, self.patch_size));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!("hidden_size {} does not split into {} heads", self.hidden_size, self.num_heads));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(format!("hidden_size {} must be a multiple of 4 (2-D sin-cos positions)", self.hidden_size));
        }
        if self.in_channels == 0 || self.depth == 0 || self.num_classes == 0 {
            return bad("in_channels, depth and num_classes must be positive".into());
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return bad(format!("class_dropout_prob {} is not in [0, 1)", self.class_dropout_prob));
        }
        if self.mlp_ratio <= 0.0 {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        Ok(())
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Rows of the label table: the classes, plus the null class when guidance is trained.
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    /// The null class (the CFG unconditional label), if the table has one.
    pub fn null_class(&self) -> Option<u32> {
        (self.class_dropout_prob > 0.0).then_some(self.num_classes as u32)
    }

    /// Every tensor of the official state dict with its shape (`pos_embed` included).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, p, c) = (self.hidden_size, self.patch_size, self.in_channels);
        let (h, n) = (self.mlp_hidden(), self.grid() * self.grid());
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("x_embedder.proj.weight".into(), vec![d, c, p, p]),
            ("x_embedder.proj.bias".into(), vec![d]),
            ("pos_embed".into(), vec![1, n, d]),
            ("t_embedder.mlp.0.weight".into(), vec![d, 256]),
            ("t_embedder.mlp.0.bias".into(), vec![d]),
            ("t_embedder.mlp.2.weight".into(), vec![d, d]),
            ("t_embedder.mlp.2.bias".into(), vec![d]),
            ("y_embedder.embedding_table.weight".into(), vec![self.label_rows(), d]),
        ];
        for i in 0..self.depth {
            let b = format!("blocks.{i}");
            for (name, shape) in [
                ("attn.qkv.weight", vec![3 * d, d]),
                ("attn.qkv.bias", vec![3 * d]),
                ("attn.proj.weight", vec![d, d]),
                ("attn.proj.bias", vec![d]),
                ("mlp.fc1.weight", vec![h, d]),
                ("mlp.fc1.bias", vec![h]),
                ("mlp.fc2.weight", vec![d, h]),
                ("mlp.fc2.bias", vec![d]),
                ("adaLN_modulation.1.weight", vec![6 * d, d]),
                ("adaLN_modulation.1.bias", vec![6 * d]),
            ] {
                v.push((format!("{b}.{name}"), shape));
            }
        }
        v.push(("final_layer.adaLN_modulation.1.weight".into(), vec![2 * d, d]));
        v.push(("final_layer.adaLN_modulation.1.bias".into(), vec![2 * d]));
        v.push(("final_layer.linear.weight".into(), vec![p * p * self.out_channels(), d]));
        v.push(("final_layer.linear.bias".into(), vec![p * p * self.out_channels()]));
        v
    }

    /// Parameters of the state dict, `pos_embed` included (as the official count is).
    pub fn parameter_count(&self) -> usize {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_lc_parameter_count() {
        // ../shared/golden/dit/README.md gives 675,184,960 "incl. the 294,912-entry pos_embed", i.e. 256
        // tokens: that is DiT-XL/2 on a 32×32 latent. runTrainDiT.sh passes --latent_size 16 (64 tokens,
        // a 73,728-entry pos_embed), 221,184 fewer.
        assert_eq!(DitConfig::named("DiT-XL/2", 32, 8, 1000).unwrap().parameter_count(), 675_184_960);
        assert_eq!(DitConfig::official_lc().parameter_count(), 675_184_960 - 192 * 1152);
    }

    #[test]
    fn the_network_reads_exactly_the_listed_tensors() {
        let c = DitConfig::official_lc();
        let rec = gen_nn::ShapeRecorder::default();
        crate::dit::Dit::new(rec.var_builder(), &c).unwrap();
        let mut want: std::collections::HashMap<String, Vec<usize>> = c.tensor_shapes().into_iter().collect();
        // pos_embed is computed when the weights do not hold it
        want.remove("pos_embed");
        assert_eq!(rec.shapes(), want);
    }

    #[test]
    fn unknown_sizes_are_named_in_the_error() {
        assert_eq!(DitConfig::named("DiT-M/2", 16, 8, 10), Err(DitConfigError::UnknownSize("DiT-M/2".into())));
        assert!(DitConfig::named("DiT-S/3", 16, 8, 10).is_err());
        assert!(DitConfig::named("DiT-S/8", 12, 8, 10).unwrap_err().to_string().contains("multiple of patch_size"));
    }
}
