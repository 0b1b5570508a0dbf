//! The shipped Fashion-MNIST classifier (`models/fmnist/classifier`): its accuracy on the real test split,
//! its training on the shared training module (bit-exact resume), and the commands built on it
//! (`gen fid --features fmnist-classifier`, `gen eval-classes`).

use gen_tests::{assert_ok, run_gen};
use std::path::{Path, PathBuf};

use candle_core::Device;
use gen_data::fmnist::{FashionMnist, DEFAULT_DIR};
use gen_eval::classifier::load_classifier;
use gen_eval::classifier_train::evaluate;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist/classifier")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-classifier-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn shipped_classifier_reaches_92_percent_mean_class_accuracy_on_the_test_split() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let data = std::path::PathBuf::from(DEFAULT_DIR);
    let model = load_classifier(&shipped(), &Device::Cpu).unwrap();
    let test = FashionMnist::load(&data, "t10k").unwrap();
    let per_class = evaluate(&model, &test, 500).unwrap();
    let accs: Vec<f64> = per_class.iter().map(|(c, t)| *c as f64 / *t as f64).collect();
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    for (name, a) in model.config.classes.iter().zip(&accs) {
        eprintln!("{name}: {:.2}%", 100.0 * a);
    }
    eprintln!("mean over classes: {:.2}%", 100.0 * mean);
    assert!(mean >= 0.92, "mean class accuracy {:.2}% < 92%", 100.0 * mean);
    // the folder is what its config says, and its weights are what was written
    gen_runtime::ModelDir::open(&shipped(), gen_runtime::ModelKind::Classifier).unwrap().verify().unwrap();
}

#[test]
fn classifier_training_resumes_bit_exactly() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let data = std::path::PathBuf::from(DEFAULT_DIR);
    let dir = tmp("resume");
    let d = data.to_str().unwrap();
    let common = |run: &str, out: &str, steps: &str| -> Vec<String> {
        [
            "train-classifier",
            "--run",
            run,
            "--out",
            out,
            "--data",
            d,
            "--epochs",
            "1",
            "--steps",
            steps,
            "--checkpoint-every",
            "6",
            "--batch-size",
            "32",
            "--threads",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| assert_ok(&run_gen!(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    run(common(a.to_str().unwrap(), dir.join("ma").to_str().unwrap(), "12"));
    run(common(b.to_str().unwrap(), dir.join("mb").to_str().unwrap(), "6"));
    let mut resumed = common(b.to_str().unwrap(), dir.join("mb").to_str().unwrap(), "12");
    resumed.push("--resume".into());
    run(resumed);
    let wa = gen_runtime::io::load_safetensors(&dir.join("ma/model.safetensors"), &Device::Cpu).unwrap();
    let wb = gen_runtime::io::load_safetensors(&dir.join("mb/model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        let (x, y) = (t.to_dtype(candle_core::DType::F32).unwrap(), wb[k].to_dtype(candle_core::DType::F32).unwrap());
        let (x, y): (Vec<f32>, Vec<f32>) =
            (x.flatten_all().unwrap().to_vec1().unwrap(), y.flatten_all().unwrap().to_vec1().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} differs after resume");
    }
    // the stopped run logged its last step too; the step-12 lines agree
    let last = |p: &Path| std::fs::read_to_string(p.join("log.jsonl")).unwrap().lines().last().unwrap().to_string();
    assert_eq!(last(&a), last(&b));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fid_in_the_classifier_space_and_per_class_accuracy_of_labelled_images() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let dir = tmp("fid");
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_ok(&run_gen!(&["export-fmnist", "--start", "0", "--count", "300", "--out", a.to_str().unwrap()]));
    assert_ok(&run_gen!(&["export-fmnist", "--start", "300", "--count", "300", "--out", b.to_str().unwrap()]));
    let fid = |x: &Path, y: &Path| -> f64 {
        let out = assert_ok(&run_gen!(&[
            "fid",
            "--quiet",
            x.to_str().unwrap(),
            y.to_str().unwrap(),
            "--features",
            "fmnist-classifier"
        ]));
        assert!(out.contains("features fmnist-classifier 128-d, 300 images / 300 images"), "{out}");
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // two halves of the real test split are close; real against noise is far
    let same = fid(&a, &b);
    let noise = dir.join("noise");
    std::fs::create_dir_all(&noise).unwrap();
    let mut rng = gen_runtime::Rng::new(3);
    for i in 0..300 {
        let data: Vec<u8> = (0..28 * 28).flat_map(|_| [rng.below(256) as u8; 3]).collect();
        gen_runtime::imageio::save_png(
            &noise.join(format!("{i}.png")),
            &gen_runtime::imageio::RgbImage::new(28, 28, data),
        )
        .unwrap();
    }
    let far = fid(&a, &noise);
    assert!(same * 10.0 < far, "FID real/real {same} should be far below real/noise {far}");
    // labelled images (export-fmnist names): per-class accuracy near the classifier's own
    let table = assert_ok(&run_gen!(&["eval-classes", "--quiet", "--images", a.to_str().unwrap()]));
    eprintln!("{table}");
    let mean_row = table.lines().find(|l| l.contains("mean over the")).unwrap();
    let acc: f64 = mean_row.split('|').nth(3).unwrap().trim().trim_end_matches('%').parse().unwrap();
    assert!(acc >= 85.0, "mean accuracy on 300 real test images {acc}%");
    let o = run_gen!(&["eval-classes", "--images", noise.to_str().unwrap()]);
    gen_tests::assert_one_line_error(&o, &["no image is labelled"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
