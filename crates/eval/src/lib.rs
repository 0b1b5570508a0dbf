//! gen-eval: the evaluator. FID exactly as pytorch-fid computes it (the FID InceptionV3, its
//! preprocessing, f64 statistics, the Fréchet distance), and the statistics files of pytorch-fid,
//! clean-fid and the ADM evaluator.

pub mod classifier;
pub mod classifier_train;
pub mod features;
pub mod features_file;
pub mod frechet;
pub mod inception;
pub mod inception_score;
pub mod lpips;
pub mod npz;
pub mod precision_recall;
pub mod preprocess;
pub mod quality;
pub mod stats;
pub mod stats_file;

pub use frechet::{frechet_distance, FrechetError, FrechetOptions, Gaussian};
pub use inception::{FidInception, Tap};
pub use stats::StatsAccumulator;
