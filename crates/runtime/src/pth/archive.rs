//! The torch >= 1.6 zip container: `<archive>/data.pkl`, `<archive>/data/<key>` storages, `<archive>/byteorder`.

use super::pickle::{StorageRef, TensorSource};
use super::tensor::{self, View};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use zip::{CompressionMethod, ZipArchive};

use crate::zip_guard;

const LEGACY: &str = "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with PyTorch >= 1.6: \
                      torch.save(torch.load(f), f2)";

/// Deflate cannot expand data more than ~1032:1; an entry claiming more is lying about its size.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Entries (`data.pkl` and storages) may yield at most this many bytes per byte of file, plus `OUTPUT_SLACK`:
/// real checkpoints read each storage about once, while a hostile pickle could rebuild one big storage again
/// and again, and a deflated entry could expand a thousandfold.
const OUTPUT_PER_FILE_BYTE: u64 = 4;
const OUTPUT_SLACK: u64 = 64 << 20;

/// An open checkpoint archive; it serves storages to the pickle VM.
pub(super) struct Archive {
    zip: ZipArchive<BufReader<File>>,
    /// Folder of `data.pkl` inside the zip, with its trailing `/` (torch names it after the file it saved).
    prefix: String,
    big_endian: bool,
    /// The last storage read: consecutive tensors often view one storage, which is then read once.
    last: Option<(String, Rc<Vec<u8>>)>,
    /// Bytes that entries may still yield (see `OUTPUT_PER_FILE_BYTE`).
    output_left: u64,
    /// The file's real length: no entry is trusted to hold more than it.
    file_len: u64,
}

impl Archive {
    /// Opens the zip and returns it with the bytes of its `data.pkl`.
    pub fn open(path: &Path) -> Result<(Archive, Vec<u8>)> {
        let fmt = |msg: String| Error::format(path, msg);
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = Vec::with_capacity(4);
        file.take(4).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
        check_magic(&head).map_err(fmt)?;
        // The end records are checked before the zip crate sizes its tables from them (see zip_guard).
        let (zip, file_len) = zip_guard::open_zip(path)?;
        let pickle_name =
            find_pickle(&zip).ok_or_else(|| fmt("the zip holds no data.pkl: not a torch.save checkpoint".into()))?;
        let prefix = pickle_name.strip_suffix("data.pkl").unwrap_or_default().to_owned();
        let output_left = file_len.saturating_mul(OUTPUT_PER_FILE_BYTE).saturating_add(OUTPUT_SLACK);
        let mut archive = Archive { zip, prefix, big_endian: false, last: None, output_left, file_len };
        let pickle = archive.read_entry(&pickle_name, None).map_err(fmt)?;
        archive.big_endian = archive.read_byteorder().map_err(fmt)?;
        Ok((archive, pickle))
    }

    /// `byteorder` is `little` or `big`; files from before it existed are little-endian.
    fn read_byteorder(&mut self) -> std::result::Result<bool, String> {
        let name = format!("{}byteorder", self.prefix);
        if self.zip.index_for_name(&name).is_none() {
            return Ok(false);
        }
        let bytes = self.read_entry(&name, Some(16))?;
        match String::from_utf8_lossy(&bytes).trim() {
            "little" => Ok(false),
            "big" => Ok(true),
            other => Err(format!("unknown byteorder {other:?}")),
        }
    }

