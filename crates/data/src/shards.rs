//! Token and latent shards: what `gen tokenize` writes and the generators train on.
//!
//! A shard folder holds `manifest.json` and `shard-00000.safetensors`, … Each shard holds `tokens U32
//! [n, h·w]` (or `latents F32|F16 [n, C, h, w]`) and `labels U32 [n]`, with `__metadata__`: `format`
//! (`gen-tokens` | `gen-latents`), `format_version`, `grid` (`h,w`), `vocab` or `channels`,
//! `tokenizer_sha256` and `payload_sha256` (of the tensors' bytes, payload then labels). A shard is
//! written under a temp name and renamed, so a shard file that exists is complete.
//!
//! Reading checks what training relies on and names the shard at fault: a missing or unreadable file, a
//! payload whose hash differs from the manifest (truncated or corrupt), a token outside the vocabulary,
//! a label outside the classes, and a tokenizer other than the one expected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gen_runtime::{io, Error, Result};
use serde::{Deserialize, Serialize};

pub const TOKENS_FORMAT: &str = "gen-tokens";
pub const LATENTS_FORMAT: &str = "gen-latents";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

/// What a shard folder's shards hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardKind {
    Tokens,
    Latents,
}

impl ShardKind {
    pub fn format(self) -> &'static str {
        match self {
            ShardKind::Tokens => TOKENS_FORMAT,
            ShardKind::Latents => LATENTS_FORMAT,
        }
    }

    fn tensor(self) -> &'static str {
        match self {
            ShardKind::Tokens => "tokens",
            ShardKind::Latents => "latents",
        }
    }
}

/// One shard's content.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Row-major [n, h·w] ids.
    Tokens(Vec<u32>),
    /// [n, C, h, w], F32 or F16.
    Latents(Tensor),
}

/// The images of one shard: their payload and class labels.
#[derive(Clone, Debug)]
pub struct Shard {
    pub payload: Payload,
    pub labels: Vec<u32>,
}

/// One line of the manifest's shard list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub n: usize,
    pub payload_sha256: String,
}

