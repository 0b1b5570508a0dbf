//! Model folders: `config.toml` + `model.safetensors` + `MODEL_CARD.md`, read and written by every model
//! kind of `gen` (tokenizer, GPT, DiT, SiT, LDM, classifier) through this one module.
//!
//! `config.toml` holds `kind`, `format_version`, `weights_sha256` (of `model.safetensors`) and one table
//! named after the kind with the architecture (`[tokenizer]`, `[gpt]`, …); generators add fields such as
//! `tokenizer_sha256` at the top level. A folder is written under a temp name and renamed into place, so a
//! folder that exists is complete, and rewriting one never leaves a mix of old and new files.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{one_line_text, Error, Result};
use crate::io;

/// The newest folder layout this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "config.toml";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CARD_FILE: &str = "MODEL_CARD.md";

/// What a model folder holds; also the name of its architecture table in `config.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Tokenizer,
    Gpt,
    Dit,
    Sit,
    Ldm,
    Classifier,
}

impl ModelKind {
    pub const ALL: [ModelKind; 6] =
        [ModelKind::Tokenizer, ModelKind::Gpt, ModelKind::Dit, ModelKind::Sit, ModelKind::Ldm, ModelKind::Classifier];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Tokenizer => "tokenizer",
            ModelKind::Gpt => "gpt",
            ModelKind::Dit => "dit",
            ModelKind::Sit => "sit",
            ModelKind::Ldm => "ldm",
            ModelKind::Classifier => "classifier",
        }
    }

    fn parse(name: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An opened model folder: its checked header and the whole `config.toml`.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub path: PathBuf,
    pub kind: ModelKind,
    pub format_version: u32,
    /// sha256 of `model.safetensors` as written; `verify` compares it with the file.
    pub weights_sha256: Option<String>,
    config: toml::Table,
}

impl ModelDir {
    /// Opens `path` as a folder of kind `expected`: `config.toml` must exist, parse, name that kind and
    /// a format this build reads. Each failure is one line naming the file and what to do.
    pub fn open(path: &Path, expected: ModelKind) -> Result<ModelDir> {
        Self::open_any(path, &[expected])
    }

    /// [`ModelDir::open`] for a folder of any of the `allowed` kinds (a generator: DiT, SiT or LDM).
    pub fn open_any(path: &Path, allowed: &[ModelKind]) -> Result<ModelDir> {
        let expected = allowed.iter().map(|k| k.name()).collect::<Vec<_>>().join(" | ");
        let cfg_path = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::format(
                &cfg_path,
                format!("missing: {} is not a model folder (a {expected} folder holds {CONFIG_FILE}, {WEIGHTS_FILE} and {CARD_FILE})", path.display()),
            ),
            _ => Error::io(&cfg_path, e),
        })?;
        let config: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not valid TOML: {}", one_line_text(&e.to_string()))))?;
        let kind = match config.get("kind") {
            Some(toml::Value::String(name)) => ModelKind::parse(name).ok_or_else(|| {
                let all: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
                Error::format(&cfg_path, format!("kind '{name}' is unknown (expected one of {})", all.join(", ")))
            })?,
            Some(other) => {
                return Err(Error::format(&cfg_path, format!("kind is a {}, expected a string", other.type_str())))
            }
            None => return Err(Error::format(&cfg_path, format!("no 'kind' (expected kind = \"{expected}\")"))),
        };
        if !allowed.contains(&kind) {
            return Err(Error::format(&cfg_path, format!("kind is '{kind}', expected '{expected}'")));
        }
        let format_version = match config.get("format_version") {
            Some(toml::Value::Integer(v)) => u32::try_from(*v).ok().filter(|&v| v >= 1).ok_or_else(|| {
                Error::format(
                    &cfg_path,
                    format!("format_version {v} is not a version (expected 1 to {FORMAT_VERSION})"),
                )
            })?,
            _ => return Err(Error::format(&cfg_path, "no integer 'format_version'")),
        };
        if format_version > FORMAT_VERSION {
            return Err(Error::format(
                &cfg_path,
                format!("format_version {format_version} is newer than this gen reads ({FORMAT_VERSION}); update gen"),
            ));
        }
        let weights_sha256 = config.get("weights_sha256").and_then(|v| v.as_str()).map(str::to_owned);
        Ok(ModelDir { path: path.to_path_buf(), kind, format_version, weights_sha256, config })
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn weights_path(&self) -> PathBuf {
        self.path.join(WEIGHTS_FILE)
    }

    /// The architecture table named after the kind (`[tokenizer]`), as `T`.
    pub fn architecture<T: DeserializeOwned>(&self) -> Result<T> {
        self.table(self.kind.name())
    }

    /// Any table or value of `config.toml` by its top-level name, as `T`.
    pub fn table<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value =
            self.config.get(name).ok_or_else(|| Error::format(self.config_path(), format!("no [{name}] table")))?;
        value.clone().try_into().map_err(|e: toml::de::Error| {
            Error::format(self.config_path(), format!("[{name}]: {}", one_line_text(&e.to_string())))
        })
    }

    /// Whether `config.toml` has a top-level entry `name`.
    pub fn has(&self, name: &str) -> bool {
        self.config.contains_key(name)
    }

    /// A top-level string such as `tokenizer_sha256`.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.config.get(name).and_then(|v| v.as_str())
    }

    /// Every tensor of `model.safetensors`, on the CPU.
    pub fn load_weights(&self) -> Result<HashMap<String, Tensor>> {
        io::load_safetensors(&self.weights_path(), &Device::Cpu)
    }

    /// Checks `model.safetensors` against the `weights_sha256` recorded when the folder was written.
    pub fn verify(&self) -> Result<String> {
        let actual = io::sha256_file(&self.weights_path())?;
        match &self.weights_sha256 {
            Some(want) if *want != actual => Err(Error::format(
                self.weights_path(),
                format!("sha256 is {actual}, but {CONFIG_FILE} records {want}: the weights were changed or damaged"),
            )),
            _ => Ok(actual),
        }
    }
}

