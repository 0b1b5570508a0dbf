//! Feature files: the raw feature vectors of a slice of a dataset (`gen fid --part i/n --save-features`),
//! so a cluster can extract them on many machines and `gen fid --merge` gets the single-run statistics,
//! bit for bit. safetensors with `features F32 [n, d]` and `__metadata__` `format = gen-features`,
//! `format_version`, `mode`, `dims`, `part` (`i/n`), `start` (index of the first vector) and `total`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gen_runtime::{io, Error, Result};

pub const FORMAT: &str = "gen-features";

/// Feature vectors of images `start .. start + n` of a set of `total`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeaturesFile {
    /// Row-major [n, dims].
    pub features: Vec<f32>,
    pub dims: usize,
    pub mode: String,
    pub start: usize,
    pub total: usize,
}

impl FeaturesFile {
    pub fn rows(&self) -> usize {
        self.features.len() / self.dims.max(1)
    }

    pub fn write(&self, path: &Path, part: (usize, usize)) -> Result<()> {
        let t = Tensor::from_vec(self.features.clone(), (self.rows(), self.dims), &Device::Cpu)?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("mode".to_string(), self.mode.clone()),
            ("dims".to_string(), self.dims.to_string()),
            ("part".to_string(), format!("{}/{}", part.0, part.1)),
            ("start".to_string(), self.start.to_string()),
            ("total".to_string(), self.total.to_string()),
        ]);
        io::save_safetensors(path, &[("features".to_string(), t)], Some(meta))
    }

    /// Reads and checks a features file.
    pub fn read(path: &Path) -> Result<FeaturesFile> {
        let meta = io::safetensors_metadata(path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(Error::format(path, format!("not a features file (metadata format is not '{FORMAT}')")));
        }
        let number = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::format(path, format!("metadata '{key}' is missing or not a number")))
        };
        let (dims, start, total) = (number("dims")?, number("start")?, number("total")?);
        let mut tensors = io::load_safetensors(path, &Device::Cpu)?;
        let t = tensors.remove("features").ok_or_else(|| Error::format(path, "no 'features' tensor"))?;
        let rows = match t.dims() {
            &[rows, d] if d == dims && t.dtype() == DType::F32 => rows,
            other => {
                return Err(Error::format(
                    path,
                    format!("'features' is {:?} {other:?}, expected F32 [n, {dims}]", t.dtype()),
                ))
            }
        };
        if start.checked_add(rows).is_none_or(|end| end > total) {
            return Err(Error::format(path, format!("rows {start}..{} lie past the set's {total}", start + rows)));
        }
        let mode = meta.get("mode").cloned().unwrap_or_default();
        Ok(FeaturesFile { features: t.flatten_all()?.to_vec1()?, dims, mode, start, total })
    }
}

/// Joins the parts of one set in order: they must agree on mode, dims and total, and cover it without gap
/// or overlap.
pub fn merge_parts(parts: &mut [(std::path::PathBuf, FeaturesFile)]) -> Result<FeaturesFile> {
    parts.sort_by_key(|(_, f)| f.start);
    let Some((first_path, first)) = parts.first() else { return Err(Error::invalid("--merge: no feature files")) };
    let mut merged = FeaturesFile { features: Vec::new(), ..first.clone() };
    let mut next = 0;
    for (path, f) in parts.iter() {
        if (f.dims, &f.mode, f.total) != (first.dims, &first.mode, first.total) {
            return Err(Error::format(
                path,
                format!(
                    "mode {} / dims {} / total {} differ from {}'s ({} / {} / {})",
                    f.mode,
                    f.dims,
                    f.total,
                    first_path.display(),
                    first.mode,
                    first.dims,
                    first.total
                ),
            ));
        }
        if f.start != next {
            let what = if f.start > next { "a gap before it" } else { "an overlap with the previous part" };
            return Err(Error::format(path, format!("starts at image {} where {next} was expected ({what})", f.start)));
        }
        merged.features.extend_from_slice(&f.features);
        next = f.start + f.rows();
    }
    if next != first.total {
        return Err(Error::invalid(format!(
            "--merge: the parts cover images 0..{next} of {}: a part is missing",
            first.total
        )));
    }
    merged.start = 0;
    Ok(merged)
}

/// The slice of `total` items that part `i` of `n` takes: `[i·total/n, (i+1)·total/n)`.
pub fn part_range(i: usize, n: usize, total: usize) -> std::ops::Range<usize> {
    (i * total / n)..((i + 1) * total / n)
}
