//! Codebook initialisation: k-means centres of a pretrained encoder's features, per class (the official
//! recipe: k centres per class, joined in class order) or over all the data at once (for data without
//! labels, e.g. FFHQ).
//!
//! The official script joins the per-class files in `os.listdir` order, which is arbitrary; here the
//! classes are joined in sorted order and the order is recorded in the file's metadata.

pub mod kmeans;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use gen_runtime::{Error, Result};
use serde::{Deserialize, Serialize};

pub use kmeans::{kmeans, KMeans, KMeansConfig, KMeansError, Round};

/// The feature vectors of one group (a class, or everything), row-major [n, dim].
pub struct Group {
    pub name: String,
    pub features: Vec<f32>,
}

/// How one group's centres were made, as recorded in the codebook file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupRecord {
    pub name: String,
    /// The group's first row in the codebook.
    pub start: usize,
    /// Its number of centres.
    pub count: usize,
    /// Feature vectors clustered.
    pub points: usize,
    pub iterations: usize,
    pub inertia: f64,
    pub converged: bool,
    pub reseeded: usize,
}

/// Everything a codebook file records besides the vectors (its `gen.codebook` metadata, JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CodebookInfo {
    /// The feature extractor, e.g. `fmnist-classifier` or `clip-vit-l14`.
    pub encoder: String,
    /// `per-class` or `global`.
    pub grouping: String,
    pub seed: u64,
    pub max_iter: usize,
    pub tol: f64,
    pub groups: Vec<GroupRecord>,
}

/// A frozen codebook [size, dim] and how it was made.
pub struct Codebook {
    pub vectors: Vec<f32>,
    pub dim: usize,
    pub info: CodebookInfo,
}

/// Centres per group: `size / groups` each, the first `size % groups` groups one more.
pub fn split_sizes(size: usize, groups: usize) -> Vec<usize> {
    (0..groups).map(|i| size / groups + usize::from(i < size % groups)).collect()
}

/// Clusters each group into its share of `size` centres (groups in the order given) and joins them.
/// `progress(group index, round)` sees every Lloyd round.
pub fn build(
    groups: &[Group],
    dim: usize,
    size: usize,
    cfg: &KMeansConfig,
    encoder: &str,
    grouping: &str,
    mut progress: impl FnMut(usize, &Round),
) -> std::result::Result<Codebook, KMeansError> {
    if groups.is_empty() {
        return Err(KMeansError::Invalid("no features to cluster".into()));
    }
    let sizes = split_sizes(size, groups.len());
    let mut vectors = Vec::with_capacity(size * dim);
    let mut records = Vec::with_capacity(groups.len());
    for (g, (group, &k)) in groups.iter().zip(&sizes).enumerate() {
        // each group gets its own seed, so a group's centres do not depend on the groups before it
        let group_cfg = KMeansConfig { k, seed: cfg.seed.wrapping_add(g as u64), ..cfg.clone() };
        let r = kmeans(&group.features, dim, &group_cfg, |round| progress(g, round)).map_err(|e| match e {
            KMeansError::TooFewPoints { n, k } => KMeansError::Invalid(format!(
                "{}: {n} feature vectors cannot give {k} centres (ask for at most {} in all)",
                group.name,
                n * groups.len()
            )),
            other => other,
        })?;
        records.push(GroupRecord {
            name: group.name.clone(),
            start: vectors.len() / dim,
            count: k,
            points: group.features.len() / dim,
            iterations: r.iterations,
            inertia: r.inertia,
            converged: r.converged,
            reseeded: r.reseeded,
        });
        vectors.extend_from_slice(&r.centres);
    }
    let info = CodebookInfo {
        encoder: encoder.into(),
        grouping: grouping.into(),
        seed: cfg.seed,
        max_iter: cfg.max_iter,
        tol: cfg.tol,
        groups: records,
    };
    Ok(Codebook { vectors, dim, info })
}

/// The metadata key of the codebook record in a safetensors codebook.
pub const INFO_KEY: &str = "gen.codebook";
/// The tensor name in a safetensors codebook.
pub const TENSOR_NAME: &str = "codebook";

