//! gen-data: the data sets `gen` trains and evaluates on.

pub mod fmnist;
