//! A safe reader for PyTorch `.pth` checkpoints (the torch >= 1.6 zip format).
//!
//! `torch.load` without `weights_only` runs arbitrary code named by the pickle. This reader runs its own small
//! pickle VM (`pickle`) that rebuilds only plain data, tensors, `OrderedDict` and `argparse.Namespace`, and refuses
//! any other global by name before anything happens. Tensors come back on the CPU, contiguous, in their dtype:
//! F64, F32, F16, BF16, I64, I32, I16 and U8 as stored; bool as U8 0/1 and int8 as I64 (Candle has neither);
//! complex, quantized, unsigned 16/32/64-bit and float8 tensors are refused by name when asked for.

mod archive;
mod pickle;
mod tensor;
mod write;

pub use write::write_bare_tensor;

use crate::error::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A value rebuilt from the pickle: only plain data, never code.
#[derive(Debug, Clone)]
pub enum PthValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PthValue>),
    Tuple(Vec<PthValue>),
    /// Insertion order, as Python keeps it; `OrderedDict` too. Sets come back as lists.
    Dict(Vec<(PthValue, PthValue)>),
    Tensor(Tensor),
    /// `argparse.Namespace` as plain data: its attributes in order.
    Namespace(Vec<(String, PthValue)>),
    /// An allow-listed object kept only as a note: a dtype or storage marker, an integer wider than 64 bits,
    /// or a tensor whose dtype Candle cannot hold (asking for that tensor is an error naming it).
    Skipped(String),
}

impl PthValue {
    /// The Python-side kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PthValue::None => "None",
            PthValue::Bool(_) => "bool",
            PthValue::Int(_) => "int",
            PthValue::Float(_) => "float",
            PthValue::Str(_) => "str",
            PthValue::Bytes(_) => "bytes",
            PthValue::List(_) => "list",
            PthValue::Tuple(_) => "tuple",
            PthValue::Dict(_) => "dict",
            PthValue::Tensor(_) => "tensor",
            PthValue::Namespace(_) => "argparse.Namespace",
            PthValue::Skipped(_) => "skipped object",
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            PthValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PthValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match *self {
            PthValue::Int(i) => Some(i),
            PthValue::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    /// Floats, and ints as floats (argparse values like `lr=1` are ints).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            PthValue::Float(f) => Some(f),
            PthValue::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// Looks up a dotted path through dicts, namespaces and lists (`"args.embed_dim"`, `"param_groups.0.lr"`).
    /// Keys may themselves contain dots (`"quant_conv.weight"`): an exact key wins over a shorter key plus a rest.
    pub fn get(&self, path: &str) -> Option<&PthValue> {
        let children: Vec<(Cow<str>, &PthValue)> = self.children().collect();
        if let Some((_, child)) = children.iter().find(|(name, _)| name == path) {
            return Some(child);
        }
        children.iter().find_map(|(name, child)| {
            let rest = path.strip_prefix(name.as_ref())?.strip_prefix('.')?;
            child.get(rest)
        })
    }

    /// Named children: dict entries with str/int/bool keys, namespace attributes, list and tuple items by index.
    fn children(&self) -> Box<dyn Iterator<Item = (Cow<'_, str>, &PthValue)> + '_> {
        match self {
            PthValue::Dict(entries) => Box::new(entries.iter().filter_map(|(k, v)| Some((key_name(k)?, v)))),
            PthValue::Namespace(attrs) => Box::new(attrs.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), v))),
            PthValue::List(items) | PthValue::Tuple(items) => {
                Box::new(items.iter().enumerate().map(|(i, v)| (Cow::Owned(i.to_string()), v)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The note of a tensor that Candle cannot hold, if this is one.
    fn unsupported_tensor(&self) -> Option<&str> {
        match self {
            PthValue::Skipped(note) => note.strip_prefix(tensor::UNSUPPORTED_TENSOR),
            _ => None,
        }
    }

    fn is_tensor_like(&self) -> bool {
        matches!(self, PthValue::Tensor(_)) || self.unsupported_tensor().is_some()
    }
}

/// How a dict key reads in a dotted path; keys of other kinds (tuples, ...) are not addressable.
fn key_name(key: &PthValue) -> Option<Cow<'_, str>> {
    match key {
        PthValue::Str(s) => Some(Cow::Borrowed(s)),
        PthValue::Int(i) => Some(Cow::Owned(i.to_string())),
        PthValue::Bool(b) => Some(Cow::Borrowed(if *b { "True" } else { "False" })),
        _ => None,
    }
}

/// A loaded checkpoint: the whole pickled object, with every tensor read.
#[derive(Debug, Clone)]
pub struct PthFile {
    pub root: PthValue,
    pub path: PathBuf,
}

/// Where `tensors(None)` looks when the root dict holds no tensors itself (official VQGAN-LC, Lightning, MAE-style).
const STATE_DICT_KEYS: [&str; 2] = ["state_dict", "model"];

impl PthFile {
    pub fn open(path: &Path) -> Result<PthFile> {
        let (mut archive, pickle) = archive::Archive::open(path)?;
        let root = pickle::unpickle(&pickle, &mut archive).map_err(|e| match e {
            pickle::PickleError::Format(msg) => Error::format(path, msg),
            pickle::PickleError::Forbidden(global) => Error::ForbiddenGlobal { path: path.to_path_buf(), global },
        })?;
        Ok(PthFile { root, path: path.to_path_buf() })
    }

    /// Top-level dict keys (strings) if the root is a dict, for messages.
    pub fn top_keys(&self) -> Vec<String> {
        match &self.root {
            PthValue::Dict(entries) => entries.iter().filter_map(|(k, _)| k.as_str().map(str::to_owned)).collect(),
            _ => vec![],
        }
    }

    /// Tensors of a state dict. `key` = dotted path to a sub-dict ("state_dict", "model", "ema.inner").
    /// key None: if the root is a dict whose values include tensors -> those (bare state dict);
    /// else try "state_dict" then "model"; else Err naming the file and listing the top-level keys.
    /// Never returns an empty map silently: zero tensors is an error naming the file/key.
    /// Nested dicts below the chosen dict are flattened with dotted names (relative to the chosen dict).
    pub fn tensors(&self, key: Option<&str>) -> Result<Vec<(String, Tensor)>> {
        let Some(key) = key else { return self.auto_state_dict() };
        let value = self.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
            expected: Some(self.describe_keys()),
        })?;
        if let PthValue::Tensor(t) = value {
            return Ok(vec![(key.to_owned(), t.clone())]);
        }
        if let Some(note) = value.unsupported_tensor() {
            return Err(self.error(format!("tensor '{key}' is unsupported: {note}")));
        }
        let tensors = self.flatten(value)?;
        if tensors.is_empty() {
            return Err(self.error(format!("no tensors under key '{key}' (it is a {})", value.kind())));
        }
        Ok(tensors)
    }

    /// The root as a bare tensor (`torch.save(tensor)`, like codebook-100K.pth); Err if it is not one.
    pub fn bare_tensor(&self) -> Result<Tensor> {
        match &self.root {
            PthValue::Tensor(t) => Ok(t.clone()),
            root => match root.unsupported_tensor() {
                Some(note) => Err(self.error(format!("the bare tensor is unsupported: {note}"))),
                None => Err(self.error(format!(
                    "not a bare tensor: the file holds a {} ({})",
                    root.kind(),
                    self.describe_keys()
                ))),
            },
        }
    }

    /// Look up a value by dotted path (e.g. "args" -> Namespace, "epoch", "args.embed_dim").
    pub fn get(&self, key: &str) -> Option<&PthValue> {
        self.root.get(key)
    }

    fn auto_state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        match &self.root {
            PthValue::Dict(entries) if entries.iter().any(|(_, v)| v.is_tensor_like()) => {
                return self.flatten(&self.root)
            }
            PthValue::Dict(_) => {
                for key in STATE_DICT_KEYS {
                    if let Some(value) = self.get(key) {
                        let tensors = self.flatten(value)?;
                        if !tensors.is_empty() {
                            return Ok(tensors);
                        }
                    }
                }
            }
            PthValue::Tensor(_) => {
                return Err(self.error("holds a bare tensor, not a state dict; read it with bare_tensor()".into()))
            }
            _ => {}
        }
        Err(self.error(format!(
            "no state dict found: the root {} holds no tensors and no 'state_dict' or 'model' with tensors; {}; \
             pass the key of the state dict (dotted for nested dicts, e.g. \"ema.inner\")",
            self.root.kind(),
            self.describe_keys()
        )))
    }

