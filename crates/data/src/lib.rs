//! gen-data: data sets and the files models read: Fashion-MNIST IDX, token files.

pub mod classes;
pub mod fmnist;
pub mod shards;
pub mod tokens;
