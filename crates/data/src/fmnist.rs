//! Fashion-MNIST in its IDX form (`train-images-idx3-ubyte.gz`, …), as the Debian package
//! `dataset-fashion-mnist` installs it under `/usr/share/datasets/fashion-mnist`.

use std::io::Read;
use std::path::{Path, PathBuf};

use gen_runtime::imageio::RgbImage;
use gen_runtime::{Error, Result};

pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The splits the IDX files come in.
pub const SPLITS: [&str; 2] = ["train", "t10k"];

pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// One split: 28×28 gray images and their labels.
pub struct FashionMnist {
    pub images: Vec<u8>, // [n, 28, 28]
    pub labels: Vec<u8>, // [n]
    pub rows: usize,
    pub cols: usize,
}

/// Deflate expands at most ~1032:1, so a gzip file cannot honestly hold more than this per byte.
const MAX_GZIP_RATIO: u64 = 1032;
/// The largest IDX payload read (the train images are 47 MB): a header may not ask for more.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an IDX file, gzipped or not. The data size comes from the header's dims, which must fit what the
/// file can hold before anything is allocated: a forged header or a gzip bomb is an error, not an abort.
fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("{e} (install it with `apt-get install dataset-fashion-mnist`)")),
        )
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let limit = (raw.len() as u64).saturating_mul(MAX_GZIP_RATIO);
        parse_idx(path, flate2::read::GzDecoder::new(&raw[..]), limit)
    } else {
        let len = raw.len() as u64;
        parse_idx(path, &raw[..], len)
    }
}

/// Parses an IDX stream: magic `0x0000_08_NN` (u8 data, NN dims), big-endian u32 dims, then exactly
/// `prod(dims)` bytes. `limit` bounds what the stream can honestly hold.
fn parse_idx(path: &Path, mut r: impl Read, limit: u64) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |m: &str| Error::format(path, format!("not an IDX file: {m}"));
    let io_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("it ends early (truncated)"),
        _ => Error::format(path, format!("cannot read: {e} (corrupt gzip?)")),
    };
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("expected magic 00 00 08 (unsigned byte data)"),
        _ => io_err(e),
    })?;
    if magic[..3] != [0, 0, 0x08] {
        return Err(bad("expected magic 00 00 08 (unsigned byte data)"));
    }
    let mut dims = Vec::with_capacity(usize::from(magic[3]));
    for _ in 0..magic[3] {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad("header is truncated"),
            _ => io_err(e),
        })?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let n = match n {
        Some(n) if n <= limit.min(MAX_IDX_BYTES) => n,
        _ => return Err(bad(&format!("dims {dims:?} need more bytes than the file can hold"))),
    };
    let mut data = Vec::new();
    data.try_reserve_exact(n as usize).map_err(|_| bad(&format!("dims {dims:?}: cannot allocate {n} bytes")))?;
    (&mut r).take(n + 1).read_to_end(&mut data).map_err(io_err)?;
    if data.len() as u64 != n {
        return Err(bad(&format!("dims {dims:?} need {n} bytes, file has {}", data.len())));
    }
    Ok((dims, data))
}

impl FashionMnist {
    /// Loads `split` ("train" or "t10k") from `dir`.
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        if !SPLITS.contains(&split) {
            return Err(Error::invalid(format!("split '{split}': expected {}", SPLITS.join(" or "))));
        }
        let file = |kind: &str, d: usize| -> PathBuf { dir.join(format!("{split}-{kind}-idx{d}-ubyte.gz")) };
        let (ip, lp) = (file("images", 3), file("labels", 1));
        let (idims, images) = read_idx(&ip)?;
        let (ldims, labels) = read_idx(&lp)?;
        if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
            return Err(Error::format(&ip, format!("images {idims:?} and labels {ldims:?} do not match")));
        }
        if let Some(i) = labels.iter().position(|&l| usize::from(l) >= CLASS_NAMES.len()) {
            return Err(Error::format(
                &lp,
                format!("label {} of image {i} is not a class (expected 0 to {})", labels[i], CLASS_NAMES.len() - 1),
            ));
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

    fn parse(b: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
        parse_idx(Path::new("x"), b, b.len() as u64)
    }

    #[test]
    fn idx_parser_reads_dims_and_rejects_truncation() {
        let mut b = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend([1, 2, 3, 4, 5, 6]);
        let (d, v) = parse(&b).unwrap();
        assert_eq!(d, vec![2, 3]);
        assert_eq!(v, vec![1, 2, 3, 4, 5, 6]);
        assert!(parse(&b[..10]).unwrap_err().to_string().contains("header is truncated"));
        assert!(parse(&b[..15]).unwrap_err().to_string().contains("need 6 bytes, file has 3"));
        b.push(7);
        assert!(parse(&b).unwrap_err().to_string().contains("file has 7"));
    }

    #[test]
    fn forged_dims_and_gzip_bombs_are_refused_before_allocating() {
        // 4 × 2^32 − 1 cubed overflows; 2^32 − 1 squared is 16 EB: both claim more than 20 bytes can hold.
        let huge = [0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(parse(&huge).unwrap_err().to_string().contains("more bytes than the file can hold"));
        // A 100-byte gzip whose header claims 2 GiB: refused before a byte is decompressed or allocated.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &[0, 0, 8, 1, 128, 0, 0, 0]).unwrap();
        std::io::Write::write_all(&mut gz, &[0u8; 1000]).unwrap();
        let gz = gz.finish().unwrap();
        let limit = gz.len() as u64 * MAX_GZIP_RATIO;
        let e = parse_idx(Path::new("x"), flate2::read::GzDecoder::new(&gz[..]), limit).unwrap_err();
        assert!(e.to_string().contains("dims [2147483648] need more bytes than the file can hold"), "{e}");
    }

    #[test]
    fn a_label_past_the_classes_and_a_bad_split_are_errors() {
        let dir = std::env::temp_dir().join(format!("gen-fmnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1];
        images.extend([10, 20]);
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), &images).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), [0, 0, 8, 1, 0, 0, 0, 2, 3, 12]).unwrap();
        let e = FashionMnist::load(&dir, "t10k").err().unwrap().to_string();
        assert!(e.contains("label 12 of image 1 is not a class"), "{e}");
        let e = FashionMnist::load(&dir, "test").err().unwrap().to_string();
        assert!(e.contains("split 'test': expected train or t10k"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn installed_test_split_has_10000_labelled_images() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.exists() {
            // CI installs the package and sets GEN_REQUIRE_GOLDEN=1: there a missing data set fails.
            if std::env::var("GEN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1") {
                panic!("{DEFAULT_DIR} is missing and GEN_REQUIRE_GOLDEN=1 (apt-get install dataset-fashion-mnist)");
            }
            eprintln!("SKIPPED: {DEFAULT_DIR} not installed");
            return;
        }
        let ds = FashionMnist::load(dir, "t10k").unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!((ds.rows, ds.cols), (28, 28));
        assert!(ds.labels.iter().all(|&l| l < 10));
    }
}