impl Codebook {
    pub fn size(&self) -> usize {
        self.vectors.len() / self.dim
    }

    /// Writes the codebook atomically: `.pth` as the official raw tensor (`codebook-100K.pth`'s layout),
    /// anything else as safetensors (`codebook` [size, dim] F32, the record in the metadata).
    pub fn write(&self, path: &Path) -> Result<()> {
        if path.extension().is_some_and(|e| e == "pth" || e == "pt") {
            return gen_runtime::pth::write_bare_tensor(path, &[self.size(), self.dim], &self.vectors);
        }
        let t = Tensor::from_slice(&self.vectors, (self.size(), self.dim), &Device::Cpu)?;
        let info = serde_json::to_string(&self.info).map_err(|e| Error::format(path, e.to_string()))?;
        gen_runtime::io::save_safetensors(
            path,
            &[(TENSOR_NAME.into(), t)],
            Some(HashMap::from([(INFO_KEY.into(), info)])),
        )
    }

    /// The record of a safetensors codebook written by [`Codebook::write`], if it has one.
    pub fn read_info(path: &Path) -> Result<Option<CodebookInfo>> {
        let meta = gen_runtime::io::safetensors_metadata(path)?;
        meta.get(INFO_KEY)
            .map(|s| serde_json::from_str(s).map_err(|e| Error::format(path, format!("{INFO_KEY}: {e}"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gen_runtime::Rng;

    #[test]
    fn sizes_split_evenly_with_the_remainder_first() {
        assert_eq!(split_sizes(100_000, 10), vec![10_000; 10]);
        assert_eq!(split_sizes(7, 3), vec![3, 2, 2]);
        assert_eq!(split_sizes(16_384, 10).iter().sum::<usize>(), 16_384);
    }

    #[test]
    fn per_class_centres_stay_in_class_order_and_both_formats_read_back() {
        let mut rng = Rng::new(0);
        // class b's features sit far from class a's: its centres must come second
        let groups: Vec<Group> = [("a", 0.0f32), ("b", 100.0)]
            .iter()
            .map(|&(name, at)| Group {
                name: name.into(),
                features: (0..300 * 3).map(|_| at + rng.normal() as f32).collect(),
            })
            .collect();
        let cfg = KMeansConfig { k: 0, max_iter: 50, tol: 1e-4, seed: 3 };
        let cb = build(&groups, 3, 9, &cfg, "test", "per-class", |_, _| {}).unwrap();
        assert_eq!(cb.size(), 9);
        assert_eq!(cb.info.groups.iter().map(|g| (g.start, g.count)).collect::<Vec<_>>(), [(0, 5), (5, 4)]);
        assert!(cb.vectors[..5 * 3].iter().all(|v| v.abs() < 10.0));
        assert!(cb.vectors[5 * 3..].iter().all(|v| (v - 100.0).abs() < 10.0));

        let dir = std::env::temp_dir().join(format!("gen-codebook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["cb.safetensors", "cb.pth"] {
            let path = dir.join(name);
            cb.write(&path).unwrap();
            // the tokenizer's codebook reader takes both
            let t = crate::load::read_codebook(&path).unwrap();
            assert_eq!(t.dims(), [9, 3]);
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), cb.vectors);
        }
        assert_eq!(Codebook::read_info(&dir.join("cb.safetensors")).unwrap().unwrap(), cb.info);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_class_with_too_few_features_is_named() {
        let groups = vec![
            Group { name: "Trouser".into(), features: vec![0.0; 2 * 10] },
            Group { name: "Bag".into(), features: vec![1.0; 2 * 3] },
        ];
        let cfg = KMeansConfig { k: 0, max_iter: 5, tol: 1e-4, seed: 0 };
        let e = build(&groups, 2, 10, &cfg, "test", "per-class", |_, _| {}).err().unwrap().to_string();
        assert!(e.contains("Bag: 3 feature vectors cannot give 5 centres"), "{e}");
    }
}
