//! `gen sample --prompt TEXT --clip DIR`: the class whose "a photo of a {name}" has the CLIP text
//! embedding closest (cosine) to the prompt's. DIR holds a Hugging Face CLIP's `model.safetensors` (or
//! `pytorch_model.bin`) and its `tokenizer.json`, e.g. openai/clip-vit-large-patch14.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gen_runtime::{Error, Result};
use tokenizers::Tokenizer;

use crate::text::{load_clip_text, ClipText};

/// Texts embedded per pass (1,000 ImageNet class names take 16 passes instead of 1,000).
const BATCH: usize = 64;

/// The template each class name is put in, as the issue and CLIP's zero-shot recipe use it.
pub const TEMPLATE: &str = "a photo of a {}";

pub struct ClipPrompts {
    pub model: ClipText,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    eos: u32,
}

/// The weights file of a CLIP folder: the first of the names Hugging Face uses that exists.
fn weights_in(dir: &Path) -> Result<PathBuf> {
    let names = ["model.safetensors", "pytorch_model.bin"];
    names.iter().map(|n| dir.join(n)).find(|p| p.exists()).ok_or_else(|| {
        Error::io(
            dir.join(names[0]),
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found ({})", crate::WHERE)),
        )
    })
}

impl ClipPrompts {
    /// Opens a CLIP folder (`model.safetensors` + `tokenizer.json`).
    pub fn open(dir: &Path, dev: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("not a folder (--clip wants the folder of {})", crate::WHERE),
                ),
            ));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::io(
                &tokenizer_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found (the CLIP folder's tokenizer.json from Hugging Face)",
                ),
            ));
        }
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::format(&tokenizer_path, e.to_string()))?;
        let eos = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| Error::format(&tokenizer_path, "no <|endoftext|> token: not a CLIP tokenizer"))?;
        let model = load_clip_text(&weights_in(dir)?, dev)?;
        if tokenizer.get_vocab_size(true) > model.config.vocab {
            return Err(Error::format(
                &tokenizer_path,
                format!(
                    "{} tokens, but the text model has {} embeddings",
                    tokenizer.get_vocab_size(true),
                    model.config.vocab
                ),
            ));
        }
        Ok(ClipPrompts { model, tokenizer, tokenizer_path, eos })
    }

    /// The token ids of a text, start and end tokens included; a text longer than the model's positions
    /// is cut and keeps its end token (as `clip.tokenize(..., truncate=True)` does).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::format(&self.tokenizer_path, e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        let max = self.model.config.positions;
        if ids.len() > max {
            ids.truncate(max);
            ids[max - 1] = self.eos;
        }
        Ok(ids)
    }

    /// The text's embedding, unit length [output_dim].
    pub fn embed(&self, text: &str) -> Result<Tensor> {
        Ok(self.embed_all(&[text.to_string()])?.squeeze(0)?)
    }

    /// Unit-length embeddings of many texts [N, output_dim], a batch of [`BATCH`] texts per pass.
    pub fn embed_all(&self, texts: &[String]) -> Result<Tensor> {
        let ids = texts.iter().map(|t| self.ids(t)).collect::<Result<Vec<_>>>()?;
        let parts = ids
            .chunks(BATCH)
            .map(|chunk| self.model.embed_batch(&chunk.iter().map(Vec::as_slice).collect::<Vec<_>>(), self.eos))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let e = Tensor::cat(&parts, 0)?;
        Ok(e.broadcast_div(&e.sqr()?.sum_keepdim(1)?.sqrt()?)?)
    }

    /// The class (index into `names`) whose templated name is closest to `prompt`, and the cosine.
    pub fn nearest_class(&self, prompt: &str, names: &[String]) -> Result<(usize, f32)> {
        if prompt.trim().is_empty() {
            return Err(Error::invalid("--prompt is empty"));
        }
        if names.is_empty() {
            return Err(Error::invalid("no class names to match --prompt against"));
        }
        let p = self.embed(prompt)?;
        let templated: Vec<String> = names.iter().map(|n| TEMPLATE.replace("{}", n)).collect();
        let cos = self.embed_all(&templated)?.matmul(&p.unsqueeze(1)?)?.squeeze(1)?.to_vec1::<f32>()?;
        let best = cos.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &c)| if c > b.1 { (i, c) } else { b });
        Ok(best)
    }
}
