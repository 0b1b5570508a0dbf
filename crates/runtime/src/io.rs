//! Atomic file writes and safetensors read/write.
//!
//! Every file `gen` writes goes to a temp name in the same folder and is renamed into place, so a file
//! that exists is complete and an interrupted run never leaves half a file behind.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Atomic write through a closure that fills the temp file.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Saves named tensors (any device; copied to the CPU) as safetensors, atomically, with optional metadata.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise safetensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Loads every tensor of a safetensors file onto `dev`, naming the file in any error.
pub fn load_safetensors(path: &Path, dev: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    candle_core::safetensors::load(path, dev)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))
}

/// The `__metadata__` of a safetensors file.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Hex sha256 of byte slices read one after the other (a shard's payload: its tensors' bytes in order).
pub fn sha256_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

/// Hex sha256 of a file's bytes (the tokenizer hash is that of its `model.safetensors`).
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_keeps_values_and_metadata() {
        let dir = std::env::temp_dir().join(format!("gen-io-{}", std::process::id()));
        let path = dir.join("t.safetensors");
        let t = Tensor::arange(0f32, 6., &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let meta = HashMap::from([("format".to_string(), "gen-tokens".to_string())]);
        save_safetensors(&path, &[("x".into(), t.clone())], Some(meta)).unwrap();
        let back = load_safetensors(&path, &Device::Cpu).unwrap();
        assert_eq!(back["x"].to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        assert_eq!(safetensors_metadata(&path).unwrap()["format"], "gen-tokens");
        // no temp file is left behind
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_atomic_write_leaves_old_file_intact() {
        let dir = std::env::temp_dir().join(format!("gen-io2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keep.bin");
        write_atomic(&path, b"old").unwrap();
        let r = write_atomic_with(&path, |_| Err(std::io::Error::other("disk full")));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loading_a_missing_file_names_it() {
        let e = load_safetensors(Path::new("/nonexistent/x.safetensors"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.safetensors"));
    }
}
