//! Named parameters: the `(name, Var)` lists that the optimizer steps and checkpoints save. They are
//! sorted by name, so every walk over them (stepping, saving) has the same order in every process.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use gen_runtime::{Error, Result};

/// The variables of a `VarMap`, sorted by name (its own map has no stable order).
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The current values, for `save_safetensors`.
pub fn var_tensors(vars: &[(String, Var)]) -> Vec<(String, Tensor)> {
    vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
}

/// Sets every variable from `tensors` (read from `path`, which errors name). Every variable must be
/// there with its shape; keys that no variable claims are left alone, so one file can hold several sets
/// (model, EMA, discriminator) that are restored one after another.
pub fn load_vars(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    for (name, var) in vars {
        let Some(t) = tensors.get(name) else {
            return Err(Error::MissingKey {
                path: path.to_path_buf(),
                key: name.clone(),
                expected: Some(format!("{:?}", var.dims())),
            });
        };
        if t.dims() != var.dims() {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                key: name.clone(),
                expected: var.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn load_vars_names_the_missing_key_and_the_bad_shape() {
        let dev = Device::Cpu;
        let vars = vec![("w".to_string(), Var::zeros((2, 3), DType::F32, &dev).unwrap())];
        let empty = HashMap::new();
        let e = load_vars(&vars, &empty, Path::new("ck/model.safetensors")).unwrap_err().to_string();
        assert!(e.contains("ck/model.safetensors") && e.contains("'w'") && e.contains("[2, 3]"), "{e}");
        let wrong = HashMap::from([("w".to_string(), Tensor::zeros((3, 2), DType::F32, &dev).unwrap())]);
        let e = load_vars(&vars, &wrong, Path::new("ck/model.safetensors")).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("[3, 2]"), "{e}");
    }

    #[test]
    fn named_vars_are_sorted() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        for n in ["b", "c", "a"] {
            vb.get_with_hints(2, n, candle_nn::Init::Const(0.)).unwrap();
        }
        let names: Vec<String> = named_vars(&vm).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
