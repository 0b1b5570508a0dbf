//! One file per subcommand; each parses its arguments, calls the library and prints.

pub mod bench;
pub mod codebook_experiment;
pub mod convert;
pub mod datasets;
pub mod decode;
pub mod encode;
pub mod eval_classes;
pub mod export_fmnist;
pub mod fid;
mod images;
pub mod init_codebook;
pub mod reconstruct;
pub mod rfid;
pub mod sample;
pub mod sample_diffusion;
pub mod tokenize;
mod tokenizer_args;
pub mod train;
pub mod train_classifier;
pub mod train_prior;
mod train_steps;
pub mod train_tokenizer;
pub mod utilization;
