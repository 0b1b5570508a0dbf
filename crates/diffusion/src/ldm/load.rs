//! The official LDM checkpoints as they are: a Lightning `.ckpt`/`.pth` whose `state_dict` holds the
//! live UNet (`model.diffusion_model.*`), the class table (`cond_stage_model.embedding.weight`), the
//! schedule buffers, the first stage, and the EMA copy of the UNet as `model_ema.<name with every dot
//! removed>` (`model_ema.num_updates` an int32 scalar). Evaluation samples with the EMA UNet and the
//! live class table, as `ema_scope()` does.

use std::collections::HashMap;

use candle_core::Tensor;

const UNET: &str = "model.diffusion_model.";
const CLASSES: &str = "cond_stage_model.embedding.weight";

/// Which UNet weights to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightSet {
    Live,
    Ema,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LdmLoadError {
    #[error(
        "ldm checkpoint: no UNet weights (no key starts with 'model.diffusion_model.'): is this an LDM checkpoint?"
    )]
    NoUnet,
    #[error("ldm checkpoint: no class table '{CLASSES}'")]
    NoClasses,
    #[error("ldm checkpoint: no EMA copy of '{live}' (expected '{ema}'); pass --weights live to use the live weights")]
    NoEma { live: String, ema: String },
}

/// The EMA key LitEma gives a UNet parameter: `model_ema.` + its name inside `LatentDiffusion.model`
/// without dots.
pub fn ema_key(unet_key: &str) -> String {
    format!("model_ema.{}", unet_key.trim_start_matches("model.").replace('.', ""))
}

/// The tensors an [`super::Ldm`] reads (`model.diffusion_model.*` and the class table), the UNet taken
/// from `set`. Schedule buffers, the first stage and optimizer state are left out.
pub fn ldm_tensors(sd: &HashMap<String, Tensor>, set: WeightSet) -> Result<HashMap<String, Tensor>, LdmLoadError> {
    let mut out = HashMap::new();
    for (k, v) in sd.iter().filter(|(k, _)| k.starts_with(UNET)) {
        let v = match set {
            WeightSet::Live => v.clone(),
            WeightSet::Ema => {
                let ema = ema_key(k);
                sd.get(&ema).cloned().ok_or_else(|| LdmLoadError::NoEma { live: k.clone(), ema })?
            }
        };
        out.insert(k.clone(), v);
    }
    if out.is_empty() {
        return Err(LdmLoadError::NoUnet);
    }
    out.insert(CLASSES.to_string(), sd.get(CLASSES).cloned().ok_or(LdmLoadError::NoClasses)?);
    Ok(out)
}

/// Whether the state dict carries an EMA copy.
pub fn has_ema(sd: &HashMap<String, Tensor>) -> bool {
    sd.keys().any(|k| k.starts_with("model_ema.") && k != "model_ema.decay" && k != "model_ema.num_updates")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_keys_drop_every_dot_after_the_wrapper() {
        assert_eq!(
            ema_key("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
            "model_ema.diffusion_modelinput_blocks11transformer_blocks0attn2to_kweight"
        );
    }

    #[test]
    fn missing_ema_names_both_keys() {
        let dev = candle_core::Device::Cpu;
        let t = Tensor::zeros(1, candle_core::DType::F32, &dev).unwrap();
        let sd: HashMap<String, Tensor> =
            [("model.diffusion_model.out.2.bias".to_string(), t.clone()), (CLASSES.to_string(), t)].into();
        let err = ldm_tensors(&sd, WeightSet::Ema).unwrap_err().to_string();
        assert!(err.contains("model_ema.diffusion_modelout2bias") && err.contains("--weights live"), "{err}");
        assert_eq!(ldm_tensors(&sd, WeightSet::Live).unwrap().len(), 2);
        assert_eq!(ldm_tensors(&HashMap::new(), WeightSet::Live).unwrap_err(), LdmLoadError::NoUnet);
    }
}
