//! CLIP as gen uses it, in Hugging Face's `openai/clip-vit-large-patch14` layout: the vision tower gives
//! VQGAN-LC's codebook features (`gen init-codebook`), the text tower and its `tokenizer.json` resolve
//! `gen sample --prompt` to the class whose "a photo of a {name}" embeds closest.
//!
//! Both towers are built from one [`layer::EncoderLayer`] and read their architecture off the weights.
//! Why not candle-transformers' `clip` (which DESIGN.md suggests): the codebook recipe needs every patch
//! token after `ln_post` and the projection, the text side needs only the EOS embedding, and both are a
//! few dozen lines on our tested `Linear`, `LayerNorm` and attention; the crate (a whole model zoo, not
//! otherwise a dependency) would add minutes to every clean build for them.

pub mod layer;
pub mod prompt;
pub mod text;
pub mod vision;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

/// Where a user gets the weights; every "not found" names it.
pub const WHERE: &str = "CLIP ViT-L/14: model.safetensors of openai/clip-vit-large-patch14 on Hugging Face";

/// A CLIP checkpoint's tensors (safetensors, or a `.pth` state dict), on the CPU.
pub fn read_weights(path: &Path) -> gen_runtime::Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(gen_runtime::Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found ({WHERE})")),
        ));
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        gen_runtime::io::load_safetensors(path, &Device::Cpu)
    } else {
        gen_runtime::pth::load_state_dict(path, None)
    }
}
