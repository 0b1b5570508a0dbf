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
