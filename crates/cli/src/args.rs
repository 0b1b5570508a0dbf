//! Arguments every model subcommand shares: where it runs and how much at once.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use gen_runtime::DeviceSpec;

/// `--device`, `--dtype`, `--threads`, `--batch-size`, `--quiet`.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto | cpu | cuda | cuda:<i> (auto: CUDA when built with it and a GPU answers, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision of the model's weights and activations.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// CPU threads for our kernels and the BLAS (default: every core).
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub batch_size: usize,
    /// No progress bar, no notes, no device line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl DeviceArgs {
    /// Sets the thread count, opens the device and checks the dtype runs there.
    pub fn open(&self) -> Result<(Device, DType)> {
        if let Some(n) = self.threads {
            set_threads(n);
        }
        let dev = gen_runtime::open_device(self.device, self.quiet)?;
        let dtype = self.dtype.dtype();
        if dtype == DType::BF16 && dev.is_cpu() {
            bail!("--dtype bf16 is not supported on the CPU (Candle has no BF16 conv there); use f32 or f16");
        }
        Ok((dev, dtype))
    }
}

/// Rayon's global pool (our kernels; OpenBLAS follows it) gets `n` threads; only the first call counts.
pub fn set_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

/// clap value parser: an integer ≥ 1.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a positive integer")),
    }
}
