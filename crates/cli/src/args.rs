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
    /// Opens the device and checks the dtype runs there (`--threads` is applied before the command runs:
    /// [`build_pool`]).
    pub fn open(&self) -> Result<(Device, DType)> {
        let dev = gen_runtime::open_device(self.device, self.quiet)?;
        let dtype = self.dtype.dtype();
        if dtype == DType::BF16 && dev.is_cpu() {
            bail!("--dtype bf16 is not supported on the CPU (Candle has no BF16 conv there); use f32 or f16");
        }
        Ok((dev, dtype))
    }

    /// The training commands compute in f32: a half precision is refused in one line rather than
    /// silently ignored.
    pub fn training_in_f32(&self, command: &str) -> Result<()> {
        let name = match self.dtype {
            Precision::F32 => return Ok(()),
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        };
        bail!("--dtype {name}: `gen {command}` trains in f32 only so far (mixed-precision training is not implemented)")
    }

    /// `gen train` and `gen train-prior` also run on the CPU only so far: an explicit CUDA device is
    /// refused; `auto` trains on the CPU.
    pub fn training_on_cpu(&self, command: &str) -> Result<()> {
        if let DeviceSpec::Cuda(i) = self.device {
            bail!("--device cuda:{i}: `gen {command}` trains on the CPU only so far (training on CUDA is not implemented)");
        }
        self.training_in_f32(command)
    }
}

/// Builds rayon's global pool (our kernels; Candle's matmul and OpenBLAS follow it) with `threads`, or
/// every core; called once, before any thread exists. Commands run on one of its workers (crate
/// [`main`](crate::main)), with the main thread's stack size.
pub fn build_pool(threads: Option<usize>) {
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if let Some(n) = threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        pool = pool.num_threads(n);
    }
    // fails only if a pool was already built, which then stays
    let _ = pool.build_global();
}

/// clap value parser: an integer ≥ 1.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a positive integer")),
    }
}