    /// Reads entry `name` whole, or exactly `want` bytes of it. Sizes come from headers a file may forge:
    /// the compressed size must fit in the file, the output in the budget, and the buffer starts no larger
    /// than the file (it grows only as real bytes arrive).
    fn read_entry(&mut self, name: &str, want: Option<u64>) -> std::result::Result<Vec<u8>, String> {
        let mut entry = self.zip.by_name(name).map_err(|e| format!("zip entry {name}: {e}"))?;
        let (size, compressed) = (entry.size(), entry.compressed_size());
        if compressed > self.file_len {
            return Err(format!(
                "zip entry {name} claims {compressed} compressed bytes in a file of {} (corrupt archive)",
                self.file_len
            ));
        }
        let plausible = match entry.compression() {
            CompressionMethod::Stored => compressed,
            _ => compressed.saturating_mul(MAX_DEFLATE_RATIO),
        };
        if size > plausible {
            return Err(format!("zip entry {name} claims {size} bytes, more than it can hold (corrupt archive)"));
        }
        let want = want.map_or(size, |w| w.min(size));
        spend(&mut self.output_left, want)?;
        let capacity =
            usize::try_from(want.min(self.file_len)).map_err(|_| format!("zip entry {name} is too large"))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity).map_err(|_| format!("zip entry {name}: cannot allocate {capacity} bytes"))?;
        entry.by_ref().take(want).read_to_end(&mut buf).map_err(|e| format!("reading zip entry {name}: {e}"))?;
        if buf.len() as u64 != want {
            return Err(format!("zip entry {name} is shorter than its header says (truncated archive?)"));
        }
        Ok(buf)
    }

    /// The first `nbytes` of storage `key`; an error if the entry holds fewer.
    fn storage(&mut self, key: &str, nbytes: usize) -> std::result::Result<Rc<Vec<u8>>, String> {
        if let Some((last_key, bytes)) = &self.last {
            if last_key == key && bytes.len() >= nbytes {
                return Ok(Rc::clone(bytes));
            }
        }
        let name = format!("{}data/{key}", self.prefix);
        let bytes = self.read_entry(&name, Some(nbytes as u64))?;
        if bytes.len() < nbytes {
            return Err(format!("storage {name} holds {} bytes, but the pickle says {nbytes}", bytes.len()));
        }
        let bytes = Rc::new(bytes);
        self.last = Some((key.to_owned(), Rc::clone(&bytes)));
        Ok(bytes)
    }
}

/// Takes `bytes` from the output budget, or refuses.
fn spend(left: &mut u64, bytes: u64) -> std::result::Result<(), String> {
    match left.checked_sub(bytes) {
        Some(rest) => {
            *left = rest;
            Ok(())
        }
        None => Err("the archive would yield far more data than the file holds (storages rebuilt over and over, \
                     or a decompression bomb: corrupt or hostile file)"
            .into()),
    }
}

impl TensorSource for Archive {
    fn tensor(&mut self, storage: &StorageRef, view: &View) -> std::result::Result<Tensor, String> {
        let elem_size = storage.dtype.elem_size().ok_or_else(|| tensor::unsupported_note(storage.dtype, &view.size))?;
        let nbytes = storage
            .numel
            .checked_mul(elem_size)
            .ok_or_else(|| format!("storage '{}' of {} elements is impossibly large", storage.key, storage.numel))?;
        let view_bytes = view.numel().and_then(|n| n.checked_mul(elem_size)).unwrap_or(usize::MAX);
        spend(&mut self.output_left, view_bytes as u64)?;
        let bytes = self.storage(&storage.key, nbytes)?;
        tensor::rebuild(&bytes[..nbytes], storage.dtype, view, self.big_endian)
            .map_err(|e| format!("tensor in storage '{}': {e}", storage.key))
    }
}

/// Tells the zip container apart from the legacy raw-pickle format and from other files, before parsing.
fn check_magic(head: &[u8]) -> std::result::Result<(), String> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(())
    } else if head.first() == Some(&0x80) {
        Err(LEGACY.into())
    } else if head.is_empty() {
        Err("the file is empty".into())
    } else {
        Err("not a PyTorch checkpoint: no zip header (torch.save >= 1.6 writes a zip archive; truncated?)".into())
    }
}

/// The `data.pkl` closest to the root (`<archive>/data.pkl`).
fn find_pickle<R: Read + Seek>(zip: &ZipArchive<R>) -> Option<String> {
    zip.file_names()
        .filter(|name| *name == "data.pkl" || name.ends_with("/data.pkl"))
        .min_by_key(|name| (name.matches('/').count(), name.len()))
        .map(str::to_owned)
}
