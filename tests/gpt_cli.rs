//! The GPT prior end to end through the `gen` binary: the official container samples exactly as the
//! fixtures (greedy tokens of golden g1 through g2's container and the golden tokenizer), shards →
//! `train-prior` → model folder → `sample` on synthetic images, exact resume, and every bad input a
//! one-line error.

use std::path::Path;

use candle_core::Tensor;
use gen_data::tokens::TokenFile;
use gen_tests::{assert_ok, assert_one_line_error, class_images, fixture, load, run_gen, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// g2's container with the golden f16-tiny tokenizer (1,000 codes, 4×4 grid at 64²).
fn golden_args(root: &Path, extra: &[&str]) -> Vec<String> {
    let tok = root.join("tokenizer/f16-tiny/weights.safetensors");
    let gpt = root.join("gpt/g2/checkpoint.pth");
    let mut v: Vec<String> = ["sample", "--model", s(&gpt), "--tokenizer", s(&tok), "--resolution", "64", "--quiet"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

#[test]
fn official_container_greedy_sampling_gives_the_golden_tokens() {
    let Some(root) = fixture("gpt").and_then(|g| g.parent().map(Path::to_path_buf)) else { return };
    if fixture("tokenizer/f16-tiny").is_none() {
        return;
    }
    let want = load(&root.join("gpt/g1/greedy.safetensors"))["tokens"].to_vec2::<i64>().unwrap();
    let dir = temp_dir("gpt-golden");
    for class in [3usize, 9] {
        let (png, ids) = (dir.join(format!("{class}.png")), dir.join(format!("{class}.safetensors")));
        let args = golden_args(
            &root,
            &[
                "--class",
                &class.to_string(),
                "--preset",
                "greedy",
                "--num-samples",
                "2",
                "--out",
                s(&png),
                "--tokens-out",
                s(&ids),
            ],
        );
        let out = assert_ok(&run_gen!(&args));
        assert!(out.contains(&format!("class {class}")), "{out}");
        let got = TokenFile::read(&ids, Some(1000)).unwrap();
        assert_eq!(got.grid, (4, 4));
        let want_row: Vec<u32> = want[class].iter().map(|&t| t as u32).collect();
        assert_eq!(got.ids, vec![want_row.clone(), want_row], "class {class}: greedy tokens");
        assert!(png.exists());
    }
}

#[test]
fn bad_sampling_options_are_one_line_errors() {
    let Some(root) = fixture("gpt").and_then(|g| g.parent().map(Path::to_path_buf)) else { return };
    if fixture("tokenizer/f16-tiny").is_none() {
        return;
    }
    let out = temp_dir("gpt-bad").join("x.png");
    let o = s(&out);
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--class", "10", "--out", o], &["--class 10 is out of range", "0 to 9"]),
        (&["--class", "1", "--top-k", "0", "--out", o], &["--top-k 0"]),
        (&["--class", "1", "--top-p", "1.5", "--out", o], &["--top-p 1.5", "(0, 1]"]),
        (&["--class", "1", "--temperature", "0", "--out", o], &["--temperature 0"]),
        (&["--class", "1", "--cfg-scale", "3", "--out", o], &["--cfg-scale", "null class"]),
        (&["--class", "1", "--prompt", "x", "--out", o], &["--prompt"]),
    ];
    for (extra, needles) in cases {
        assert_one_line_error(&run_gen!(&golden_args(&root, extra)), needles);
    }
    let gpt = root.join("gpt/g2/checkpoint.pth");
    // the container's own vqgan.* half holds placeholders, not a tokenizer
    assert_one_line_error(
        &run_gen!(&["sample", "--model", s(&gpt), "--class", "1", "--out", o]),
        &["vqgan.* half", "--tokenizer"],
    );
}

const TINY: &str = "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nnull_class = true\ntied_head = true\n\n\
[optim]\nlr = 1e-3\nmin_lr = 0.0\nwarmup_steps = 1\nbeta1 = 0.9\nbeta2 = 0.95\neps = 1e-8\nweight_decay = 0.01\n\n\
[train]\nsteps = 4\nbatch_size = 4\nseed = 1\nlog_every = 1\ncheckpoint_every = 2\npkeep = 0.8\nclass_dropout = 0.2\nval_images = 8\n";

#[test]
fn shards_train_prior_and_sample_end_to_end_with_exact_resume() {
    let Some(tok) = fixture("tokenizer/f16-tiny/weights.safetensors") else { return };
    let dir = temp_dir("gpt-e2e");
    let images = class_images(&dir);
    let shards = dir.join("shards");
    let t = ["--tokenizer", s(&tok), "--resolution", "64", "--quiet"];
    let tokenize = |extra: &[&str]| {
        let mut a = vec!["tokenize", "--data", s(&images), "--out", s(&shards), "--shard-size", "5"];
        a.extend(t);
        a.extend(extra);
        run_gen!(&a)
    };
    // two parts, merged; a rerun keeps the complete shards
    assert_ok(&tokenize(&["--part", "0/2"]));
    assert_ok(&tokenize(&["--part", "1/2"]));
    let merged = assert_ok(&run_gen!(&["shards", "merge", s(&shards)]));
    assert!(merged.contains("4 shards (16 images)"), "{merged}");
    let manifest = std::fs::read_to_string(shards.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"a\"") && manifest.contains("\"vocab\": 1000"), "{manifest}");

    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "train-prior",
            "--shards",
            s(&shards),
            "--val-shards",
            s(&shards),
            "--config",
            s(&cfg),
            "--out",
            s(out),
        ];
        a.extend(["--tokenizer", s(&tok), "--quiet"]);
        a.extend(extra);
        run_gen!(&a)
    };
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    assert_ok(&train(&whole, &[]));
    assert!(assert_ok(&train(&parts, &["--until", "2"])).contains("stopped at step 2"));
    assert_ok(&train(&parts, &["--resume"]));
    let a = std::fs::read(whole.join("model/model.safetensors")).unwrap();
    let b = std::fs::read(parts.join("model/model.safetensors")).unwrap();
    assert!(a == b, "a resumed run must equal an unbroken one bit for bit");
    let log = std::fs::read_to_string(whole.join("log.jsonl")).unwrap();
    assert!(log.contains("val_loss") && whole.join("loss.png").exists(), "{log}");

    // the model folder samples by class name, with guidance, decoded by its recorded tokenizer
    let model = whole.join("model");
    let png = dir.join("grid.png");
    let out = assert_ok(&run_gen!(&[
        "sample",
        "--model",
        s(&model),
        "--prompt",
        "b",
        "--num-samples",
        "3",
        "--cfg-scale",
        "2",
        "--top-p",
        "0.9",
        "--resolution",
        "64",
        "--out",
        s(&png),
        "--quiet"
    ]));
    assert!(out.contains("class 1 (b)"), "{out}");
    assert!(png.exists());
    // the same seed gives the same image; a tokenizer other than the recorded one is refused
    let png2 = dir.join("grid2.png");
    assert_ok(&run_gen!(&[
        "sample",
        "--model",
        s(&model),
        "--class",
        "1",
        "--num-samples",
        "3",
        "--cfg-scale",
        "2",
        "--top-p",
        "0.9",
        "--resolution",
        "64",
        "--out",
        s(&png2),
        "--quiet"
    ]));
    assert_eq!(std::fs::read(&png).unwrap(), std::fs::read(&png2).unwrap());
    let other = fixture("tokenizer/f16-tiny/checkpoint.pth").unwrap();
    let o = run_gen!(&["sample", "--model", s(&model), "--class", "0", "--tokenizer", s(&other), "--out", s(&png)]);
    assert_one_line_error(&o, &["checkpoint.pth", "not the one"]);
    // a [sampling] table in the folder's config.toml is the default (here greedy: every sample alike)
    let mut text = std::fs::read_to_string(model.join("config.toml")).unwrap();
    text.push_str("\n[sampling]\ntop_k = 1\n");
    std::fs::write(model.join("config.toml"), text).unwrap();
    let ids = dir.join("greedy.safetensors");
    assert_ok(&run_gen!(&[
        "sample",
        "--model",
        s(&model),
        "--class",
        "0",
        "--num-samples",
        "3",
        "--resolution",
        "64",
        "--out",
        s(&png),
        "--tokens-out",
        s(&ids),
        "--quiet"
    ]));
    let greedy = TokenFile::read(&ids, None).unwrap().ids;
    assert!(greedy[0] == greedy[1] && greedy[1] == greedy[2], "{greedy:?}");
    // the recorded tokenizer with another codebook: its size is not the GPT's image vocabulary
    let cb = dir.join("codebook-500.safetensors");
    let rows = Tensor::zeros((500, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("codebook".to_string(), rows)]), &cb).unwrap();
    let o = run_gen!(&[
        "sample",
        "--model",
        s(&model),
        "--class",
        "0",
        "--codebook",
        s(&cb),
        "--resolution",
        "64",
        "--out",
        s(&png)
    ]);
    assert_one_line_error(&o, &["1000 image tokens", "codebook of 500"]);
}

