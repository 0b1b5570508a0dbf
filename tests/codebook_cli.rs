//! `gen init-codebook`: k-means codebooks from the Fashion-MNIST classifier's patch features, per class
//! and global, in both file formats, reproducible from the seed; and its bad inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gen_data::fmnist::CLASS_NAMES;
use gen_tests::assert_one_line_error;
use gen_tokenizer::codebook::Codebook;
use gen_tokenizer::load::read_codebook;

fn gen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gen")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-codebook-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn per_class_codebook_from_fmnist_is_reproducible_and_readable_in_both_formats() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let dir = tmp("fmnist");
    let common = [
        "init-codebook",
        "--quiet",
        "--data",
        "fmnist:test",
        "--count",
        "1000",
        "--size",
        "205",
        "--max-points",
        "1500",
    ];
    let run = |out: &Path, seed: &str| {
        ok(gen(&[&common[..], &["--seed", seed, "--out", s(out), "--batch-size", "500"]].concat()))
    };
    let (a, b, c, pth) =
        (dir.join("a.safetensors"), dir.join("b.safetensors"), dir.join("c.safetensors"), dir.join("cb.pth"));
    let printed = run(&a, "1");
    assert!(printed.contains("205 × 64 codebook"), "{printed}");
    run(&b, "1");
    run(&c, "2");
    run(&pth, "1");
    let va = read_codebook(&a).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(va, read_codebook(&b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), "same seed");
    assert_ne!(va, read_codebook(&c).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), "another seed");
    assert_eq!(va, read_codebook(&pth).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), ".pth");
    let info = Codebook::read_info(&a).unwrap().unwrap();
    assert_eq!((info.encoder.as_str(), info.grouping.as_str(), info.seed), ("fmnist-classifier", "per-class", 1));
    let names: Vec<&str> = info.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, CLASS_NAMES);
    // 205 = 10 × 20 + 5: the first five classes get one more; starts follow in class order
    let counts: Vec<usize> = info.groups.iter().map(|g| g.count).collect();
    assert_eq!(counts, [21, 21, 21, 21, 21, 20, 20, 20, 20, 20]);
    assert!(info.groups.windows(2).all(|w| w[1].start == w[0].start + w[0].count));
    assert!(info.groups.iter().all(|g| g.points == 1500 && g.inertia > 0.0));
    // the features are post-ReLU: centres are non-negative means of them
    assert!(va.iter().all(|v| v.is_finite() && *v >= 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_folders_cluster_per_subfolder_in_sorted_order_or_globally() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let dir = tmp("folders");
    let data = dir.join("data");
    for (class, start) in [("zeta", "0"), ("alpha", "40")] {
        let out = data.join(class);
        ok(gen(&["export-fmnist", "--start", start, "--count", "40", "--out", s(&out)]));
    }
    let per = dir.join("per.safetensors");
    ok(gen(&["init-codebook", "--quiet", "--data", s(&data), "--size", "30", "--per-class", "--out", s(&per)]));
    let info = Codebook::read_info(&per).unwrap().unwrap();
    let groups: Vec<(&str, usize, usize)> = info.groups.iter().map(|g| (g.name.as_str(), g.count, g.points)).collect();
    assert_eq!(groups, [("alpha", 15, 40 * 49), ("zeta", 15, 40 * 49)]);
    let global = dir.join("global.safetensors");
    ok(gen(&[
        "init-codebook",
        "--quiet",
        "--data",
        s(&data),
        "--size",
        "30",
        "--global",
        "--pool",
        "7",
        "--out",
        s(&global),
    ]));
    let info = Codebook::read_info(&global).unwrap().unwrap();
    assert_eq!(info.grouping, "global");
    assert_eq!(info.groups.len(), 1);
    assert_eq!(info.groups[0].points, 80, "--pool 7 leaves one vector per image");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tmp("bad");
    let out = dir.join("cb.safetensors");
    // an empty folder
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = gen(&["init-codebook", "--data", s(&empty), "--size", "4", "--global", "--out", s(&out)]);
    assert_one_line_error(&o, &["holds no images"]);
    // the per-class and global flags together
    let o = gen(&["init-codebook", "--data", s(&empty), "--size", "4", "--global", "--per-class", "--out", s(&out)]);
    assert!(!o.status.success());
    if gen_tests::fmnist_installed() {
        // images directly in the root cannot be grouped by class
        let loose = dir.join("loose");
        ok(gen(&["export-fmnist", "--count", "3", "--out", s(&loose)]));
        let o = gen(&["init-codebook", "--data", s(&loose), "--size", "4", "--out", s(&out)]);
        assert_one_line_error(&o, &["--per-class needs one subfolder per class", "--global"]);
        // more centres than feature vectors: the class is named
        let o = gen(&["init-codebook", "--data", s(&loose), "--size", "500", "--global", "--out", s(&out)]);
        assert_one_line_error(&o, &["all: 147 feature vectors cannot give 500 centres"]);
        // an unreadable image stops the run, named
        std::fs::write(loose.join("broken.png"), b"not a png").unwrap();
        let o = gen(&["init-codebook", "--data", s(&loose), "--size", "4", "--global", "--out", s(&out)]);
        assert_one_line_error(&o, &["broken.png"]);
        assert!(!out.exists(), "nothing is written on error");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_codebook_experiment_trains_evaluates_and_reports_every_run() {
    if !gen_tests::fmnist_installed() {
        return;
    }
    let dir = tmp("experiment");
    let base = dir.join("base.toml");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tokenizer/fmnist-experiment.toml"))
            .unwrap()
            .replace("steps = 1000", "steps = 3")
            .replace("batch_size = 32", "batch_size = 4")
            .replace("disc_start = 500", "disc_start = 1");
    std::fs::write(&base, text).unwrap();
    let out = dir.join("exp");
    let args = [
        "codebook-experiment",
        "--quiet",
        "--base",
        s(&base),
        "--sizes",
        "40,80",
        "--kinds",
        "vqgan,lc",
        "--eval-count",
        "60",
        "--codebook-images",
        "300",
        "--kmeans-points",
        "500",
        "--kmeans-iter",
        "5",
        "--out",
        s(&out),
    ];
    let printed = ok(gen(&args));
    assert!(printed.contains("| quantizer | codebook | utilisation"), "{printed}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let got: Vec<(String, u64)> =
        rows.iter().map(|r| (r["kind"].as_str().unwrap().to_string(), r["size"].as_u64().unwrap())).collect();
    assert_eq!(got, [("vqgan".into(), 40), ("lc".into(), 40), ("vqgan".into(), 80), ("lc".into(), 80)]);
    for r in &rows {
        let u = r["utilization"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&u) && r["rfid"].as_f64().unwrap().is_finite() && r["psnr"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    for f in [
        "results.md",
        "utilization-vs-size.png",
        "rfid-vs-size.png",
        "utilization-over-training-40.png",
        "utilization-over-training-80.png",
        "codebook-80.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    // a second call reuses the trained runs and their saved evaluations, and gives the same table
    assert!(out.join("lc-80/eval.json").exists() && out.join("vqgan-40/eval.json").exists());
    let table = |out: &str| out[out.find("| quantizer").unwrap()..].to_string();
    let again = ok(gen(&args));
    assert!(!again.contains("trained"), "{again}");
    assert_eq!(table(&again), table(&printed));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny CLIP vision tower in Hugging Face's layout (width 64, 2 layers, patch 4, 16² images, 8-d out).
fn tiny_clip(path: &Path) {
    use candle_core::{Device, Tensor};
    let mut rng = gen_runtime::Rng::new(0);
    let mut t: Vec<(String, Tensor)> = Vec::new();
    let mut put = |k: &str, shape: &[usize]| t.push((k.to_string(), rng.randn(shape, 0.1, &Device::Cpu).unwrap()));
    put("vision_model.embeddings.patch_embedding.weight", &[64, 3, 4, 4]);
    put("vision_model.embeddings.class_embedding", &[64]);
    put("vision_model.embeddings.position_embedding.weight", &[17, 64]);
    for n in ["pre_layrnorm", "post_layernorm"] {
        put(&format!("vision_model.{n}.weight"), &[64]);
        put(&format!("vision_model.{n}.bias"), &[64]);
    }
    for i in 0..2 {
        let l = format!("vision_model.encoder.layers.{i}");
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            put(&format!("{l}.self_attn.{p}.weight"), &[64, 64]);
            put(&format!("{l}.self_attn.{p}.bias"), &[64]);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            put(&format!("{l}.{n}.weight"), &[64]);
            put(&format!("{l}.{n}.bias"), &[64]);
        }
        put(&format!("{l}.mlp.fc1.weight"), &[256, 64]);
        put(&format!("{l}.mlp.fc1.bias"), &[256]);
        put(&format!("{l}.mlp.fc2.weight"), &[64, 256]);
        put(&format!("{l}.mlp.fc2.bias"), &[64]);
    }
    put("visual_projection.weight", &[8, 64]);
    gen_runtime::io::save_safetensors(path, &t, None).unwrap();
}

#[test]
fn clip_features_give_a_per_class_codebook_from_image_folders() {
    use gen_runtime::imageio::{save_png, RgbImage};
    let dir = tmp("clip");
    let clip = dir.join("clip.safetensors");
    tiny_clip(&clip);
    let data = dir.join("data");
    for (c, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..6 {
            let v = (40 * c + 10 * i) as u8;
            let img: Vec<u8> = (0..20 * 24).flat_map(|p| [v, (p % 251) as u8, 255 - v]).collect();
            save_png(&data.join(class).join(format!("{i}.png")), &RgbImage::new(24, 20, img)).unwrap();
        }
    }
    let out = dir.join("cb.pth");
    let printed = ok(gen(&[
        "init-codebook",
        "--quiet",
        "--encoder",
        "clip",
        "--clip",
        s(&clip),
        "--data",
        s(&data),
        "--size",
        "10",
        "--pool",
        "2",
        "--out",
        s(&out),
    ]));
    assert!(printed.contains("10 × 8 codebook"), "{printed}");
    let cb = read_codebook(&out).unwrap();
    assert_eq!(cb.dims(), [10, 8]);
    // the default pool (4, the official) leaves one vector per image of this 4×4-token model: 6 per class
    let o = gen(&[
        "init-codebook",
        "--encoder",
        "clip",
        "--clip",
        s(&clip),
        "--data",
        s(&data),
        "--size",
        "14",
        "--out",
        s(&out),
    ]);
    assert_one_line_error(&o, &["cat: 6 feature vectors cannot give 7 centres"]);
    let o = gen(&[
        "init-codebook",
        "--encoder",
        "clip",
        "--clip",
        s(&dir.join("none.safetensors")),
        "--data",
        s(&data),
        "--size",
        "4",
        "--out",
        s(&out),
    ]);
    assert_one_line_error(&o, &["none.safetensors", "openai/clip-vit-large-patch14"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
