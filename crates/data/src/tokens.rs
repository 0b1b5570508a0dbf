//! Token files: safetensors with `tokens U32 [N, h·w]` and `__metadata__` `format = gen-tokens`,
//! `format_version`, `grid = "h,w"`, `vocab` (what `gen encode` writes and `gen decode` reads).
//!
//! Reading checks everything a decoder relies on, so a bad file is one error naming it and never a panic
//! or a partial output: the tensor's presence, rank, integer dtype, ids that are non-negative and below
//! the vocabulary, and a grid that fits the count.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gen_runtime::{io, Error, Result};

pub const FORMAT: &str = "gen-tokens";
pub const FORMAT_VERSION: u32 = 1;
pub const TENSOR: &str = "tokens";

/// Token ids of N images on one grid.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenFile {
    /// [N, h·w], row-major over the grid.
    pub ids: Vec<Vec<u32>>,
    /// (h, w).
    pub grid: (usize, usize),
    /// The vocabulary the ids index, when the file says.
    pub vocab: Option<usize>,
}

impl TokenFile {
    /// Reads and checks a token file; ids must be below `vocab` (the decoder's codebook size) when given.
    pub fn read(path: &Path, vocab: Option<usize>) -> Result<TokenFile> {
        let bad = |msg: String| Error::format(path, msg);
        let mut tensors = io::load_safetensors(path, &Device::Cpu)?;
        let meta = io::safetensors_metadata(path)?;
        let tokens = tensors.remove(TENSOR).ok_or_else(|| {
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            let found = names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            bad(format!("no tensor named '{TENSOR}' (found: {})", if found.is_empty() { "none" } else { &found }))
        })?;
        let &[n, len] = tokens.dims() else {
            return Err(bad(format!("'{TENSOR}' has shape {:?}, expected [N, h·w]", tokens.dims())));
        };
        if n == 0 || len == 0 {
            return Err(bad(format!("'{TENSOR}' has shape [{n}, {len}]: no tokens to decode")));
        }
        let ids = integer_ids(&tokens).map_err(bad)?;
        let file_vocab = match meta.get("vocab") {
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| bad(format!("metadata vocab '{v}' is not a positive integer")))?,
            ),
            None => None,
        };
        let limit = vocab.or(file_vocab);
        if let Some((at, &id)) =
            ids.iter().enumerate().find(|(_, &id)| id < 0 || limit.is_some_and(|v| id as u64 >= v as u64))
        {
            let (image, position) = (at / len, at % len);
            return Err(bad(match limit {
                Some(v) if id >= 0 => format!(
                    "token {id} at position {position} of image {image} is out of range for a codebook of {v} entries"
                ),
                _ => format!("token {id} at position {position} of image {image} is negative"),
            }));
        }
        let grid = grid(meta.get("grid").map(String::as_str), len).map_err(bad)?;
        let ids = ids.chunks(len).map(|row| row.iter().map(|&id| id as u32).collect()).collect();
        Ok(TokenFile { ids, grid, vocab: file_vocab })
    }

    /// Writes the file atomically with its metadata.
    pub fn write(&self, path: &Path) -> Result<()> {
        let (n, len) = (self.ids.len(), self.grid.0 * self.grid.1);
        if let Some(i) = self.ids.iter().position(|row| row.len() != len) {
            return Err(Error::invalid(format!("token row {i} has {} ids, the grid holds {len}", self.ids[i].len())));
        }
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (n, len), &Device::Cpu)?;
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("grid".to_string(), format!("{},{}", self.grid.0, self.grid.1)),
        ]);
        if let Some(v) = self.vocab {
            meta.insert("vocab".to_string(), v.to_string());
        }
        io::save_safetensors(path, &[(TENSOR.to_string(), t)], Some(meta))
    }

    /// The ids as a [N, h·w] U32 tensor.
    pub fn tensor(&self, dev: &Device) -> Result<Tensor> {
        let len = self.grid.0 * self.grid.1;
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (self.ids.len(), len), dev)?)
    }
}

/// The ids as i64, from any integer dtype (floats are refused: they are not ids).
fn integer_ids(t: &Tensor) -> std::result::Result<Vec<i64>, String> {
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => t
            .to_dtype(DType::I64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<i64>())
            .map_err(|e| format!("reading '{TENSOR}': {}", gen_runtime::one_line(&Error::from(e)))),
        d => Err(format!("'{TENSOR}' has dtype {d:?}, expected an integer type (U32)")),
    }
}

