//! gen-tokenizer: VQGAN-LC, numerically the official `vqgan-gpt-lc/models` code.

pub mod blocks;
pub mod codebook;
pub mod config;
pub mod decoder;
pub mod discriminator;
pub mod encoder;
pub mod load;
pub mod model;
pub mod quantizer;
pub mod train;
pub mod usage;

pub use config::{Projector, QuantizerKind, VqConfig};
pub use load::{
    load_tokenizer, read_weights, tokenizer_from_state_dict, tokenizer_sha256, write_model_dir, TokenizerWeights,
};
pub use model::VqModel;
