//! gen-runtime: what every crate of `gen` needs below the models: device and dtype choice, a seeded
//! RNG, atomic safetensors I/O, the safe `.pth` reader, image I/O and the official preprocessing.

pub mod device;
pub mod error;
pub mod imageio;
pub mod io;
pub mod model_dir;
pub mod plot;
pub mod progress;
pub mod pth;
pub mod rng;
pub mod zip_guard;

pub use device::{open_device, parse_dtype, DeviceSpec};
pub use error::{one_line, Error, Result};
pub use model_dir::{ModelDir, ModelKind};
pub use rng::Rng;
