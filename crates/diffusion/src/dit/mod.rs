//! DiT (Peebles & Xie), as `dit-lc/models.py` builds it; SiT-LC uses the same network.

pub mod config;
pub mod model;

pub use config::DitConfig;
pub use model::{Dit, DitTrace};
