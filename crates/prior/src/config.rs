//! The GPT's architecture: the official minGPT hyper-parameters plus the vocabulary split into image codes
//! and class tokens (`n_codes + class` is a class's prefix token), and our two options for new models:
//! a learned null class for classifier-free guidance and a head tied to the token embedding.

use gen_runtime::{Error, Result};
use serde::{Deserialize, Serialize};

/// `[gpt]` in a model folder's `config.toml`, and the `[model]` table of a prior training config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Image tokens: the tokenizer's codebook size (ids `0..n_codes`).
    pub n_codes: usize,
    /// Classes: class `c` is fed as the prefix token `n_codes + c`.
    pub n_classes: usize,
    /// Positions of the learned `pos_emb` (official: 1 + 256 = 257; one more than is ever read).
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// A learned null class (prefix token `n_codes + n_classes`), trained by class dropout: classifier-free
    /// guidance needs it. The official GPT-LC has none.
    #[serde(default)]
    pub null_class: bool,
    /// The output head reads the token embedding's rows (no `head.weight`); the official head is untied.
    #[serde(default)]
    pub tied_head: bool,
    /// The classes' names in id order (empty: unknown; an official file's 1,000 are ImageNet's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

/// The sizes `gen` knows by name: (name, n_layer, n_head, n_embd).
pub const NAMED_SIZES: [(&str, usize, usize, usize); 2] = [
    // VQGANTransformer's hard-coded size (models_gpt.py, commented "GPT-small"; `gpt_type` is not read)
    ("gpt-lc", 24, 16, 1024),
    // the golden fixtures' tiny official model (../shared/golden/gpt, g1 / g2)
    ("golden-tiny", 2, 4, 64),
];

impl GptConfig {
    /// The official GPT-LC: 100,000 codes, 1,000 ImageNet classes, 24 × 16 × 1024, block 257.
    pub fn official() -> Self {
        GptConfig {
            n_codes: 100_000,
            n_classes: 1000,
            block_size: 257,
            n_layer: 24,
            n_head: 16,
            n_embd: 1024,
            null_class: false,
            tied_head: false,
            class_names: Vec::new(),
        }
    }

    /// Rows of the embedding and the head: codes, classes, and the null class when present.
    pub fn vocab(&self) -> usize {
        self.n_codes + self.n_classes + usize::from(self.null_class)
    }

    /// The prefix token of class `c` (`None`: the null class).
    pub fn class_token(&self, class: Option<usize>) -> u32 {
        match class {
            Some(c) => (self.n_codes + c) as u32,
            None => (self.n_codes + self.n_classes) as u32,
        }
    }

    /// Image tokens one sequence can hold after its class token.
    pub fn max_tokens(&self) -> usize {
        self.block_size.saturating_sub(1)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Every parameter's official name and shape, in the official registration order (the `attn.mask`
    /// buffers are not parameters).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (v, c) = (self.vocab(), self.n_embd);
        let mut out =
            vec![("tok_emb.weight".to_string(), vec![v, c]), ("pos_emb".to_string(), vec![1, self.block_size, c])];
        for i in 0..self.n_layer {
            let p = |s: &str| format!("blocks.{i}.{s}");
            for ln in ["ln1", "ln2"] {
                out.push((p(&format!("{ln}.weight")), vec![c]));
                out.push((p(&format!("{ln}.bias")), vec![c]));
            }
            for l in ["key", "query", "value", "proj"] {
                out.push((p(&format!("attn.{l}.weight")), vec![c, c]));
                out.push((p(&format!("attn.{l}.bias")), vec![c]));
            }
            out.push((p("mlp.0.weight"), vec![4 * c, c]));
            out.push((p("mlp.0.bias"), vec![4 * c]));
            out.push((p("mlp.2.weight"), vec![c, 4 * c]));
            out.push((p("mlp.2.bias"), vec![c]));
        }
        out.push(("ln_f.weight".to_string(), vec![c]));
        out.push(("ln_f.bias".to_string(), vec![c]));
        if !self.tied_head {
            out.push(("head.weight".to_string(), vec![v, c]));
        }
        out
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Every field checked, each failure naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::config(field, msg));
        if self.n_codes == 0 {
            return bad("n_codes", "must be at least 1".into());
        }
        if self.n_classes == 0 {
            return bad("n_classes", "must be at least 1 (a class-conditional prior)".into());
        }
        if self.block_size < 2 {
            return bad("block_size", format!("{} leaves no room for an image token after the class", self.block_size));
        }
        if self.n_layer == 0 || self.n_embd == 0 {
            return bad("n_layer", "n_layer and n_embd must be at least 1".into());
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad("n_head", format!("{} heads do not divide the width {}", self.n_head, self.n_embd));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.n_classes {
            return bad("class_names", format!("{} names for {} classes", self.class_names.len(), self.n_classes));
        }
        Ok(())
    }

    /// The head count of a known size with these layers and width (weights do not record it).
    pub fn known_heads(n_layer: usize, n_embd: usize) -> Option<usize> {
        NAMED_SIZES.iter().find(|s| s.1 == n_layer && s.3 == n_embd).map(|s| s.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_parameter_count_matches_the_fixture_readme() {
        // ../shared/golden/gpt/README.md, computed with the official class on the meta device
        assert_eq!(GptConfig::official().parameter_count(), 509_422_592);
        let four = GptConfig { n_classes: 4, ..GptConfig::official() };
        assert_eq!(four.parameter_count(), 507_382_784);
        let tiny = GptConfig {
            n_codes: 1000,
            n_classes: 10,
            block_size: 17,
            n_layer: 2,
            n_head: 4,
            n_embd: 64,
            ..GptConfig::official()
        };
        assert_eq!(tiny.parameter_count(), 230_464);
    }

    #[test]
    fn vocab_and_class_tokens() {
        let mut c = GptConfig::official();
        assert_eq!(c.vocab(), 101_000);
        assert_eq!(c.class_token(Some(207)), 100_207);
        c.null_class = true;
        assert_eq!(c.vocab(), 101_001);
        assert_eq!(c.class_token(None), 101_000);
        assert_eq!(c.max_tokens(), 256);
    }

    #[test]
    fn validate_names_the_field() {
        let c = GptConfig { n_head: 5, ..GptConfig::official() };
        assert!(c.validate().unwrap_err().to_string().contains("n_head"));
        let c = GptConfig { block_size: 1, ..GptConfig::official() };
        assert!(c.validate().unwrap_err().to_string().contains("block_size"));
        assert!(GptConfig::official().validate().is_ok());
        assert_eq!(GptConfig::known_heads(24, 1024), Some(16));
        assert_eq!(GptConfig::known_heads(3, 96), None);
    }
}