/// `manifest.json`: what every shard shares, and the list of shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// (h, w) of the token / latent grid.
    pub grid: [usize; 2],
    /// Tokens: the codebook size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Latents: channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    pub tokenizer_sha256: String,
    pub num_classes: usize,
    pub class_names: Vec<String>,
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    pub fn kind(&self) -> ShardKind {
        if self.format == LATENTS_FORMAT {
            ShardKind::Latents
        } else {
            ShardKind::Tokens
        }
    }

    /// Images in all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens per image (h·w).
    pub fn seq_len(&self) -> usize {
        self.grid[0] * self.grid[1]
    }

    /// The name of shard `index`.
    pub fn shard_file(index: usize) -> String {
        format!("shard-{index:05}.safetensors")
    }

    /// Reads `dir/manifest.json` (or another manifest file of the folder) and checks its header.
    pub fn read_file(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::format(
                path,
                "missing: not a shard folder (make one with `gen tokenize --tokenizer DIR --data … --out DIR`)",
            ),
            _ => Error::io(path, e),
        })?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a shard manifest: {e}")))?;
        if m.format != TOKENS_FORMAT && m.format != LATENTS_FORMAT {
            return Err(Error::format(
                path,
                format!("format '{}' is not {TOKENS_FORMAT} or {LATENTS_FORMAT}", m.format),
            ));
        }
        if m.format_version == 0 || m.format_version > FORMAT_VERSION {
            return Err(Error::format(
                path,
                format!("format_version {} is not one this gen reads (1 to {FORMAT_VERSION})", m.format_version),
            ));
        }
        if m.class_names.len() != m.num_classes || m.num_classes == 0 {
            return Err(Error::format(
                path,
                format!("{} class names for {} classes", m.class_names.len(), m.num_classes),
            ));
        }
        Ok(m)
    }

    /// Opens a shard folder for reading: its manifest, which must list at least one image, and every
    /// listed shard file must exist.
    pub fn open(dir: &Path) -> Result<Manifest> {
        let m = Manifest::read_file(&dir.join(MANIFEST))?;
        if m.is_empty() {
            return Err(Error::format(dir.join(MANIFEST), "lists no images: the shard folder is empty"));
        }
        if let Some(s) = m.shards.iter().find(|s| !dir.join(&s.file).exists()) {
            return Err(Error::format(dir.join(&s.file), "listed in manifest.json but missing"));
        }
        Ok(m)
    }

    /// Writes the manifest atomically as `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::invalid(format!("manifest: {e}")))?;
        io::write_atomic(&dir.join(name), text.as_bytes())
    }

    /// Refuses shards made by another tokenizer than the one with hash `sha256`.
    pub fn check_tokenizer(&self, dir: &Path, sha256: &str) -> Result<()> {
        if self.tokenizer_sha256 != sha256 {
            return Err(Error::format(
                dir.join(MANIFEST),
                format!(
                    "made with tokenizer sha256 {}…, but the model's tokenizer is {}…: re-tokenize with that tokenizer",
                    short(&self.tokenizer_sha256),
                    short(sha256)
                ),
            ));
        }
        Ok(())
    }

    /// Reads shard `index` and checks it against the manifest.
    pub fn read_shard(&self, dir: &Path, index: usize) -> Result<Shard> {
        let entry = &self.shards[index];
        let path = dir.join(&entry.file);
        let bad = |msg: String| Error::format(&path, msg);
        let mut t = io::load_safetensors(&path, &Device::Cpu)
            .map_err(|e| bad(format!("unreadable (truncated or not a shard): {}", gen_runtime::one_line(&e))))?;
        let kind = self.kind();
        let payload = t.remove(kind.tensor()).ok_or_else(|| bad(format!("no '{}' tensor", kind.tensor())))?;
        let labels = t.remove("labels").ok_or_else(|| bad("no 'labels' tensor".into()))?;
        if labels.dtype() != DType::U32 || labels.dims() != [entry.n] {
            return Err(bad(format!("labels {:?} {:?}, expected U32 [{}]", labels.dtype(), labels.dims(), entry.n)));
        }
        let labels = labels.to_vec1::<u32>()?;
        let (h, w) = (self.grid[0], self.grid[1]);
        let shard = match kind {
            ShardKind::Tokens => {
                if payload.dtype() != DType::U32 || payload.dims() != [entry.n, h * w] {
                    return Err(bad(format!(
                        "tokens {:?} {:?}, expected U32 [{}, {}]",
                        payload.dtype(),
                        payload.dims(),
                        entry.n,
                        h * w
                    )));
                }
                Shard { payload: Payload::Tokens(payload.flatten_all()?.to_vec1::<u32>()?), labels }
            }
            ShardKind::Latents => {
                let c = self.channels.unwrap_or(0);
                if !matches!(payload.dtype(), DType::F32 | DType::F16) || payload.dims() != [entry.n, c, h, w] {
                    return Err(bad(format!(
                        "latents {:?} {:?}, expected F32 or F16 [{}, {c}, {h}, {w}]",
                        payload.dtype(),
                        payload.dims(),
                        entry.n
                    )));
                }
                Shard { payload: Payload::Latents(payload), labels }
            }
        };
        let sha = shard.payload_sha256()?;
        if sha != entry.payload_sha256 {
            return Err(bad(format!(
                "payload sha256 {}… differs from the manifest's {}…: the shard is corrupt",
                short(&sha),
                short(&entry.payload_sha256)
            )));
        }
        if let Payload::Tokens(ids) = &shard.payload {
            if let (Some(vocab), Some(at)) =
                (self.vocab, ids.iter().position(|&id| self.vocab.is_some_and(|v| id as usize >= v)))
            {
                return Err(bad(format!(
                    "token {} at position {} of image {} is out of range for a codebook of {vocab} codes",
                    ids[at],
                    at % (h * w),
                    at / (h * w)
                )));
            }
        }
        if let Some(at) = shard.labels.iter().position(|&l| l as usize >= self.num_classes) {
            return Err(bad(format!(
                "label {} of image {at} is not one of the {} classes",
                shard.labels[at], self.num_classes
            )));
        }
        Ok(shard)
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn le_bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Shard {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// sha256 of the payload's bytes followed by the labels' (little-endian, row-major).
    pub fn payload_sha256(&self) -> Result<String> {
        let payload: Vec<u8> = match &self.payload {
            Payload::Tokens(ids) => le_bytes_u32(ids),
            Payload::Latents(t) => tensor_bytes(t)?,
        };
        Ok(io::sha256_parts(&[&payload, &le_bytes_u32(&self.labels)]))
    }

    /// Writes the shard atomically as `dir/file` with the manifest's header; returns its manifest entry.
    pub fn write(&self, dir: &Path, file: &str, header: &Manifest) -> Result<ShardEntry> {
        let n = self.len();
        let (h, w) = (header.grid[0], header.grid[1]);
        let payload = match &self.payload {
            Payload::Tokens(ids) => {
                if ids.len() != n * h * w {
                    return Err(Error::invalid(format!("{} token ids for {n} images of {h}×{w}", ids.len())));
                }
                ("tokens", Tensor::from_vec(ids.clone(), (n, h * w), &Device::Cpu)?)
            }
            Payload::Latents(t) => ("latents", t.clone()),
        };
        let sha = self.payload_sha256()?;
        let mut meta = HashMap::from([
            ("format".to_string(), header.format.clone()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("grid".to_string(), format!("{h},{w}")),
            ("tokenizer_sha256".to_string(), header.tokenizer_sha256.clone()),
            ("payload_sha256".to_string(), sha.clone()),
        ]);
        if let Some(v) = header.vocab {
            meta.insert("vocab".into(), v.to_string());
        }
        if let Some(c) = header.channels {
            meta.insert("channels".into(), c.to_string());
        }
        let labels = Tensor::from_vec(self.labels.clone(), n, &Device::Cpu)?;
        io::save_safetensors(
            &dir.join(file),
            &[(payload.0.to_string(), payload.1), ("labels".to_string(), labels)],
            Some(meta),
        )?;
        Ok(ShardEntry { file: file.to_string(), n, payload_sha256: sha })
    }
}

/// A tensor's bytes in its own dtype (F32 or F16), little-endian, row-major.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        d => return Err(Error::invalid(format!("latents must be F32 or F16, not {d:?}"))),
    })
}

