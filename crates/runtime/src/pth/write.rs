//! Writes a bare float32 tensor as `torch.save(tensor, path)` does: the layout of the official
//! `codebook-100K.pth`, which `torch.load` and the official `VQModel` read.
//!
//! The zip holds `<stem>/data.pkl` (protocol 2: `torch._utils._rebuild_tensor_v2` on persistent storage
//! `'0'`), `<stem>/data/0` (the raw little-endian values, 64-byte aligned as torch aligns them),
//! `byteorder`, `version`, `.format_version` and `.storage_alignment`, all stored uncompressed. torch's
//! random `.data/serialization_id` is left out (torch.load does not need it).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Pickle opcodes (protocol 2) the writer uses.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const MARK: u8 = b'(';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const TUPLE: u8 = b't';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const STOP: u8 = b'.';
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: u64) {
        if let Ok(small) = i32::try_from(v) {
            self.0.push(op::BININT);
            self.0.extend_from_slice(&small.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement; a 0 byte on top keeps it positive
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] & 0x80 == 0 {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] & 0x80 != 0 {
                bytes.push(0);
            }
            self.0.push(op::LONG1);
            self.0.push(bytes.len() as u8);
            self.0.extend_from_slice(&bytes);
        }
    }
    fn tuple(&mut self, items: &[usize]) {
        self.0.push(op::MARK);
        for &i in items {
            self.int(i as u64);
        }
        self.0.push(op::TUPLE);
    }
}

/// The pickle of a contiguous float32 tensor of `shape` on storage key `'0'`.
fn tensor_pickle(shape: &[usize]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut p = Pickle(vec![op::PROTO, 2]);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.0.push(op::MARK);
    // persistent id ('storage', FloatStorage, key, location, numel)
    p.0.push(op::MARK);
    p.str("storage");
    p.global("torch", "FloatStorage");
    p.str("0");
    p.str("cpu");
    p.int(numel as u64);
    p.0.push(op::TUPLE);
    p.0.push(op::BINPERSID);
    p.int(0); // storage offset
    p.tuple(shape);
    p.tuple(&strides);
    p.0.push(op::NEWFALSE); // requires_grad
    p.global("collections", "OrderedDict");
    p.0.push(op::EMPTY_TUPLE);
    p.0.push(op::REDUCE); // backward hooks
    p.0.push(op::TUPLE);
    p.0.push(op::REDUCE);
    p.0.push(op::STOP);
    p.0
}

/// Writes `values` (row-major, `shape`) as a bare float32 tensor `.pth`, atomically.
pub fn write_bare_tensor(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel != values.len() {
        return Err(Error::format(path, format!("shape {shape:?} holds {numel} values, given {}", values.len())));
    }
    // torch names the record folder after the file's stem
    let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("archive");
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    crate::io::write_atomic_with(path, |file| {
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(values.len() * 4 >= u32::MAX as usize);
        let mut entry = |name: &str, bytes: &[u8], align: u16| -> zip::result::ZipResult<()> {
            zip.start_file(format!("{stem}/{name}"), stored.with_alignment(align))?;
            zip.write_all(bytes)?;
            Ok(())
        };
        let io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
        entry("data.pkl", &tensor_pickle(shape), 1).map_err(io)?;
        entry(".format_version", b"1", 1).map_err(io)?;
        entry(".storage_alignment", b"64", 1).map_err(io)?;
        entry("byteorder", b"little", 1).map_err(io)?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        entry("data/0", &raw, 64).map_err(io)?;
        entry("version", b"3\n", 1).map_err(io)?;
        zip.finish().map_err(io)?.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::PthFile;

    #[test]
    fn a_written_tensor_reads_back_and_its_pickle_matches_torch_save() {
        let dir = std::env::temp_dir().join(format!("gen-pth-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("codebook_init.pth");
        let values: Vec<f32> = (0..1000 * 32).map(|i| (i as f32).sin()).collect();
        write_bare_tensor(&path, &[1000, 32], &values).unwrap();
        let t = PthFile::open(&path).unwrap().bare_tensor().unwrap();
        assert_eq!(t.dims(), [1000, 32]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        // the entries torch.save writes, the data 64-byte aligned
        let mut z = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = z.file_names().map(String::from).collect();
        for want in ["data.pkl", "byteorder", "data/0", "version", ".format_version", ".storage_alignment"] {
            assert!(names.contains(&format!("codebook_init/{want}")), "{want} missing from {names:?}");
        }
        assert_eq!(z.by_name("codebook_init/data/0").unwrap().data_start() % 64, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn large_sizes_use_long_ints_that_read_back() {
        let mut p = Pickle(Vec::new());
        p.int(3_000_000_000);
        assert_eq!(p.0, [op::LONG1, 5, 0x00, 0x5e, 0xd0, 0xb2, 0x00]);
        let mut p = Pickle(Vec::new());
        p.int(100_000 * 768);
        assert_eq!(p.0[0], op::BININT);
    }

    #[test]
    fn a_shape_that_does_not_match_the_values_is_an_error() {
        let e = write_bare_tensor(Path::new("/tmp/never.pth"), &[3, 2], &[0.0; 5]).unwrap_err().to_string();
        assert!(e.contains("holds 6 values, given 5"), "{e}");
    }
}
