//! gen-runtime: what every crate of `gen` needs below the models.

pub mod error;
pub mod pth;

pub use error::{Error, Result};
