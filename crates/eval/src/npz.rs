//! `.npy` arrays and `.npz` archives (a zip of `.npy` members, stored or deflated), read and written
//! without numpy: pytorch-fid statistics (`mu`, `sigma`), clean-fid custom statistics (compressed), and
//! the ADM evaluator's reference and sample batches (`arr_0`, `mu`, `sigma`, `mu_s`, `sigma_s`).
//!
//! Candle's npz reader cannot inflate deflated members, so this one reads through the `zip` crate. Every
//! size comes from a header a file may forge: a member may not yield more than its compressed size
//! allows, and an array's byte count must match its shape before anything is allocated.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use gen_runtime::{io, Error, Result};

/// Deflate expands at most ~1032:1.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// The element data of an array, in its stored type (little-endian on disk).
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

/// One array: its shape (C order) and data.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        NpyArray { shape, data: NpyData::F64(data) }
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        NpyArray { shape, data: NpyData::F32(data) }
    }

    /// The values as f64 (floats and integers alike).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            NpyData::I16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            NpyData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    fn descr(&self) -> &'static str {
        match self.data {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::U8(_) => "|u1",
            NpyData::I16(_) => "<i2",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            NpyData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::U8(v) => v.clone(),
            NpyData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// The `.npy` (format 1.0) bytes of this array.
    pub fn to_npy(&self) -> Vec<u8> {
        let shape = match self.shape.as_slice() {
            [n] => format!("({n},)"),
            dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", self.descr());
        // numpy pads the header with spaces and a newline so the data starts on a 64-byte boundary
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(self.bytes());
        out
    }
}

/// Parses one `.npy` member (format 1.x–3.x, little-endian or byte-sized types, C order).
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("npy format version {v} is not supported")),
    };
    let header = bytes.get(start..start.saturating_add(header_len)).ok_or("the npy header is truncated")?;
    let header = std::str::from_utf8(header).map_err(|_| "the npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("the npy header has no 'shape'")?;
    let inner = shape_text.trim().strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad npy shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad npy shape {shape_text:?}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let numel = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or("npy shape overflows")?;
    let data = &bytes[start + header_len..];
    let size = match descr {
        "<f4" => 4,
        "<f8" => 8,
        "|u1" | "<u1" => 1,
        "<i2" => 2,
        "<i4" => 4,
        "<i8" => 8,
        other => return Err(format!("npy dtype {other:?} is not supported (expected <f4, <f8, |u1, <i2, <i4, <i8)")),
    };
    if numel.checked_mul(size) != Some(data.len()) {
        return Err(format!(
            "npy shape {shape:?} of {descr} needs {} bytes, the member has {}",
            numel.saturating_mul(size),
            data.len()
        ));
    }
    macro_rules! le {
        ($t:ty) => {
            data.chunks_exact(size).map(|c| <$t>::from_le_bytes(c.try_into().expect("element size"))).collect()
        };
    }
    let data = match descr {
        "<f4" => NpyData::F32(le!(f32)),
        "<f8" => NpyData::F64(le!(f64)),
        "<i2" => NpyData::I16(le!(i16)),
        "<i4" => NpyData::I32(le!(i32)),
        "<i8" => NpyData::I64(le!(i64)),
        _ => NpyData::U8(data.to_vec()),
    };
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma or brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

/// Reads every member of an `.npz` (`mu.npy` → key `mu`).
pub fn read_npz(path: &Path) -> Result<HashMap<String, NpyArray>> {
    read_npz_members(path, None)
}

/// Reads only the members `keys` (an ADM reference batch's statistics without its image array).
pub fn read_npz_only(path: &Path, keys: &[&str]) -> Result<HashMap<String, NpyArray>> {
    read_npz_members(path, Some(keys))
}

/// The member keys of an `.npz`, without reading their data.
pub fn npz_keys(path: &Path) -> Result<Vec<String>> {
    let (zip, _) = open_npz(path)?;
    let mut keys: Vec<String> = zip.file_names().map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string()).collect();
    keys.sort();
    Ok(keys)
}