    /// All tensors below `value`, with dotted names relative to it; an unsupported tensor is an error naming it.
    fn flatten(&self, value: &PthValue) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        self.flatten_into(value, "", &mut out)?;
        let mut seen = HashSet::new();
        if let Some((name, _)) = out.iter().find(|(name, _)| !seen.insert(name.as_str())) {
            return Err(self.error(format!("two tensors are both named '{name}' after flattening nested dicts")));
        }
        Ok(out)
    }

    fn flatten_into(&self, value: &PthValue, prefix: &str, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        for (name, child) in value.children() {
            let name = if prefix.is_empty() { name.into_owned() } else { format!("{prefix}.{name}") };
            if let Some(note) = child.unsupported_tensor() {
                return Err(self.error(format!("tensor '{name}' is unsupported: {note}")));
            }
            match child {
                PthValue::Tensor(t) => out.push((name, t.clone())),
                _ => self.flatten_into(child, &name, out)?,
            }
        }
        Ok(())
    }

    fn describe_keys(&self) -> String {
        match self.top_keys() {
            keys if keys.is_empty() => "the file has no top-level keys".into(),
            keys => format!("top-level keys: {}", keys.join(", ")),
        }
    }

    fn error(&self, msg: String) -> Error {
        Error::format(&self.path, msg)
    }
}

/// Convenience: `PthFile::open(path)?.tensors(key)` as a map.
pub fn load_state_dict(path: &Path, key: Option<&str>) -> Result<HashMap<String, Tensor>> {
    Ok(PthFile::open(path)?.tensors(key)?.into_iter().collect())
}

#[cfg(test)]
mod tests;
