//! The fuzz harness: every reader of untrusted files, fed mutations of real files, must return (Ok or a
//! one-line error), never panic, and never allocate more than the input's size justifies.
//!
//! Property tests (proptest) with a fixed seed, so CI runs the same cases every time and stays within
//! seconds; `GEN_FUZZ_CASES=n` runs more and `GEN_FUZZ_SEED=s` other ones. Memory is measured by a
//! counting global allocator: the peak growth during one read must stay under `ALLOWANCE` plus a
//! multiple of the input's length. Readers covered: the `.pth` reader (zip layer and pickle VM), token
//! files (safetensors), Fashion-MNIST IDX files, tokenizer model folders (config.toml) and npz statistics
//! files. A new reader (shards, …) adds a property here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gen_tests::fixture;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

// ----- a counting allocator -----

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Memory any read may use regardless of its input (the `.pth` reader's fixed slack is 64 MiB of output).
const ALLOWANCE: usize = 160 << 20;
/// And per byte of input: the `.pth` output budget is 4× the file, and a copy or two of it may coexist.
const PER_INPUT_BYTE: usize = 16;

/// Runs `read` and fails the case if it allocated more than the input of `len` bytes justifies.
fn bounded<T>(what: &str, len: usize, read: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    count_case();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = read();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let limit = ALLOWANCE + PER_INPUT_BYTE * len;
    prop_assert!(grew <= limit, "{what}: a {len}-byte input made the reader allocate {grew} bytes (limit {limit})");
    Ok(out)
}

/// A one-line error naming the file, when there is an error.
fn check_error<T>(what: &str, path: &Path, r: &gen_runtime::Result<T>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let text = gen_runtime::one_line(e);
        prop_assert!(!text.contains('\n'), "{what}: multi-line error: {text}");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        prop_assert!(text.contains(&name), "{what}: the error does not name {name}: {text}");
    }
    Ok(())
}

// ----- mutations -----

/// How a file is damaged: overwritten bytes, a cut, an inserted run, or bytes of an interesting value
/// (sizes and counts near the limits).
#[derive(Clone, Debug)]
enum Mutation {
    Overwrite(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Magic(usize, [u8; 8]),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let magic = prop::sample::select(vec![
        u64::MAX,
        u64::MAX / 2,
        1 << 40,
        1 << 32,
        u32::MAX as u64,
        0x8000_0000,
        0xFFFF,
        0,
        1,
    ]);
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i.index(usize::MAX), b)),
        1 => any::<prop::sample::Index>().prop_map(|i| Mutation::Truncate(i.index(usize::MAX))),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i.index(usize::MAX), v)),
        2 => (any::<prop::sample::Index>(), magic).prop_map(|(i, m)| Mutation::Magic(i.index(usize::MAX), m.to_le_bytes())),
    ]
}

