//! The arguments that pick a tokenizer, shared by reconstruct / encode / decode.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use gen_tokenizer::{load_tokenizer, VqModel};

use crate::args::{at_least_one, DeviceArgs};

#[derive(Args, Clone, Debug)]
pub struct TokenizerArgs {
    /// Model folder (config.toml + model.safetensors) or an official VQGAN-LC `.pth` checkpoint.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Codebook for an official checkpoint (`codebook-100K.pth`, a bare [N, D] tensor).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// Image size the model works at (default: the model's own, 256 for official checkpoints); a
    /// multiple of the downsampling factor.
    #[arg(long, value_parser = at_least_one)]
    pub resolution: Option<usize>,
    #[command(flatten)]
    pub run: DeviceArgs,
}

impl TokenizerArgs {
    /// The tokenizer ready for inference, on the chosen device and dtype.
    pub fn open(&self) -> Result<(VqModel, Device, DType)> {
        let (dev, dtype) = self.run.open()?;
        let model = load_tokenizer(&self.tokenizer, self.codebook.as_deref(), self.resolution, dtype, &dev)?;
        Ok((model, dev, dtype))
    }
}
