//! `gen fid` on bad input: one error line naming the fault, a non-zero exit, no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use gen_eval::npz::{write_npz, NpyArray};
use gen_tests::{assert_one_line_error, fixture};

fn gen_fid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gen")).arg("fid").args(args).output().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-fid-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stats(dir: &Path, name: &str, mu: NpyArray, sigma: Option<NpyArray>) -> PathBuf {
    let p = dir.join(name);
    let mut arrays = vec![("mu", &mu)];
    if let Some(sg) = &sigma {
        arrays.push(("sigma", sg));
    }
    write_npz(&p, &arrays, false).unwrap();
    p
}

fn identity(d: usize) -> Vec<f64> {
    (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect()
}

#[test]
fn bad_statistics_files_are_refused() {
    let dir = tmp("stats");
    let d = 64;
    let mu = || NpyArray::f64(vec![d], vec![0.0; d]);
    let sigma = || NpyArray::f64(vec![d, d], identity(d));
    let ok = stats(&dir, "ok.npz", mu(), Some(sigma()));
    let no_sigma = stats(&dir, "nosigma.npz", mu(), None);
    let bad_shape = stats(&dir, "shape.npz", mu(), Some(NpyArray::f64(vec![3, 3], identity(3))));
    let mut with_nan = vec![0.0; d];
    with_nan[1] = f64::NAN;
    let nan = stats(&dir, "nan.npz", NpyArray::f64(vec![d], with_nan), Some(sigma()));
    let other =
        stats(&dir, "other.npz", NpyArray::f64(vec![2], vec![0.0; 2]), Some(NpyArray::f64(vec![2, 2], identity(2))));
    let junk = dir.join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![s(&ok), s(&no_sigma)], vec!["nosigma.npz", "no 'sigma' array (found: mu)"]),
        (vec![s(&ok), s(&bad_shape)], vec!["shape.npz", "'sigma' has shape [3, 3], expected [64, 64]"]),
        (vec![s(&ok), s(&nan)], vec!["nan.npz", "'mu' holds a non-finite value (NaN) at index 1"]),
        (vec![s(&ok), s(&other)], vec!["other.npz", "the statistics have 2 dimensions, --dims is 64"]),
        (vec![s(&ok), s(&junk)], vec!["junk.npz", "not an .npz archive"]),
        (vec![s(&ok), "/nonexistent/stats.npz"], vec!["/nonexistent/stats.npz", "no such folder or file"]),
        (vec![s(&ok)], vec!["give two inputs"]),
        (vec![s(&ok), s(&ok), "--dims", "5"], vec!["--dims 5", "64, 192, 768 or 2048"]),
    ];
    for (mut args, needles) in cases {
        if !args.contains(&"--dims") {
            args.extend(["--dims", "64"]);
        }
        assert_one_line_error(&gen_fid(&args), &needles);
    }
}

#[test]
fn statistics_of_different_widths_are_refused() {
    let dir = tmp("widths");
    let a =
        stats(&dir, "a.npz", NpyArray::f64(vec![64], vec![0.0; 64]), Some(NpyArray::f64(vec![64, 64], identity(64))));
    let b = stats(
        &dir,
        "b.npz",
        NpyArray::f64(vec![192], vec![0.0; 192]),
        Some(NpyArray::f64(vec![192, 192], identity(192))),
    );
    let o = gen_fid(&[s(&a), s(&b), "--dims", "64"]);
    assert_one_line_error(&o, &["b.npz", "192 dimensions, --dims is 64"]);
    // and two files that agree give a FID without any weights
    let o = gen_fid(&[s(&a), s(&a), "--dims", "64", "--quiet"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "FID 0.0000 (mode pytorch-fid, inception 64-d, statistics / statistics)"
    );
}

#[test]
fn bad_image_folders_are_refused_and_other_files_skipped_with_a_count() {
    let Some(root) = fixture("fid") else { return };
    let dir = tmp("folders");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("empty/readme.txt"), b"no images here").unwrap();
    let o = gen_fid(&[dir.join("empty").to_str().unwrap(), root.join("A").to_str().unwrap(), "--dims", "64"]);
    assert_one_line_error(&o, &["empty", "holds no images"]);
    // a file with an image name that is not an image stops the run, naming it
    std::fs::create_dir_all(dir.join("broken")).unwrap();
    std::fs::copy(root.join("A/000.png"), dir.join("broken/000.png")).unwrap();
    std::fs::copy(root.join("A/001.png"), dir.join("broken/001.png")).unwrap();
    std::fs::write(dir.join("broken/002.png"), b"not a png").unwrap();
    std::fs::write(dir.join("broken/notes.txt"), b"skipped").unwrap();
    let w = dir.join("w.safetensors");
    write_det_inception(&root, &w);
    let o = gen_fid(&[
        dir.join("broken").to_str().unwrap(),
        root.join("A").to_str().unwrap(),
        "--dims",
        "64",
        "--inception",
        s(&w),
    ]);
    assert_one_line_error(&o, &["002.png", "not a readable image"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 1 files that are not PNG or JPEG"));
    // fewer images than dimensions: pytorch-fid's warning, and a FID
    std::fs::remove_file(dir.join("broken/002.png")).unwrap();
    let o = gen_fid(&[
        dir.join("broken").to_str().unwrap(),
        root.join("A").to_str().unwrap(),
        "--dims",
        "64",
        "--inception",
        s(&w),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 images for 64 dimensions: the covariance is singular"));
}

/// The det Inception weights as safetensors.
fn write_det_inception(root: &Path, out: &Path) {
    let w: Vec<(String, Tensor)> = gen_tests::detinit::build(&root.join("weights_spec.json")).into_iter().collect();
    gen_runtime::io::save_safetensors(out, &w, None).unwrap();
}

#[test]
fn a_missing_or_damaged_inception_file_is_named() {
    let Some(root) = fixture("fid") else { return };
    let (a, b) = (root.join("A"), root.join("B"));
    let o = gen_fid(&[s(&a), s(&b), "--inception", "/nonexistent/pt_inception.pth"]);
    assert_one_line_error(
        &o,
        &[
            "/nonexistent/pt_inception.pth",
            "pt_inception-2015-12-05-6726825d.pth",
            "https://github.com/mseitzer/pytorch-fid",
        ],
    );
    let dir = tmp("inception");
    let mut w = gen_tests::detinit::build(&root.join("weights_spec.json"));
    w.remove("Mixed_6b.branch7x7_2.bn.running_var");
    w.insert(
        "Conv2d_2a_3x3.conv.weight".into(),
        Tensor::zeros((32, 32, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.join("damaged.safetensors");
    gen_runtime::io::save_safetensors(&p, &w.into_iter().collect::<Vec<_>>(), None).unwrap();
    let o = gen_fid(&[s(&a), s(&b), "--inception", s(&p)]);
    assert_one_line_error(
        &o,
        &["damaged.safetensors", "Conv2d_2a_3x3.conv.weight", "[32, 32, 3, 1]", "[32, 32, 3, 3]"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_forged_zip64_npz_is_an_error_not_an_abort() {
    let dir = tmp("zip64");
    let p = dir.join("forged.npz");
    std::fs::write(&p, gen_tests::forged_zip64(1 << 40)).unwrap();
    let o = gen_fid(&[s(&p), s(&p), "--dims", "64"]);
    assert_one_line_error(&o, &["forged.npz", "corrupt zip archive", "1099511627776 entries"]);
}