fn mutate(data: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut d = data.to_vec();
    for m in mutations {
        if d.is_empty() {
            break;
        }
        match m {
            Mutation::Overwrite(i, b) => {
                let at = i % d.len();
                d[at] = *b;
            }
            Mutation::Truncate(i) => d.truncate(i % d.len()),
            Mutation::Insert(i, bytes) => {
                let at = i % (d.len() + 1);
                d.splice(at..at, bytes.iter().copied());
            }
            Mutation::Magic(i, bytes) => {
                let at = i % d.len();
                let end = (at + 8).min(d.len());
                d[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
    }
    d
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

// ----- the runner -----

fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("GEN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    let seed: u64 = std::env::var("GEN_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Counts the cases a property ran, so the harness reports what it did.
static CASES: AtomicUsize = AtomicUsize::new(0);

fn count_case() {
    CASES.fetch_add(1, Ordering::Relaxed);
}

fn report(what: &str) {
    eprintln!("fuzz {what}: {} cases, no panic, memory bounded", CASES.swap(0, Ordering::Relaxed));
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

// ----- .pth: the zip layer -----

fn pth_fixtures() -> Option<Vec<(String, Vec<u8>)>> {
    let pth = fixture("pth")?;
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&pth)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    Some(files)
}

/// Opens a `.pth` and, if it loads, asks it for everything a loader asks for.
fn read_pth(path: &Path) -> gen_runtime::Result<usize> {
    let f = gen_runtime::pth::PthFile::open(path)?;
    let n = f.tensors(None).map(|t| t.len()).unwrap_or(0);
    let _ = f.bare_tensor();
    let _ = f.get("args.image_size");
    Ok(n)
}

#[test]
fn fuzz_pth_zip_layer_never_panics_or_overallocates() {
    let Some(files) = pth_fixtures() else { return };
    let dir = scratch("pth-zip");
    let n = files.len();
    runner(2000)
        .run(&(0..n, mutations()), |(which, muts)| {
            let (name, bytes) = &files[which];
            let data = mutate(bytes, &muts);
            let path = dir.join(name);
            write(&path, &data);
            let r = bounded(name, data.len(), || read_pth(&path))?;
            check_error(name, &path, &r)
        })
        .unwrap();
    report("pth zip layer");
}

// ----- .pth: the pickle VM, inside a valid zip (so the CRC check does not stop the mutation) -----

/// A zip's entries: (name, bytes), in order.
type Entries = Vec<(String, Vec<u8>)>;

fn unzip(bytes: &[u8]) -> Entries {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            (e.name().to_string(), v)
        })
        .collect()
}

fn rezip(entries: &Entries) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        z.start_file(name.as_str(), opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    out.into_inner()
}

#[test]
fn fuzz_pth_pickle_vm_never_panics_or_overallocates() {
    let Some(files) = pth_fixtures() else { return };
    let Some(tok) = fixture("tokenizer/f16-tiny/checkpoint.pth") else { return };
    // the well-formed archives (the official checkpoint layout among them), unpacked once
    let mut archives: Vec<(String, Entries)> = files
        .iter()
        .filter(|(name, bytes)| bytes.starts_with(b"PK") && name != "truncated.pth")
        .map(|(name, bytes)| (name.clone(), unzip(bytes)))
        .collect();
    archives.push(("checkpoint.pth".into(), unzip(&std::fs::read(tok).unwrap())));
    let dir = scratch("pth-pickle");
    let n = archives.len();
    runner(2000)
        .run(&(0..n, mutations()), |(which, muts)| {
            let (name, entries) = &archives[which];
            let entries: Entries = entries
                .iter()
                .map(|(e, d)| (e.clone(), if e.ends_with("data.pkl") { mutate(d, &muts) } else { d.clone() }))
                .collect();
            let data = rezip(&entries);
            let path = dir.join(name);
            write(&path, &data);
            let r = bounded(name, data.len(), || read_pth(&path))?;
            check_error(name, &path, &r)
        })
        .unwrap();
    report("pth pickle VM");
}

// ----- token files (safetensors) -----

#[test]
fn fuzz_token_file_reader_never_panics_or_overallocates() {
    let dir = scratch("tokens");
    let seed = dir.join("seed.safetensors");
    let ids: Vec<Vec<u32>> = (0..4).map(|i| (0..16).map(|j| (i * 37 + j * 11) % 1000).collect()).collect();
    gen_data::tokens::TokenFile { ids, grid: (4, 4), vocab: Some(1000) }.write(&seed).unwrap();
    let bytes = std::fs::read(&seed).unwrap();
    runner(1000)
        .run(&mutations(), |muts| {
            let data = mutate(&bytes, &muts);
            let path = dir.join("tokens.safetensors");
            write(&path, &data);
            let r = bounded("tokens", data.len(), || gen_data::tokens::TokenFile::read(&path, Some(1000)))?;
            if let Ok(f) = &r {
                prop_assert!(f.ids.iter().all(|row| row.len() == f.grid.0 * f.grid.1));
                prop_assert!(f.ids.iter().flatten().all(|&id| id < 1000));
            }
            check_error("tokens", &path, &r)
        })
        .unwrap();
    report("token files");
}

// ----- Fashion-MNIST IDX -----

/// The first `n` real test images and labels as IDX bytes (images, labels), uncompressed.
fn real_idx(n: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = Path::new(gen_data::fmnist::DEFAULT_DIR);
    if !dir.exists() {
        assert!(std::env::var("GEN_REQUIRE_GOLDEN").ok().as_deref() != Some("1"), "{} missing", dir.display());
        eprintln!("SKIPPED: {} not installed", dir.display());
        return None;
    }
    let ds = gen_data::fmnist::FashionMnist::load(dir, "t10k").unwrap();
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend(&ds.images[..n * 784]);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend(&ds.labels[..n]);
    Some((images, labels))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn fuzz_idx_reader_never_panics_or_overallocates() {
    let Some((images, labels)) = real_idx(20) else { return };
    let dir = scratch("idx");
    let (images_gz, labels_gz) = (gzip(&images), gzip(&labels));
    // which file is damaged, and whether before or after compression
    runner(1000)
        .run(&(0..4usize, mutations()), |(mode, muts)| {
            let (img, lab) = match mode {
                0 => (gzip(&mutate(&images, &muts)), labels_gz.clone()),
                1 => (images_gz.clone(), gzip(&mutate(&labels, &muts))),
                2 => (mutate(&images_gz, &muts), labels_gz.clone()),
                _ => (images_gz.clone(), mutate(&labels_gz, &muts)),
            };
            write(&dir.join("t10k-images-idx3-ubyte.gz"), &img);
            write(&dir.join("t10k-labels-idx1-ubyte.gz"), &lab);
            let r = bounded("idx", img.len() + lab.len(), || gen_data::fmnist::FashionMnist::load(&dir, "t10k"))?;
            if let Ok(ds) = &r {
                prop_assert_eq!(ds.images.len(), ds.len() * ds.rows * ds.cols);
                prop_assert!(ds.labels.iter().all(|&l| l < 10));
                if !ds.is_empty() {
                    let _ = ds.rgb(ds.len() - 1);
                }
            }
            if let Err(e) = &r {
                let text = gen_runtime::one_line(e);
                prop_assert!(!text.contains('\n') && text.contains("idx"), "{text}");
            }
            Ok(())
        })
        .unwrap();
    report("IDX");
}

// ----- tokenizer model folders: config.toml -----

#[test]
fn fuzz_model_folder_config_never_panics_or_overallocates() {
    let Some(ckpt) = fixture("tokenizer/f16-tiny/checkpoint.pth") else { return };
    let dir = scratch("config");
    let model = dir.join("model");
    let w = gen_tokenizer::read_weights(&ckpt, None, None).unwrap();
    gen_tokenizer::write_model_dir(&w, &model, true, "fuzz seed").unwrap();
    let text = std::fs::read(model.join("config.toml")).unwrap();
    let weights_len = std::fs::metadata(model.join("model.safetensors")).unwrap().len() as usize;
    // byte mutations, and value edits: a line's value replaced by a number at the limits or another type
    let values = [
        "0",
        "-1",
        "1",
        "3",
        "31",
        "64",
        "65536",
        "4294967296",
        "1099511627776",
        "9223372036854775807",
        "\"x\"",
        "[]",
        "[0]",
        "[1, 0]",
        "[16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16]",
        "1e309",
        "{}",
    ];
    let lines: Vec<String> = String::from_utf8(text.clone()).unwrap().lines().map(str::to_owned).collect();
    let edit = (0..lines.len(), prop::sample::select(values.to_vec()));
    let loaded = AtomicUsize::new(0);
    runner(1000)
        .run(&(prop::bool::ANY, mutations(), edit), |(bytes, muts, (line, value))| {
            let data = if bytes {
                mutate(&text, &muts)
            } else {
                let mut l = lines.clone();
                if let Some((key, _)) = l[line].split_once('=') {
                    l[line] = format!("{key}= {value}");
                }
                l.join("\n").into_bytes()
            };
            let path = model.join("config.toml");
            write(&path, &data);
            let r = bounded("config", data.len() + weights_len, || {
                gen_tokenizer::read_weights(&model, None, None)
                    .and_then(|w| w.build(candle_core::DType::F32, &candle_core::Device::Cpu).map(|_| ()))
            })?;
            match &r {
                Ok(()) => {
                    loaded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let text = gen_runtime::one_line(e);
                    prop_assert!(!text.contains('\n'), "{text}");
                    prop_assert!(text.contains("model"), "the error names no file: {text}");
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz model folder config: {} edited configs still loaded and built", loaded.load(Ordering::Relaxed));
    report("model folder config");
}

// ----- npz statistics files (pytorch-fid compressed, ADM stored) -----

#[test]
fn fuzz_npz_reader_never_panics_or_overallocates() {
    let Some(fid) = fixture("fid") else { return };
    let seeds: Vec<(String, Vec<u8>)> = ["stats_A_dims64.npz", "adm_ref_batch.npz", "adm_sample_batch.npz"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(fid.join(n)).unwrap()))
        .collect();
    let dir = scratch("npz");
    let n = seeds.len();
    runner(1000)
        .run(&(0..n, mutations()), |(which, muts)| {
            let (name, bytes) = &seeds[which];
            let data = mutate(bytes, &muts);
            let path = dir.join(name);
            write(&path, &data);
            let r = bounded(name, data.len(), || {
                gen_eval::stats_file::read_stats(&path)
                    .map(|g| g.dims())
                    .or_else(|_| gen_eval::stats_file::read_image_batch(&path).map(|b| b.len()))
            })?;
            check_error(name, &path, &r)
        })
        .unwrap();
    report("npz");
}

// ----- feature files (gen fid --save-features) -----

#[test]
fn fuzz_features_file_reader_never_panics_or_overallocates() {
    let dir = scratch("features");
    let seed = dir.join("seed.safetensors");
    let f = gen_eval::features_file::FeaturesFile {
        features: (0..6 * 64).map(|i| (i as f32).sin()).collect(),
        dims: 64,
        mode: "pytorch-fid".into(),
        start: 3,
        total: 12,
    };
    f.write(&seed, (1, 2)).unwrap();
    let bytes = std::fs::read(&seed).unwrap();
    runner(1000)
        .run(&mutations(), |muts| {
            let data = mutate(&bytes, &muts);
            let path = dir.join("features.safetensors");
            write(&path, &data);
            let r = bounded("features", data.len(), || gen_eval::features_file::FeaturesFile::read(&path))?;
            if let Ok(f) = &r {
                prop_assert_eq!(f.features.len(), f.rows() * f.dims);
                prop_assert!(f.start + f.rows() <= f.total);
            }
            check_error("features", &path, &r)
        })
        .unwrap();
    report("features files");
}