/// The grid of `len` tokens: the metadata's `h,w`, which must multiply to `len`; without it, a square.
fn grid(meta: Option<&str>, len: usize) -> std::result::Result<(usize, usize), String> {
    match meta {
        Some(text) => {
            let parsed: Option<(usize, usize)> =
                text.split_once(',').and_then(|(h, w)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)));
            match parsed {
                Some((h, w)) if h > 0 && w > 0 && h.checked_mul(w) == Some(len) => Ok((h, w)),
                Some((h, w)) => Err(format!("metadata grid {h}×{w} does not hold the {len} tokens per image")),
                None => Err(format!("metadata grid '{text}' is not 'h,w'")),
            }
        }
        None => {
            let side = (len as f64).sqrt().round() as usize;
            if side * side == len {
                Ok((side, side))
            } else {
                Err(format!("{len} tokens per image is not a square grid and the file has no 'grid' metadata (h,w)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// (tensor name, tensor, metadata, expected error text).
    type Case<'a> = (&'a str, Tensor, Vec<(&'a str, &'a str)>, &'a str);

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gen-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn save(path: &Path, name: &str, t: Tensor, meta: &[(&str, &str)]) {
        let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        io::save_safetensors(path, &[(name.to_string(), t)], Some(meta)).unwrap();
    }

    #[test]
    fn written_files_read_back() {
        let p = tmp("ok.safetensors");
        let f = TokenFile { ids: vec![vec![1, 2, 3, 4, 5, 6]], grid: (2, 3), vocab: Some(10) };
        f.write(&p).unwrap();
        assert_eq!(TokenFile::read(&p, Some(7)).unwrap(), f);
    }

    #[test]
    fn bad_token_files_are_one_line_errors_naming_the_fault() {
        let dev = Device::Cpu;
        let u32s = |v: Vec<u32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        let cases: Vec<Case> = vec![
            ("ids", u32s(vec![0; 4], &[1, 4]), vec![], "no tensor named 'tokens' (found: ids)"),
            ("tokens", u32s(vec![0; 4], &[4]), vec![], "shape [4], expected [N, h·w]"),
            ("tokens", u32s(vec![0; 4], &[1, 1, 4]), vec![], "shape [1, 1, 4]"),
            ("tokens", u32s(vec![], &[0, 4]), vec![], "no tokens"),
            ("tokens", Tensor::zeros((1, 4), DType::F32, &dev).unwrap(), vec![], "dtype F32, expected an integer"),
            (
                "tokens",
                Tensor::new(&[[0i64, -3, 0, 0]], &dev).unwrap(),
                vec![],
                "token -3 at position 1 of image 0 is negative",
            ),
            (
                "tokens",
                u32s(vec![0, 0, 0, 9], &[1, 4]),
                vec![],
                "token 9 at position 3 of image 0 is out of range for a codebook of 8",
            ),
            ("tokens", u32s(vec![0; 6], &[1, 6]), vec![], "6 tokens per image is not a square grid"),
            ("tokens", u32s(vec![0; 6], &[1, 6]), vec![("grid", "2,2")], "grid 2×2 does not hold the 6 tokens"),
            ("tokens", u32s(vec![0; 6], &[1, 6]), vec![("grid", "0,6")], "grid 0×6"),
            ("tokens", u32s(vec![0; 6], &[1, 6]), vec![("grid", "two,three")], "grid 'two,three' is not 'h,w'"),
            ("tokens", u32s(vec![0; 4], &[1, 4]), vec![("vocab", "-1")], "vocab '-1' is not a positive integer"),
        ];
        for (i, (name, t, meta, needle)) in cases.into_iter().enumerate() {
            let p = tmp(&format!("bad{i}.safetensors"));
            save(&p, name, t, &meta);
            let e = TokenFile::read(&p, Some(8)).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(&format!("bad{i}.safetensors")) && !e.contains('\n'), "{e}");
        }
        // the file's own vocab is the limit when the caller gives none
        let p = tmp("vocab.safetensors");
        save(&p, "tokens", u32s(vec![0, 5, 0, 0], &[1, 4]), &[("vocab", "5")]);
        assert!(TokenFile::read(&p, None).unwrap_err().to_string().contains("codebook of 5 entries"));
        std::fs::write(&p, b"not safetensors").unwrap();
        assert!(TokenFile::read(&p, None).unwrap_err().to_string().contains("not a readable safetensors"));
    }
}
