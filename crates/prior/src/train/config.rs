//! A prior training run as one TOML file (`configs/prior/*.toml`): the network's size, AdamW and its
//! schedule, and the loop. The vocabulary (codes, classes) and the sequence length come from the
//! shards, so one config trains on any tokenizer's shards.

use gen_runtime::{Error, Result};
use gen_train::{LrSchedule, OptimConfig};
use serde::{Deserialize, Serialize};

use crate::config::GptConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    pub model: ModelSection,
    /// AdamW (official: betas 0.9 / 0.95, weight decay 0.01 on every weight), warmup + cosine per step.
    pub optim: OptimConfig,
    pub train: TrainSection,
}

/// The network (the vocabulary and block size come from the shards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// A learned null class trained by class dropout, for classifier-free guidance (official: none).
    #[serde(default)]
    pub null_class: bool,
    /// Head tied to the token embedding (official: untied).
    #[serde(default)]
    pub tied_head: bool,
    /// How the image tokens' embedding rows start: `random` (official N(0, 0.02)) or `codebook` (the
    /// tokenizer's projected codebook, standardised and randomly projected to the width, so codes that
    /// decode alike start alike; needs `--tokenizer`).
    #[serde(default)]
    pub embedding_init: EmbeddingInit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingInit {
    #[default]
    Random,
    Codebook,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Probability of keeping each input image token (official 0.8); the others become uniform ids.
    pub pkeep: f64,
    /// Label smoothing ε (official `--label_smooth 1` means 0.1; its default is off).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Probability of replacing the class by the null class (needs `null_class`).
    #[serde(default)]
    pub class_dropout: f64,
    /// Validation loss on the first N images of `--val-shards` at every checkpoint.
    #[serde(default = "default_val_images")]
    pub val_images: usize,
    /// Write the final model folder in f16 (half the size; sampling upcasts).
    #[serde(default)]
    pub export_f16: bool,
}

fn default_val_images() -> usize {
    1000
}

impl PriorConfig {
    /// Parses a config file's text; errors name the file.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<PriorConfig> {
        let c: PriorConfig =
            toml::from_str(text).map_err(|e| Error::format(path, gen_runtime::error::one_line_text(&e.to_string())))?;
        c.validate().map_err(|e| e.at(path))?;
        Ok(c)
    }

    /// Every number checked, naming the field.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let unit = |field: &str, v: f64, lo_open: bool| {
            let ok = if lo_open { v > 0.0 && v <= 1.0 } else { (0.0..1.0).contains(&v) };
            if ok {
                Ok(())
            } else {
                Err(Error::config(field, format!("{v} is outside {}", if lo_open { "(0, 1]" } else { "[0, 1)" })))
            }
        };
        unit("train.pkeep", t.pkeep, true)?;
        unit("train.label_smoothing", t.label_smoothing, false)?;
        unit("train.class_dropout", t.class_dropout, false)?;
        if t.class_dropout > 0.0 && !self.model.null_class {
            return Err(Error::config("train.class_dropout", "needs model.null_class = true (the class it drops to)"));
        }
        if t.steps == 0 || t.batch_size == 0 {
            return Err(Error::config("train.steps", "steps and batch_size must be at least 1"));
        }
        self.optim.validate()?;
        self.schedule().validate()
    }

    /// The network for shards of `n_codes` codes, `n_classes` classes and `seq_len` tokens per image.
    pub fn gpt(&self, n_codes: usize, class_names: &[String], seq_len: usize) -> Result<GptConfig> {
        let m = &self.model;
        let c = GptConfig {
            n_codes,
            n_classes: class_names.len(),
            block_size: seq_len + 1,
            n_layer: m.n_layer,
            n_head: m.n_head,
            n_embd: m.n_embd,
            null_class: m.null_class,
            tied_head: m.tied_head,
            class_names: class_names.to_vec(),
        };
        c.validate()?;
        Ok(c)
    }

    pub fn schedule(&self) -> LrSchedule {
        self.optim.schedule(self.train.steps)
    }
}