fn open_npz(path: &Path) -> Result<(zip::ZipArchive<std::io::BufReader<std::fs::File>>, u64)> {
    gen_runtime::zip_guard::open_zip(path).map_err(|e| match e {
        Error::Format { msg, .. } => Error::format(path, format!("not an .npz archive: {msg}")),
        other => other,
    })
}

fn read_npz_members(path: &Path, keys: Option<&[&str]>) -> Result<HashMap<String, NpyArray>> {
    let (mut zip, file_len) = open_npz(path)?;
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| Error::format(path, format!("zip member {i}: {e}")))?;
        let name = entry.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        if keys.is_some_and(|k| !k.contains(&key.as_str())) {
            continue;
        }
        let limit = entry.compressed_size().min(file_len).saturating_mul(MAX_DEFLATE_RATIO);
        if entry.size() > limit {
            return Err(Error::format(
                path,
                format!("member {name} claims {} bytes, more than it can hold", entry.size()),
            ));
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(entry.size().min(file_len) as usize)
            .map_err(|_| Error::format(path, "out of memory"))?;
        (&mut entry)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::format(path, format!("member {name}: {e}")))?;
        let array = parse_npy(&bytes).map_err(|m| Error::format(path, format!("member {name}: {m}")))?;
        out.insert(key, array);
    }
    Ok(out)
}

/// Writes an `.npz` atomically, members in the given order; `compressed` as `np.savez_compressed`.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)], compressed: bool) -> Result<()> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut cursor);
        let method = if compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, array) in arrays {
            let err = |e: &dyn std::fmt::Display| Error::format(path, format!("writing member {name}: {e}"));
            zip.start_file(format!("{name}.npy"), opts).map_err(|e| err(&e))?;
            zip.write_all(&array.to_npy()).map_err(|e| err(&e))?;
        }
        zip.finish().map_err(|e| Error::format(path, format!("writing the archive: {e}")))?;
    }
    io::write_atomic(path, &cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_every_dtype_and_shape() {
        for a in [
            NpyArray::f64(vec![3], vec![1.0, -2.5, 1e300]),
            NpyArray::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            NpyArray { shape: vec![2, 1, 3], data: NpyData::U8(vec![1, 2, 3, 4, 5, 6]) },
            NpyArray { shape: vec![], data: NpyData::I64(vec![7]) },
            NpyArray { shape: vec![0, 4], data: NpyData::I16(vec![]) },
        ] {
            let bytes = a.to_npy();
            assert_eq!((bytes.len() - a.bytes().len()) % 64, 0, "data starts on a 64-byte boundary");
            assert_eq!(parse_npy(&bytes).unwrap(), a);
        }
    }

    #[test]
    fn malformed_npy_is_an_error() {
        let good = NpyArray::f64(vec![2], vec![1.0, 2.0]).to_npy();
        assert!(parse_npy(&good[..good.len() - 1]).unwrap_err().contains("needs 16 bytes"));
        assert!(parse_npy(b"NUMPY").unwrap_err().contains("magic"));
        // edit the header in place (same length), keeping the binary magic and data
        let edit = |from: &str, to: &str| {
            let mut b = good.clone();
            let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            b.splice(at..at + from.len(), to.bytes());
            b
        };
        assert!(parse_npy(&edit("<f8", ">c8")).unwrap_err().contains("not supported"));
        let huge = edit("(2,), }", "(9999999999999,9999999999999)}");
        assert!(parse_npy(&huge).unwrap_err().contains("overflows"));
        assert!(parse_npy(&edit("False", "True ")).unwrap_err().contains("Fortran"));
    }

    #[test]
    fn npz_round_trips_stored_and_compressed() {
        let dir = std::env::temp_dir().join(format!("gen-npz-{}", std::process::id()));
        let mu = NpyArray::f32(vec![2], vec![0.5, 1.5]);
        let sigma = NpyArray::f64(vec![2, 2], vec![1.0, 0.1, 0.1, 2.0]);
        for compressed in [false, true] {
            let p = dir.join(format!("s{compressed}.npz"));
            write_npz(&p, &[("mu", &mu), ("sigma", &sigma)], compressed).unwrap();
            let back = read_npz(&p).unwrap();
            assert_eq!((&back["mu"], &back["sigma"]), (&mu, &sigma));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
