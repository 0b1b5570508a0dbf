//! gen-nn: layers and ops shared by every model of `gen`.
//!
//! Models call `kernels::*` (through `Conv2d`, `GroupNorm`, `LayerNorm`, attention, …) and never Candle's
//! ops whose gradient is silently cut or wrong (max_pool2d, upsample_nearest2d, layer_norm,
//! softmax_last_dim, sdpa, rope). Every layer is built from a `VarBuilder` with the torch key names.

pub mod attention;
pub mod batch;
pub mod batch_norm;
pub mod conv;
pub mod embedding;
pub mod gradcheck;
pub mod kernels;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod weights;

pub use attention::{KvCache, Mask};
pub use batch_norm::{BatchNorm2d, RunningStats};
pub use conv::Conv2d;
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::{GroupNorm, LayerNorm};
pub use weights::{Params, RandomWeights, ShapeRecorder, Weights};
