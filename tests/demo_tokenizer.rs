//! The shipped demo tokenizer (`models/fmnist/tokenizer`): it loads from the clone alone, uses its
//! 100,000-entry codebook on the Fashion-MNIST test split (82.35% measured; floor 82%), and reconstructs
//! what it encodes (28.6 dB PSNR measured on the split; floor 27 dB on its first 500 images).

use gen_tests::{assert_ok, run_gen};
use std::path::{Path, PathBuf};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist/tokenizer")
}

#[test]
fn the_shipped_folder_is_intact_and_self_contained() {
    let dir = gen_runtime::ModelDir::open(&shipped(), gen_runtime::ModelKind::Tokenizer).unwrap();
    dir.verify().unwrap();
    let model =
        gen_tokenizer::load_tokenizer(&shipped(), None, None, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(model.quantizer.codebook_size().unwrap(), 100_000);
    assert_eq!(model.config.latent_size(), 8);
}

#[test]
fn the_shipped_tokenizer_uses_its_codebook_on_the_test_split() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let hist = std::env::temp_dir().join(format!("gen-demo-usage-{}.png", std::process::id()));
    let out = assert_ok(&run_gen!(&[
        "utilization",
        "--quiet",
        "--tokenizer",
        shipped().to_str().unwrap(),
        "--data",
        "fmnist:test",
        "--batch-size",
        "500",
        "--histogram",
        hist.to_str().unwrap(),
    ]));
    let pct: f64 = out.split_whitespace().nth(1).unwrap().trim_end_matches('%').parse().unwrap();
    assert!(pct >= 82.0, "{out}");
    assert!(out.contains("640000 tokens of 10000 images at 32²"), "{out}");
    let _ = std::fs::remove_file(hist);
}

#[test]
fn the_shipped_tokenizer_reconstructs_test_images() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let out = assert_ok(&run_gen!(&[
        "rfid",
        "--quiet",
        "--tokenizer",
        shipped().to_str().unwrap(),
        "--data",
        "fmnist:test",
        "--count",
        "500",
        "--features",
        "fmnist-classifier",
        "--batch-size",
        "250",
    ]));
    let row = |label: &str| {
        let line = out.lines().find(|l| l.starts_with(&format!("| {label}"))).unwrap();
        line.split('|').nth(2).unwrap().trim().to_string()
    };
    let psnr: f64 = row("PSNR").split(" / ").next().unwrap().parse().unwrap();
    assert!(psnr >= 27.0, "{out}");
}
