//! gen-nn: layers and ops shared by every model of `gen`.
//!
//! Models call `kernels::*` (through `Conv2d`, `GroupNorm`, …) and never Candle's ops whose gradient is
//! silently cut or wrong (max_pool2d, upsample_nearest2d, layer_norm, softmax_last_dim, sdpa, rope).

pub mod attention;
pub mod conv;
pub mod gradcheck;
pub mod kernels;
pub mod norm;
pub mod ops;
pub mod weights;

pub use conv::Conv2d;
pub use norm::GroupNorm;
pub use weights::{Params, RandomWeights, Weights};
