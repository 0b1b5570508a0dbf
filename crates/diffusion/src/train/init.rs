//! Initial weights as the official code draws them.
//! - DiT / SiT (`initialize_weights`): every Linear xavier-uniform with zero bias, the patch conv
//!   xavier-uniform over its flattened kernel, label table and timestep MLP N(0, 0.02), every adaLN
//!   modulation and the final linear layer zero (adaLN-Zero), `pos_embed` the fixed sin-cos table.
//! - LDM: torch's default module init (U(±1/√fan_in)), `zero_module` on each ResBlock's last conv, each
//!   transformer's `proj_out` and the output conv, GroupNorm / LayerNorm 1 and 0, the class table N(0, 1).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use gen_nn::{RandomWeights, ShapeRecorder};
use gen_runtime::{Result, Rng};

use super::config::Arch;
use crate::dit::DitConfig;
use crate::embed::pos_embed_2d;
use crate::ldm::Ldm;

fn xavier(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let fan_out = shape[0];
    let fan_in: usize = shape[1..].iter().product();
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Ok(rng.rand_uniform(shape, -a, a, &Device::Cpu)?)
}

fn dit_tensors(c: &DitConfig, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape) in c.tensor_shapes() {
        let zeros = || Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu);
        let t = if name == "pos_embed" {
            let g = c.grid();
            Tensor::from_vec(pos_embed_2d(c.hidden_size, g), shape.as_slice(), &Device::Cpu)?
        } else if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") || name.ends_with(".bias")
        {
            zeros()?
        } else if name.starts_with("y_embedder") || name.starts_with("t_embedder") {
            rng.randn(shape.as_slice(), 0.02, &Device::Cpu)?
        } else {
            xavier(&shape, rng)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn ldm_tensors(c: &crate::ldm::LdmConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let w = RandomWeights::torch_init(seed);
    Ldm::new(w.var_builder(DType::F32, &Device::Cpu), c)?;
    let mut rng = Rng::new(seed ^ 0x1D4);
    let mut out = HashMap::new();
    for (name, t) in w.tensors() {
        let zero = ["out_layers.3.", "proj_out.", "diffusion_model.out.2."].iter().any(|k| name.contains(k));
        let t = if zero {
            t.zeros_like()?
        } else if name == "cond_stage_model.embedding.weight" {
            rng.randn(t.dims(), 1.0, &Device::Cpu)?
        } else {
            t
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// The initial tensors of `arch` (official names) from the run's RNG.
pub fn init_tensors(arch: &Arch, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    match arch {
        Arch::Dit(c) => dit_tensors(c, rng),
        Arch::Sit(s) => dit_tensors(&s.net, rng),
        Arch::Ldm(c) => ldm_tensors(c, rng.next_u64()),
    }
}

/// The parameter count of `arch` (without allocating it).
pub fn parameter_count(arch: &Arch) -> Result<usize> {
    Ok(match arch {
        Arch::Dit(c) => c.parameter_count(),
        Arch::Sit(s) => s.net.parameter_count(),
        Arch::Ldm(c) => {
            let rec = ShapeRecorder::default();
            Ldm::new(rec.var_builder(), c)?;
            rec.parameter_count()
        }
    })
}
