//! Parity of the evaluator with pytorch-fid 0.3.0 (`../shared/golden/fid`): preprocessing, the FID
//! Inception (features and intermediates), the Fréchet distance in each of pytorch-fid's branches, and
//! the statistics files. The network's weights are rebuilt from `weights_spec.json` by `detinit`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gen_eval::inception::{FidInception, Tap};
use gen_eval::preprocess::{pytorch_fid_input, unit_range_input};
use gen_eval::{frechet_distance, FrechetError, FrechetOptions, Gaussian, StatsAccumulator};
use gen_nn::Weights;
use gen_runtime::imageio::RgbImage;
use gen_tests::{assert_close, detinit, fixture, load};

fn det_inception(root: &Path) -> FidInception {
    let weights = Weights::new("det weights", detinit::build(&root.join("weights_spec.json")));
    FidInception::new(weights.var_builder(DType::F32, &Device::Cpu)).unwrap()
}

fn image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

fn chw(data: Vec<f32>, h: usize, w: usize) -> Tensor {
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu).unwrap()
}

#[test]
fn preprocessing_and_features_match_pytorch_fid_on_six_images() {
    let Some(root) = fixture("fid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    let net = det_inception(&root);
    for i in 0..6 {
        let img = image(&cases[&format!("img{i}")]);
        let x = chw(pytorch_fid_input(&img), 299, 299);
        assert_close(&format!("input{i}"), &x.squeeze(0).unwrap(), &cases[&format!("input{i}")], 1e-6, 0.0);
        let b = net.blocks(&x, Tap::Dims2048).unwrap();
        let mean = |t: Option<Tensor>| t.unwrap().flatten_from(2).unwrap().mean(2).unwrap().squeeze(0).unwrap();
        assert_close(&format!("feat64_{i}"), &mean(b.block0), &cases[&format!("feat64_{i}")], 2e-5, 0.0);
        assert_close(&format!("feat192_{i}"), &mean(b.block1), &cases[&format!("feat192_{i}")], 2e-5, 0.0);
        assert_close(&format!("feat768_{i}"), &mean(b.block2), &cases[&format!("feat768_{i}")], 2e-5, 0.0);
        assert_close(&format!("pool3_{i}"), &mean(b.mixed_7c), &cases[&format!("pool3_{i}")], 2e-5, 0.0);
    }
}

#[test]
fn network_intermediates_match_on_a_non_square_input_without_resize() {
    let Some(root) = fixture("fid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    let net = det_inception(&root);
    let img = image(&cases["net_img"]);
    let x = chw(unit_range_input(&img), 107, 123);
    assert_close("net_input", &x.squeeze(0).unwrap(), &cases["net_input"], 1e-6, 0.0);
    let b = net.blocks(&x, Tap::Dims2048).unwrap();
    let sq = |t: Option<Tensor>| t.unwrap().squeeze(0).unwrap();
    assert_close("net_block0", &sq(b.block0), &cases["net_block0"], 2e-5, 0.0);
    assert_close("net_block1", &sq(b.block1), &cases["net_block1"], 2e-5, 0.0);
    assert_close("net_mixed_5d", &sq(b.mixed_5d), &cases["net_mixed_5d"], 2e-5, 0.0);
    assert_close("net_block2", &sq(b.block2), &cases["net_block2"], 2e-5, 0.0);
    let m7c = sq(b.mixed_7c);
    assert_close("net_mixed_7c", &m7c, &cases["net_mixed_7c"], 2e-5, 0.0);
    assert_close("net_pool3", &m7c.flatten_from(1).unwrap().mean(1).unwrap(), &cases["net_pool3"], 2e-5, 0.0);
    // features() takes the same pool3
    let f = net.features(&x, Tap::Dims2048).unwrap().squeeze(0).unwrap();
    assert_close("features(pool3)", &f, &cases["net_pool3"], 2e-5, 0.0);
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// A case's two Gaussians: stored sigmas, or (512-dim cases) I16 samples × 0.0625 with the stored means.
fn gaussians(cases: &HashMap<String, Tensor>, c: &str) -> (Gaussian, Gaussian) {
    let one = |k: usize| {
        let mu = f64s(&cases[&format!("{c}.mu{k}")]);
        let sigma = match cases.get(&format!("{c}.sigma{k}")) {
            Some(s) => f64s(s),
            None => {
                let x = &cases[&format!("{c}.x{k}")];
                let (n, d) = x.dims2().unwrap();
                let f: Vec<f32> = f64s(x).iter().map(|&v| (v * 0.0625) as f32).collect();
                let mut acc = StatsAccumulator::new(d);
                acc.add(&f);
                assert_eq!(acc.count(), n);
                let g = acc.finish().unwrap();
                for (a, b) in g.mu.iter().zip(&mu) {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{c}: mean {a} vs stored {b}");
                }
                g.sigma
            }
        };
        Gaussian { mu, sigma }
    };
    (one(1), one(2))
}

#[test]
fn frechet_distance_matches_every_pytorch_fid_branch() {
    let Some(root) = fixture("fid") else { return };
    let cases = load(&root.join("frechet_cases.safetensors"));
    let opts = FrechetOptions::default();
    for (c, rtol) in [("full64", 1e-10), ("full512", 1e-10), ("rankdef512", 1e-7), ("imag64", 1e-7)] {
        let (a, b) = gaussians(&cases, c);
        let want = f64s(&cases[&format!("{c}.fid")])[0];
        let got = frechet_distance(&a, &b, opts).unwrap();
        let rel = (got - want).abs() / want.abs();
        assert!(rel <= rtol, "{c}: {got} vs official {want} (relative {rel:.2e} > {rtol:e})");
        eprintln!("frechet {c}: relative error {rel:.2e} (tolerance {rtol:e})");
    }
    // epsretry: scipy's Schur sqrtm failed and pytorch-fid retried with σ + 1e-6·I; the eigen route never
    // fails, so it is within 1.1e-3 relative, and exact when the retry is forced (fixture README).
    let (a, b) = gaussians(&cases, "epsretry");
    let want = f64s(&cases["epsretry.fid"])[0];
    let plain = frechet_distance(&a, &b, opts).unwrap();
    assert!((plain - want).abs() / want <= 1.1e-3, "epsretry without the retry: {plain} vs {want}");
    // the retry adds ε to the square-root term only; the traces keep the original σ
    let forced = frechet_distance(&a, &b, FrechetOptions { force_eps_retry: true }).unwrap();
    assert!((forced - want).abs() / want <= 1e-7, "epsretry with the retry: {forced} vs {want}");
    // raise4: an indefinite σ₂ is pytorch-fid's ValueError
    let (a, b) = gaussians(&cases, "raise4");
    match frechet_distance(&a, &b, opts) {
        Err(FrechetError::Imaginary(m)) => assert!(m > 1e-3, "{m}"),
        other => panic!("raise4: expected the imaginary-component error, got {other:?}"),
    }
}

// ----- statistics files -----

#[test]
fn pytorch_fid_and_adm_npz_files_read_exactly() {
    let Some(root) = fixture("fid") else { return };
    let e2e = load(&root.join("e2e_stats64.safetensors"));
    let g = gen_eval::stats_file::read_stats(&root.join("stats_A_dims64.npz")).unwrap();
    assert_eq!(g.mu, f64s(&e2e["A.mu"]));
    assert_eq!(g.sigma, f64s(&e2e["A.sigma"]));
    let adm = gen_eval::npz::read_npz(&root.join("adm_ref_batch.npz")).unwrap();
    assert_eq!((adm["arr_0"].shape.as_slice(), adm["mu"].shape.as_slice()), (&[6, 16, 16, 3][..], &[16][..]));
    assert_eq!((adm["mu_s"].shape.as_slice(), adm["sigma_s"].shape.as_slice()), (&[12][..], &[12, 12][..]));
    let ref_stats = gen_eval::stats_file::read_stats(&root.join("adm_ref_batch.npz")).unwrap();
    assert_eq!(ref_stats.mu, adm["mu"].to_f64());
    let samples = gen_eval::stats_file::read_image_batch(&root.join("adm_sample_batch.npz")).unwrap();
    assert_eq!((samples.len(), samples[0].width, samples[0].height), (5, 16, 16));
    // written statistics read back bit for bit
    let out = std::env::temp_dir().join(format!("gen-fid-stats-{}.npz", std::process::id()));
    gen_eval::stats_file::write_stats(&out, &g, false).unwrap();
    assert_eq!(gen_eval::stats_file::read_stats(&out).unwrap(), g);
    std::fs::remove_file(&out).unwrap();
}

// ----- `gen fid` end to end -----

/// A file removed when dropped (the det weights are 95 MB).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::ops::Deref for TempFile {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The det weights as a safetensors file (what `--inception` takes besides the official .pth).
fn det_weights_file(root: &Path, name: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("gen-fid-det-{}-{name}.safetensors", std::process::id()));
    let w: Vec<(String, Tensor)> = detinit::build(&root.join("weights_spec.json")).into_iter().collect();
    gen_runtime::io::save_safetensors(&path, &w, None).unwrap();
    TempFile(path)
}

fn gen_fid(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gen")).arg("fid").args(args).output().unwrap()
}

fn printed_fid(o: &std::process::Output) -> f64 {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "gen fid failed: {}", String::from_utf8_lossy(&o.stderr));
    out.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no FID in {out:?}"))
}

fn expected(root: &Path, dims: &str) -> (f64, f64, f64) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap()).unwrap();
    let e = &v[dims];
    (e["fid"].as_f64().unwrap(), e["atol"].as_f64().unwrap(), e["rtol"].as_f64().unwrap())
}