/// What to write into a new model folder.
pub struct NewModelDir<'a, A: Serialize> {
    pub kind: ModelKind,
    /// The architecture, written as the `[<kind>]` table.
    pub architecture: &'a A,
    /// Extra top-level string fields (e.g. `tokenizer = "../tokenizer"`, `tokenizer_sha256`).
    pub extra: Vec<(String, String)>,
    /// Extra tables (e.g. a generator's recommended `[sampling]`).
    pub tables: Vec<(String, toml::Value)>,
    pub tensors: &'a [(String, Tensor)],
    /// safetensors `__metadata__`.
    pub metadata: HashMap<String, String>,
    /// The body of MODEL_CARD.md; the folder's kind, format and weights hash are appended.
    pub card: String,
}

impl<A: Serialize> NewModelDir<'_, A> {
    /// Writes the folder at `out` atomically (a temp folder beside it, renamed into place; an existing
    /// folder is replaced only once the new one is complete). Returns the sha256 of `model.safetensors`.
    pub fn write(&self, out: &Path) -> Result<String> {
        let name = out.file_name().ok_or_else(|| Error::invalid(format!("{}: not a folder name", out.display())))?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tag = format!("{}.{}", name.to_string_lossy(), std::process::id());
        let tmp = parent.join(format!(".{tag}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let result =
            self.fill(&tmp).and_then(|sha| replace_dir(&tmp, out, &parent.join(format!(".{tag}.old"))).map(|_| sha));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn fill(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        io::save_safetensors(&weights, self.tensors, Some(self.metadata.clone()))?;
        let sha = io::sha256_file(&weights)?;
        let mut table = toml::Table::new();
        table.insert("kind".into(), self.kind.name().into());
        table.insert("format_version".into(), i64::from(FORMAT_VERSION).into());
        table.insert("weights_sha256".into(), sha.clone().into());
        for (k, v) in &self.extra {
            table.insert(k.clone(), v.clone().into());
        }
        let arch = toml::Value::try_from(self.architecture)
            .map_err(|e| Error::invalid(format!("cannot write the [{}] table: {e}", self.kind)))?;
        table.insert(self.kind.name().into(), arch);
        for (k, v) in &self.tables {
            table.insert(k.clone(), v.clone());
        }
        let text = toml::to_string(&table).map_err(|e| Error::invalid(format!("cannot write {CONFIG_FILE}: {e}")))?;
        io::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
        let card = format!(
            "{}\n\n---\nkind `{}`, format_version {FORMAT_VERSION}, `{WEIGHTS_FILE}` sha256 `{sha}` ({} tensors)\n",
            self.card.trim_end(),
            self.kind,
            self.tensors.len()
        );
        io::write_atomic(&dir.join(CARD_FILE), card.as_bytes())?;
        Ok(sha)
    }
}

/// Moves the complete folder `new` to `out`; an existing `out` is set aside first and removed after.
fn replace_dir(new: &Path, out: &Path, old: &Path) -> Result<()> {
    let had_old = out.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(old);
        std::fs::rename(out, old).map_err(|e| Error::io(out, e))?;
    }
    if let Err(e) = std::fs::rename(new, out) {
        if had_old {
            let _ = std::fs::rename(old, out); // put the previous folder back
        }
        return Err(Error::io(out, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// `target` as a path relative to the folder `from` (both made absolute first): how a model folder
/// names its paired tokenizer (`tokenizer = "../tokenizer"`).
pub fn relative_path(target: &Path, from: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (t, f) = (abs(target), abs(from));
    let common = t.components().zip(f.components()).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in f.components().skip(common) {
        out.push("..");
    }
    for c in t.components().skip(common) {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Arch {
        width: usize,
        levels: Vec<usize>,
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gen-model-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write(out: &Path, width: usize) -> String {
        let t = Tensor::arange(0f32, 4., &Device::Cpu).unwrap();
        let arch = Arch { width, levels: vec![1, 2] };
        NewModelDir {
            kind: ModelKind::Gpt,
            architecture: &arch,
            extra: vec![("tokenizer_sha256".into(), "abc".into())],
            tables: vec![],
            tensors: &[("w".into(), t)],
            metadata: HashMap::new(),
            card: "# test".into(),
        }
        .write(out)
        .unwrap()
    }

    #[test]
    fn a_written_folder_reads_back_with_its_kind_architecture_and_hash() {
        let d = tmp("rt");
        let sha = write(&d.join("m"), 8);
        let m = ModelDir::open(&d.join("m"), ModelKind::Gpt).unwrap();
        assert_eq!(m.architecture::<Arch>().unwrap(), Arch { width: 8, levels: vec![1, 2] });
        assert_eq!(m.get_str("tokenizer_sha256"), Some("abc"));
        assert_eq!(m.verify().unwrap(), sha);
        assert_eq!(m.load_weights().unwrap()["w"].to_vec1::<f32>().unwrap(), [0., 1., 2., 3.]);
        assert!(std::fs::read_to_string(d.join("m/MODEL_CARD.md")).unwrap().contains(&sha));
        // rewriting replaces the folder whole and leaves no temp folder behind
        write(&d.join("m"), 16);
        assert_eq!(ModelDir::open(&d.join("m"), ModelKind::Gpt).unwrap().architecture::<Arch>().unwrap().width, 16);
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["m"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_folders_give_one_line_errors_naming_config_toml() {
        let d = tmp("bad");
        write(&d.join("m"), 8);
        let cfg = d.join("m/config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let err = |expected: ModelKind| ModelDir::open(&d.join("m"), expected).unwrap_err().to_string();
        assert!(err(ModelKind::Tokenizer).contains("kind is 'gpt', expected 'tokenizer'"));
        for (edit, needle) in [
            (text.replace("kind = \"gpt\"", "kind = \"vae\""), "kind 'vae' is unknown"),
            (text.replace("kind = \"gpt\"", ""), "no 'kind'"),
            (text.replace("format_version = 1", "format_version = 7"), "format_version 7 is newer"),
            (text.replace("format_version = 1", "format_version = -1"), "format_version -1 is not a version"),
            ("kind = [".to_string(), "not valid TOML"),
        ] {
            std::fs::write(&cfg, edit).unwrap();
            let e = err(ModelKind::Gpt);
            assert!(e.contains(needle) && e.contains("config.toml") && !e.contains('\n'), "{e}");
        }
        std::fs::write(&cfg, text.replace("width = 8", "width = \"eight\"")).unwrap();
        let e = ModelDir::open(&d.join("m"), ModelKind::Gpt).unwrap().architecture::<Arch>().unwrap_err().to_string();
        assert!(e.contains("[gpt]") && e.contains("width"), "{e}");
        std::fs::remove_file(&cfg).unwrap();
        assert!(err(ModelKind::Gpt).contains("is not a model folder"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn changed_weights_fail_verification() {
        let d = tmp("verify");
        write(&d.join("m"), 8);
        let t = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        io::save_safetensors(&d.join("m/model.safetensors"), &[("w".into(), t)], None).unwrap();
        let e = ModelDir::open(&d.join("m"), ModelKind::Gpt).unwrap().verify().unwrap_err().to_string();
        assert!(e.contains("were changed or damaged"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
