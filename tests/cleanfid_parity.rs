//! Parity with clean-fid 0.1.35 (`../shared/golden/cleanfid`): the "clean" PIL bicubic resize, the
//! Fréchet distance, and clean-fid's custom statistics files (mu f32, sigma f64, compressed).

use gen_eval::preprocess::{clean_fid_input, clean_resize};
use gen_eval::{frechet_distance, FrechetOptions, Gaussian};
use gen_runtime::imageio::RgbImage;
use gen_tests::{assert_close, fixture, load, to_f64};

use candle_core::{Device, Tensor};

#[test]
fn clean_resize_matches_pil_bicubic_on_up_and_downscales() {
    let Some(root) = fixture("cleanfid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    for i in 0..4 {
        let t = &cases[&format!("img{i}")];
        let (h, w, _) = t.dims3().unwrap();
        let img = RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap());
        let got = Tensor::from_vec(clean_resize(&img), (299, 299, 3), &Device::Cpu).unwrap();
        assert_close(&format!("clean{i} ({h}×{w})"), &got, &cases[&format!("clean{i}")], 1e-4, 0.0);
        // the network input is (x − 128)/128 of the same values, CHW
        let x = clean_fid_input(&img);
        let want = cases[&format!("clean{i}")].to_vec3::<f32>().unwrap();
        for (c, y, xx) in [(0, 0, 0), (1, 150, 7), (2, 298, 298)] {
            assert!((x[(c * 299 + y) * 299 + xx] - (want[y][xx][c] - 128.0) / 128.0).abs() < 1e-6);
        }
    }
}

#[test]
fn clean_fid_frechet_cases_match() {
    let Some(root) = fixture("cleanfid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    for (c, rtol) in [("full64", 1e-10), ("rankdef64", 1e-7)] {
        let g = |k: usize| Gaussian {
            mu: to_f64(&cases[&format!("{c}.mu{k}")]),
            sigma: to_f64(&cases[&format!("{c}.sigma{k}")]),
        };
        let want = to_f64(&cases[&format!("{c}.fid")])[0];
        let got = frechet_distance(&g(1), &g(2), FrechetOptions::default()).unwrap();
        let rel = (got - want).abs() / want;
        assert!(rel <= rtol, "{c}: {got} vs {want} ({rel:.2e})");
        eprintln!("clean-fid frechet {c}: relative error {rel:.2e} (tolerance {rtol:e})");
    }
}

#[test]
fn clean_fid_custom_statistics_read_with_their_dtypes() {
    let Some(root) = fixture("cleanfid") else { return };
    let cases = load(&root.join("cases.safetensors"));
    let path = root.join("golden64_clean_custom_na.npz");
    let arrays = gen_eval::npz::read_npz(&path).unwrap();
    assert!(matches!(arrays["mu"].data, gen_eval::npz::NpyData::F32(_)), "mu is float32 in clean-fid files");
    assert!(matches!(arrays["sigma"].data, gen_eval::npz::NpyData::F64(_)));
    let g = gen_eval::stats_file::read_stats(&path).unwrap();
    assert_eq!(g.mu, to_f64(&cases["custom.mu"]));
    assert_eq!(g.sigma, to_f64(&cases["custom.sigma"]));
    // and written back in the same layout
    let out = std::env::temp_dir().join(format!("gen-cleanfid-{}.npz", std::process::id()));
    gen_eval::stats_file::write_stats(&out, &g, true).unwrap();
    let back = gen_eval::npz::read_npz(&out).unwrap();
    assert_eq!(back["mu"], arrays["mu"]);
    assert_eq!(back["sigma"], arrays["sigma"]);
    std::fs::remove_file(&out).unwrap();
}