#[test]
fn gen_fid_on_the_golden_folders_prints_the_official_fid() {
    let Some(root) = fixture("fid") else { return };
    let w = det_weights_file(&root, "e2e");
    let (a, b) = (root.join("A"), root.join("B"));
    let (a, b, w) = (a.to_str().unwrap(), b.to_str().unwrap(), w.to_str().unwrap());
    for (dims, key) in [("64", "dims64"), ("2048", "dims2048")] {
        let o = gen_fid(&[a, b, "--inception", w, "--dims", dims, "--digits", "12", "--batch-size", "50", "--quiet"]);
        let got = printed_fid(&o);
        let (want, atol, rtol) = expected(&root, key);
        let err = (got - want).abs();
        assert!(err <= atol + rtol * want.abs(), "dims {dims}: FID {got} vs official {want} (|diff| {err:.2e})");
        eprintln!(
            "gen fid dims {dims}: {got} vs official {want} (|diff| {err:.2e}, tolerance {:.2e})",
            atol + rtol * want
        );
    }
    // the default output: 4 decimals, the mode, the features and the counts
    let o = gen_fid(&[a, b, "--inception", w, "--dims", "64", "--quiet"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.trim(), "FID 0.5091 (mode pytorch-fid, inception 64-d, 100 images / 100 images)");
}

#[test]
fn saved_statistics_match_the_official_ones_and_give_the_same_fid() {
    let Some(root) = fixture("fid") else { return };
    let w = det_weights_file(&root, "save");
    let dir = std::env::temp_dir().join(format!("gen-fid-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("A64.npz");
    let o = gen_fid(&[
        root.join("A").to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--dims",
        "64",
        "--save-stats",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = gen_eval::stats_file::read_stats(&out).unwrap();
    let official = load(&root.join("e2e_stats64.safetensors"));
    let official_mu = f64s(&official["A.mu"]);
    let official_sigma = f64s(&official["A.sigma"]);
    let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst(&ours.mu, &official_mu) < 2e-5, "mu differs by {}", worst(&ours.mu, &official_mu));
    assert!(worst(&ours.sigma, &official_sigma) < 1e-8, "sigma differs by {}", worst(&ours.sigma, &official_sigma));
    // statistics file against folder: the official FID
    let o = gen_fid(&[
        root.join("stats_A_dims64.npz").to_str().unwrap(),
        root.join("B").to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--dims",
        "64",
        "--digits",
        "12",
        "--quiet",
    ]);
    let (want, atol, rtol) = expected(&root, "dims64");
    let got = printed_fid(&o);
    assert!((got - want).abs() <= atol + rtol * want, "{got} vs {want}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_of_non_square_images_gives_the_statistics_of_their_official_features() {
    let Some(root) = fixture("fid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    let w = det_weights_file(&root, "nonsquare");
    let dir = std::env::temp_dir().join(format!("gen-fid-nonsquare-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    let mut official = Vec::new();
    for i in 0..6 {
        gen_runtime::imageio::save_png(&dir.join(format!("imgs/{i}.png")), &image(&cases[&format!("img{i}")])).unwrap();
        official.extend(cases[&format!("pool3_{i}")].to_vec1::<f32>().unwrap());
    }
    let out = dir.join("s.npz");
    let imgs = dir.join("imgs");
    let o = gen_fid(&[
        imgs.to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--save-stats",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = gen_eval::stats_file::read_stats(&out).unwrap();
    let mut acc = StatsAccumulator::new(2048);
    acc.add(&official);
    let want = acc.finish().unwrap();
    // features agree to 2e-5 (fixture tolerance): the mean to that, the covariance to ~2·2e-5·max|x − μ|
    let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst(&ours.mu, &want.mu) <= 2e-5, "mu differs by {}", worst(&ours.mu, &want.mu));
    assert!(worst(&ours.sigma, &want.sigma) <= 1e-5, "sigma differs by {}", worst(&ours.sigma, &want.sigma));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gen_fid_clean_mode_names_its_protocol_and_writes_clean_fid_statistics() {
    let Some(root) = fixture("fid") else { return };
    let w = det_weights_file(&root, "clean");
    let (a, b) = (root.join("A"), root.join("B"));
    let o = gen_fid(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--dims",
        "64",
        "--mode",
        "clean",
        "--quiet",
    ]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && text.contains("(mode clean, inception 64-d, 100 images / 100 images)"), "{text}");
    let clean = printed_fid(&o);
    let (pytorch, _, _) = expected(&root, "dims64");
    assert!(
        clean.is_finite() && clean > 0.0 && (clean - pytorch).abs() > 1e-3,
        "clean {clean} vs pytorch-fid {pytorch}"
    );
    // --save-stats in clean mode: clean-fid's layout (mu f32, sigma f64)
    let out = std::env::temp_dir().join(format!("gen-fid-clean-{}.npz", std::process::id()));
    let o = gen_fid(&[
        a.to_str().unwrap(),
        "--inception",
        w.to_str().unwrap(),
        "--dims",
        "64",
        "--mode",
        "clean",
        "--save-stats",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arrays = gen_eval::npz::read_npz(&out).unwrap();
    assert!(matches!(arrays["mu"].data, gen_eval::npz::NpyData::F32(_)));
    assert!(matches!(arrays["sigma"].data, gen_eval::npz::NpyData::F64(_)));
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn features_of_an_image_do_not_depend_on_its_batch() {
    let Some(root) = fixture("fid") else { return };
    let net = det_inception(&root);
    let imgs: Vec<RgbImage> =
        (0..3).map(|i| gen_runtime::imageio::load_rgb(&root.join(format!("A/{i:03}.png"))).unwrap().0).collect();
    let batch = Tensor::stack(
        &imgs.iter().map(|im| chw(pytorch_fid_input(im), 299, 299).squeeze(0).unwrap()).collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let together = net.features(&batch, Tap::Dims2048).unwrap().to_vec2::<f32>().unwrap();
    for (i, im) in imgs.iter().enumerate() {
        let alone =
            net.features(&chw(pytorch_fid_input(im), 299, 299), Tap::Dims2048).unwrap().to_vec2::<f32>().unwrap();
        let same = alone[0].iter().zip(&together[i]).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "image {i}: features differ between batch 1 and batch 3");
    }
}

#[test]
fn parts_extracted_separately_merge_to_the_single_run_statistics_bit_for_bit() {
    let Some(root) = fixture("fid") else { return };
    let w = det_weights_file(&root, "parts");
    let dir = std::env::temp_dir().join(format!("gen-fid-parts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, w) = (root.join("A"), w.to_str().unwrap().to_string());
    let a = a.to_str().unwrap();
    let common = ["--inception", w.as_str(), "--dims", "64", "--quiet"];
    // one run, batch 50
    let single = dir.join("single.npz");
    let o = gen_fid(&[&[a, "--save-stats", single.to_str().unwrap(), "--batch-size", "50"][..], &common[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // three parts (33 + 33 + 34 images), another batch size, merged in any order
    let parts: Vec<std::path::PathBuf> = (0..3).map(|i| dir.join(format!("part{i}.safetensors"))).collect();
    for (i, p) in parts.iter().enumerate() {
        let part = format!("{i}/3");
        let o = gen_fid(
            &[&[a, "--part", &part, "--save-features", p.to_str().unwrap(), "--batch-size", "7"][..], &common[..]]
                .concat(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merged = dir.join("merged.npz");
    let (p0, p1, p2) = (parts[0].to_str().unwrap(), parts[1].to_str().unwrap(), parts[2].to_str().unwrap());
    let o = gen_fid(&[&["--merge", p2, p0, p1, "--save-stats", merged.to_str().unwrap()][..], &common[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, m) =
        (gen_eval::stats_file::read_stats(&single).unwrap(), gen_eval::stats_file::read_stats(&merged).unwrap());
    assert!(s.mu.iter().zip(&m.mu).all(|(x, y)| x.to_bits() == y.to_bits()), "mu differs");
    assert!(s.sigma.iter().zip(&m.sigma).all(|(x, y)| x.to_bits() == y.to_bits()), "sigma differs");
    // a missing part, or a part used as a whole set, is refused
    let o = gen_fid(&[&["--merge", p0, p2, "--save-stats", merged.to_str().unwrap()][..], &common[..]].concat());
    gen_tests::assert_one_line_error(&o, &["part2.safetensors", "starts at image 66 where 33 was expected"]);
    let o = gen_fid(&[&[p0, a][..], &common[..]].concat());
    gen_tests::assert_one_line_error(&o, &["part0.safetensors", "holds images 0..33 of 100", "--merge"]);
    // merged features are a set of their own: the FID against B equals the folder's
    let all = dir.join("all.safetensors");
    let o = gen_fid(&[&["--merge", p0, p1, p2, "--save-features", all.to_str().unwrap()][..], &common[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = root.join("B");
    let via_features = printed_fid(&gen_fid(
        &[&[all.to_str().unwrap(), b.to_str().unwrap(), "--digits", "12"][..], &common[..]].concat(),
    ));
    let via_folder = printed_fid(&gen_fid(&[&[a, b.to_str().unwrap(), "--digits", "12"][..], &common[..]].concat()));
    assert_eq!(via_features, via_folder);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inception_score_and_precision_recall_through_gen_fid() {
    let Some(root) = fixture("fid") else { return };
    let w = det_weights_file(&root, "is");
    let (a, b, w) = (root.join("A"), root.join("B"), w.to_str().unwrap().to_string());
    // IS of 20 images of A (2 per split) from the det network's fc, against the library on the same logits
    let dir = std::env::temp_dir().join(format!("gen-fid-is-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..20 {
        std::fs::copy(a.join(format!("{i:03}.png")), dir.join(format!("{i:03}.png"))).unwrap();
    }
    let o = gen_fid(&[dir.to_str().unwrap(), "--inception-score", "--inception", &w, "--digits", "10", "--quiet"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && out.contains("(mode pytorch-fid, 20 images, 10 splits)"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let is_printed: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let net = det_inception(&root);
    let imgs: Vec<Tensor> = (0..20)
        .map(|i| {
            let img = gen_runtime::imageio::load_rgb(&dir.join(format!("{i:03}.png"))).unwrap().0;
            chw(pytorch_fid_input(&img), 299, 299).squeeze(0).unwrap()
        })
        .collect();
    let logits =
        net.logits(&Tensor::stack(&imgs, 0).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mean, _) = gen_eval::inception_score::inception_score(&logits, 1008, 10).unwrap();
    assert!((is_printed - mean).abs() < 1e-9 && mean >= 1.0, "{is_printed} vs {mean}");
    std::fs::remove_dir_all(&dir).unwrap();
    // precision and recall: A against itself is perfect
    let o = gen_fid(&[
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--precision-recall",
        "--inception",
        &w,
        "--dims",
        "64",
        "--quiet",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("precision 1.0000, recall 1.0000 (k = 3"), "{out}");
    let o = gen_fid(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--precision-recall",
        "--inception",
        &w,
        "--dims",
        "64",
        "--quiet",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("precision "), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sfid_reads_the_mixed_6_conv_tap_beside_pool3() {
    let Some(root) = fixture("fid") else { return };
    let net = det_inception(&root);
    let img = gen_runtime::imageio::load_rgb(&root.join("A/000.png")).unwrap().0;
    let x = chw(pytorch_fid_input(&img), 299, 299);
    let (pool, spatial) = net.features_spatial(&x).unwrap();
    // the same pool3 as the FID path, and 7 channels of the 17×17 map
    let plain = net.features(&x, Tap::Dims2048).unwrap();
    assert_eq!(pool.to_vec2::<f32>().unwrap(), plain.to_vec2::<f32>().unwrap());
    assert_eq!(spatial.dims(), &[1, 7 * 17 * 17]);
    // through the CLI: identical sets give sFID 0; sFID goes with pool3 only
    let w = det_weights_file(&root, "sfid");
    let dir = std::env::temp_dir().join(format!("gen-fid-sfid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..12 {
        std::fs::copy(root.join(format!("A/{i:03}.png")), dir.join(format!("{i:03}.png"))).unwrap();
    }
    let d = dir.to_str().unwrap();
    let o = gen_fid(&[d, d, "--sfid", "--inception", w.to_str().unwrap(), "--quiet"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = out.lines().find(|l| l.starts_with("sFID")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("(mode pytorch-fid, mixed_6/conv 2023-d)"), "{line}");
    let v: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(v.abs() < 1e-3, "{line}");
    let adm = root.join("adm_ref_batch.npz");
    let o =
        gen_fid(&[adm.to_str().unwrap(), d, "--sfid", "--inception", w.to_str().unwrap(), "--dims", "64", "--quiet"]);
    gen_tests::assert_one_line_error(&o, &["--sfid", "--dims 2048"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
