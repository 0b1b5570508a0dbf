//! Statistics files: pytorch-fid's `mu`/`sigma` npz (f64, compressed), clean-fid's custom statistics (`mu`
//! f32, `sigma` f64, compressed) and the ADM evaluator's reference batches (`mu`, `sigma`, `mu_s`,
//! `sigma_s`, `arr_0`), read into a `Gaussian`; and writing pytorch-fid's layout.

use std::path::Path;

use gen_runtime::{Error, Result};

use crate::frechet::Gaussian;
use crate::npz::{npz_keys, read_npz_only, write_npz, NpyArray};

/// The `mu` [d] and `sigma` [d, d] of a statistics npz, checked for shape and finiteness.
pub fn read_stats(path: &Path) -> Result<Gaussian> {
    read_named_stats(path, "mu", "sigma")
}

/// The spatial statistics of an ADM reference batch (`mu_s`, `sigma_s`), for sFID.
pub fn read_spatial_stats(path: &Path) -> Result<Gaussian> {
    read_named_stats(path, "mu_s", "sigma_s")
}

fn read_named_stats(path: &Path, mu_key: &str, sigma_key: &str) -> Result<Gaussian> {
    let arrays = read_npz_only(path, &[mu_key, sigma_key])?;
    let get = |key: &str| {
        arrays.get(key).ok_or_else(|| {
            let keys = npz_keys(path).unwrap_or_default();
            Error::format(
                path,
                format!("no '{key}' array (found: {}); statistics are {mu_key} and {sigma_key}", keys.join(", ")),
            )
        })
    };
    let (mu, sigma) = (get(mu_key)?, get(sigma_key)?);
    let d = match mu.shape.as_slice() {
        &[d] if d > 0 => d,
        s => return Err(Error::format(path, format!("'{mu_key}' has shape {s:?}, expected [d]"))),
    };
    if sigma.shape != [d, d] {
        return Err(Error::format(
            path,
            format!("'{sigma_key}' has shape {:?}, expected [{d}, {d}] ({mu_key} has {d})", sigma.shape),
        ));
    }
    let g = Gaussian { mu: mu.to_f64(), sigma: sigma.to_f64() };
    for (name, values) in [(mu_key, &g.mu), (sigma_key, &g.sigma)] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(path, format!("'{name}' holds a non-finite value ({}) at index {i}", values[i])));
        }
    }
    Ok(g)
}

/// Writes `np.savez_compressed(path, mu=mu, sigma=sigma)`: pytorch-fid's layout (both f64), or
/// clean-fid's custom statistics (`mu_f32`: mu in f32, sigma in f64).
pub fn write_stats(path: &Path, g: &Gaussian, mu_f32: bool) -> Result<()> {
    let d = g.dims();
    let mu = if mu_f32 {
        NpyArray::f32(vec![d], g.mu.iter().map(|&v| v as f32).collect())
    } else {
        NpyArray::f64(vec![d], g.mu.clone())
    };
    let sigma = NpyArray::f64(vec![d, d], g.sigma.clone());
    write_npz(path, &[("mu", &mu), ("sigma", &sigma)], true)
}

/// Whether an npz holds statistics (`mu` and `sigma`) or only a batch of images (`arr_0`, ADM samples).
pub fn npz_kind(path: &Path) -> Result<NpzKind> {
    let keys = npz_keys(path)?;
    let has = |k: &str| keys.iter().any(|x| x == k);
    if has("mu") || has("sigma") {
        Ok(NpzKind::Stats)
    } else if has("arr_0") {
        Ok(NpzKind::Images) // its shape and dtype are checked when the images are read
    } else {
        Err(Error::format(path, "holds neither statistics (mu, sigma) nor images (arr_0)"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpzKind {
    Stats,
    Images,
}

/// The images of an ADM sample batch (`arr_0` uint8 [N, H, W, 3], NHWC).
pub fn read_image_batch(path: &Path) -> Result<Vec<gen_runtime::imageio::RgbImage>> {
    let mut arrays = read_npz_only(path, &["arr_0"])?;
    let a = arrays.remove("arr_0").ok_or_else(|| Error::format(path, "no 'arr_0' image batch"))?;
    let (n, h, w) = match a.shape.as_slice() {
        &[n, h, w, 3] if h > 0 && w > 0 => (n, h, w),
        s => return Err(Error::format(path, format!("'arr_0' has shape {s:?}, expected [N, H, W, 3]"))),
    };
    let crate::npz::NpyData::U8(data) = a.data else {
        return Err(Error::format(path, "'arr_0' is not uint8"));
    };
    let px = h * w * 3;
    Ok((0..n).map(|i| gen_runtime::imageio::RgbImage::new(w, h, data[i * px..(i + 1) * px].to_vec())).collect())
}
