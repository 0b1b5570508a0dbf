//! Fashion-MNIST in its IDX form (`train-images-idx3-ubyte.gz`, …), as the Debian package
//! `dataset-fashion-mnist` installs it under `/usr/share/datasets/fashion-mnist`.

use std::io::Read;
use std::path::{Path, PathBuf};

use gen_runtime::imageio::RgbImage;
use gen_runtime::{Error, Result};

pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// One split: 28×28 gray images and their labels.
pub struct FashionMnist {
    pub images: Vec<u8>, // [n, 28, 28]
    pub labels: Vec<u8>, // [n]
    pub rows: usize,
    pub cols: usize,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("{e} (install it with `apt-get install dataset-fashion-mnist`)")),
        )
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file: magic `0x0000_08_NN` (u8 data, NN dims), big-endian dims, then the data.
fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |m: &str| Error::format(path, format!("not an IDX file: {m}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("expected magic 00 00 08 (unsigned byte data)"));
    }
    let nd = bytes[3] as usize;
    let head = 4 + 4 * nd;
    if bytes.len() < head {
        return Err(bad("header is truncated"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - head != n {
        return Err(bad(&format!("dims {dims:?} need {n} bytes, file has {}", bytes.len() - head)));
    }
    Ok((dims, bytes[head..].to_vec()))
}

impl FashionMnist {
    /// Loads `split` ("train" or "t10k") from `dir`.
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        let file = |kind: &str, d: usize| -> PathBuf { dir.join(format!("{split}-{kind}-idx{d}-ubyte.gz")) };
        let (ip, lp) = (file("images", 3), file("labels", 1));
        let (idims, images) = parse_idx(&ip, &read_maybe_gz(&ip)?)?;
        let (ldims, labels) = parse_idx(&lp, &read_maybe_gz(&lp)?)?;
        if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
            return Err(Error::format(&ip, format!("images {idims:?} and labels {ldims:?} do not match")));
        }
        Ok(FashionMnist { images, labels, rows: idims[1], cols: idims[2] })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i` as RGB (gray replicated).
    pub fn rgb(&self, i: usize) -> RgbImage {
        let px = self.rows * self.cols;
        let data = self.images[i * px..(i + 1) * px].iter().flat_map(|&g| [g, g, g]).collect();
        RgbImage::new(self.cols, self.rows, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_parser_reads_dims_and_rejects_truncation() {
        let mut b = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend([1, 2, 3, 4, 5, 6]);
        let (d, v) = parse_idx(Path::new("x"), &b).unwrap();
        assert_eq!(d, vec![2, 3]);
        assert_eq!(v, vec![1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(Path::new("x"), &b[..10]).is_err());
        assert!(parse_idx(Path::new("x"), &b[..15]).is_err());
    }

    #[test]
    fn installed_test_split_has_10000_labelled_images() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.exists() {
            eprintln!("SKIPPED: {DEFAULT_DIR} not installed");
            return;
        }
        let ds = FashionMnist::load(dir, "t10k").unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!((ds.rows, ds.cols), (28, 28));
        assert!(ds.labels.iter().all(|&l| l < 10));
    }
}
