//! gen-prior: GPT-LC, the class-conditional autoregressive prior of VQGAN-LC (the official minGPT), its
//! batched KV-cache sampler, and prior training on token shards.

pub mod config;
pub mod load;
pub mod loss;
pub mod model;
pub mod sample;
pub mod train;

pub use config::GptConfig;
pub use load::{load_gpt, read_gpt, GptHints, GptWeights};
pub use model::{Gpt, GptCache};
pub use sample::{generate, Request, Sampling};