#[test]
fn bad_shards_are_one_line_errors() {
    let Some(tok) = fixture("tokenizer/f16-tiny/weights.safetensors") else { return };
    let dir = temp_dir("gpt-shards-bad");
    let images = class_images(&dir);
    let shards = dir.join("shards");
    assert_ok(&run_gen!(&[
        "tokenize",
        "--data",
        s(&images),
        "--out",
        s(&shards),
        "--shard-size",
        "8",
        "--tokenizer",
        s(&tok),
        "--resolution",
        "64",
        "--quiet"
    ]));
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let train = |sh: &Path, extra: &[&str]| {
        let out = dir.join("run");
        let _ = std::fs::remove_dir_all(&out);
        let mut a = vec!["train-prior", "--shards", s(sh), "--config", s(&cfg), "--out", s(&out), "--quiet"];
        a.extend(extra);
        run_gen!(&a)
    };
    // shards of another tokenizer than the one named
    let other = fixture("tokenizer/f16-tiny/checkpoint.pth").unwrap();
    assert_one_line_error(&train(&shards, &["--tokenizer", s(&other)]), &["manifest.json", "re-tokenize"]);
    // an empty folder
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_one_line_error(&train(&empty, &[]), &["manifest.json", "gen tokenize"]);
    // a truncated shard
    let shard = shards.join("shard-00001.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 9]).unwrap();
    assert_one_line_error(&train(&shards, &[]), &["shard-00001.safetensors", "truncated"]);
    // --part out of range
    let o = run_gen!(&["tokenize", "--data", s(&images), "--out", s(&shards), "--tokenizer", s(&tok), "--part", "2/2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("0 ≤ i < n"));
}