/// The manifest names of the parts of a `--part i/n` job.
pub fn part_manifest(i: usize, n: usize) -> String {
    format!("manifest-part-{i}-of-{n}.json")
}

/// Joins the part manifests of a folder (`gen tokenize --part i/n` wrote them) into `manifest.json`.
/// Every part must be present and agree on the header. Returns the merged manifest.
pub fn merge_parts(dir: &Path) -> Result<Manifest> {
    let mut parts: Vec<(usize, usize, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let parsed = name
            .strip_prefix("manifest-part-")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|r| r.split_once("-of-"))
            .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
        if let Some((i, n)) = parsed {
            parts.push((i, n, e.path()));
        }
    }
    if parts.is_empty() {
        return Err(Error::format(dir, "no manifest-part-*-of-*.json files to merge"));
    }
    parts.sort();
    let n = parts[0].1;
    if let Some(p) = parts.iter().find(|p| p.1 != n) {
        return Err(Error::format(&p.2, format!("a part of {} parts among parts of {n}", p.1)));
    }
    let have: Vec<usize> = parts.iter().map(|p| p.0).collect();
    if have != (0..n).collect::<Vec<_>>() {
        let missing: Vec<String> = (0..n).filter(|i| !have.contains(i)).map(|i| i.to_string()).collect();
        return Err(Error::format(dir, format!("parts {} of {n} are missing", missing.join(", "))));
    }
    let mut merged = Manifest::read_file(&parts[0].2)?;
    for (_, _, path) in &parts[1..] {
        let m = Manifest::read_file(path)?;
        let header = |m: &Manifest| {
            (m.format.clone(), m.grid, m.vocab, m.channels, m.tokenizer_sha256.clone(), m.class_names.clone())
        };
        if header(&m) != header(&merged) {
            return Err(Error::format(
                path,
                "its header (format, grid, vocab, tokenizer, classes) differs from part 0's",
            ));
        }
        merged.shards.extend(m.shards);
    }
    merged.shards.sort_by(|a, b| a.file.cmp(&b.file));
    merged.write(dir, MANIFEST)?;
    Ok(merged)
}

#[cfg(test)]
mod tests;
