//! `--device auto|cpu|cuda[:i]` and `--dtype f32|f16|bf16`.
//!
//! We never call `Device::cuda_if_available`: in a build without CUDA it silently returns the CPU.
//! `auto` tries CUDA only when built with the `cuda` feature and says what it picked.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(Error::Invalid(format!("--device '{s}': expected auto, cpu, cuda or cuda:<index>"))),
            },
        }
    }
}

/// Opens the device; `auto` logs its choice on stderr (one line) unless `quiet`.
pub fn open_device(spec: DeviceSpec, quiet: bool) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(i) => {
            if !cfg!(feature = "cuda") {
                return Err(Error::Invalid(format!(
                    "--device cuda:{i}: this `gen` was built without CUDA; rebuild with `--features cuda`"
                )));
            }
            Device::new_cuda(i).map_err(|e| Error::Invalid(format!("--device cuda:{i}: {e}")))
        }
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => {
                        if !quiet {
                            eprintln!("device: auto -> cuda:0");
                        }
                        return Ok(d);
                    }
                    Err(e) => {
                        if !quiet {
                            eprintln!("device: auto -> cpu (cuda:0 unavailable: {e})");
                        }
                        return Ok(Device::Cpu);
                    }
                }
            }
            if !quiet {
                eprintln!("device: auto -> cpu (built without the `cuda` feature)");
            }
            Ok(Device::Cpu)
        }
    }
}

/// The floating-point dtypes a model may run in.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(Error::Invalid(format!("--dtype '{s}': expected f32, f16 or bf16"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spec_parses_all_forms() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn auto_falls_back_to_cpu_without_cuda() {
        if !cfg!(feature = "cuda") {
            assert!(open_device(DeviceSpec::Auto, true).unwrap().is_cpu());
            assert!(open_device(DeviceSpec::Cuda(0), true).is_err());
        }
    }

    #[test]
    fn dtype_parses() {
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f64x").is_err());
    }
}
