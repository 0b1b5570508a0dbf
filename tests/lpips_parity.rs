//! Parity of LPIPS with VQGAN-LC's `models/lpips.py` and the `lpips` 0.1.4 package
//! (`../shared/golden/lpips`): features, lin maps, distances, per-layer terms and input gradients, in f32
//! and f64. The VGG16 trunk's weights are rebuilt from `weights_spec.json` by `detinit`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use gen_eval::lpips::{Lpips, LPIPS_PACKAGE_EPS, VQGAN_LC_EPS};
use gen_nn::Weights;
use gen_tests::{assert_close, detinit, fixture, load, to_f64};

fn lpips(root: &Path, dtype: DType, eps: f64) -> Lpips {
    let trunk = Weights::new("det vgg16", detinit::build(&root.join("weights_spec.json")));
    let lin = Weights::new("lin.safetensors", load(&root.join("lin.safetensors")));
    Lpips::new(trunk.var_builder(dtype, &Device::Cpu), lin.var_builder(dtype, &Device::Cpu), eps).unwrap()
}

/// The distance, per-layer terms and p_loss of one case against the fixture (prefix "", "ns_", "odd_").
fn check_case(net: &Lpips, c: &HashMap<String, Tensor>, prefix: &str, which: &str, suffix: &str, tol: (f64, f64)) {
    let dtype = net.dtype();
    let x0 = c[&format!("{prefix}x0")].to_dtype(dtype).unwrap();
    let x1 = c[&format!("{prefix}x1")].to_dtype(dtype).unwrap();
    let out = net.forward(&x0, &x1).unwrap();
    let key = |name: &str| format!("{prefix}{which}_{name}{suffix}");
    assert_close(&key("dist"), &out.dist, &c[&key("dist")], tol.0, 0.0);
    let layers = Tensor::cat(&out.layers.iter().map(|l| l.flatten_from(1).unwrap()).collect::<Vec<_>>(), 1).unwrap();
    assert_close(&key("layer"), &layers, &c[&key("layer")], tol.1, 0.0);
    if suffix.is_empty() && which == "vqlc" {
        let p = net.loss(&x0, &x1).unwrap().reshape(1).unwrap();
        assert_close(&format!("{prefix}vqlc_p_loss"), &p, &c[&format!("{prefix}vqlc_p_loss")], tol.0, 0.0);
    }
}

#[test]
fn lpips_distances_match_both_official_implementations_in_f32_and_f64() {
    let Some(root) = fixture("lpips") else { return };
    let c = load(&root.join("cases.safetensors"));
    for (which, eps) in [("vqlc", VQGAN_LC_EPS), ("lpips", LPIPS_PACKAGE_EPS)] {
        let (f32_net, f64_net) = (lpips(&root, DType::F32, eps), lpips(&root, DType::F64, eps));
        for prefix in ["", "ns_", "odd_"] {
            check_case(&f32_net, &c, prefix, which, "", (5e-7, 2e-7));
            check_case(&f64_net, &c, prefix, which, "_f64", (1e-15, 5e-16));
        }
    }
}

#[test]
fn lpips_features_and_lin_maps_match() {
    let Some(root) = fixture("lpips") else { return };
    let c = load(&root.join("cases.safetensors"));
    let net = lpips(&root, DType::F32, VQGAN_LC_EPS);
    let x0 = c["x0"].narrow(0, 0, 1).unwrap();
    let x1 = c["x1"].narrow(0, 0, 1).unwrap();
    assert_close("scaled_x0_0", &net.scale_input(&x0).unwrap(), &c["scaled_x0_0"], 1e-5, 0.0);
    let feats = net.features(&x0).unwrap();
    for (k, (name, tol)) in
        [("relu1_2", 1e-4), ("relu2_2", 1e-4), ("relu3_3", 2e-4), ("relu4_3", 2e-4), ("relu5_3", 2e-4)]
            .iter()
            .enumerate()
    {
        assert_close(&format!("feat0_{name}"), &feats[k], &c[&format!("feat0_{name}")], *tol, 0.0);
    }
    let maps = net.lin_maps(&x0, &x1).unwrap();
    for (k, tol) in [5e-7, 1e-7, 5e-8, 5e-8, 5e-8].iter().enumerate() {
        assert_close(&format!("linmap0_{k}"), &maps[k], &c[&format!("linmap0_{k}")], *tol, 0.0);
    }
}

/// d(sum of distances)/d x0 and d/d x1.
fn grads(net: &Lpips, x0: &Tensor, x1: &Tensor) -> (Tensor, Tensor) {
    let (v0, v1) = (Var::from_tensor(x0).unwrap(), Var::from_tensor(x1).unwrap());
    let g = net.forward(v0.as_tensor(), v1.as_tensor()).unwrap().dist.sum_all().unwrap().backward().unwrap();
    (g.get(v0.as_tensor()).unwrap().clone(), g.get(v1.as_tensor()).unwrap().clone())
}

#[test]
fn lpips_input_gradients_match_strictly_in_f64() {
    let Some(root) = fixture("lpips") else { return };
    let c = load(&root.join("cases.safetensors"));
    let net = lpips(&root, DType::F64, VQGAN_LC_EPS);
    let f64t = |k: &str| c[k].to_dtype(DType::F64).unwrap();
    let (g0, g1) = grads(&net, &f64t("x0"), &f64t("x1"));
    assert_close("grad_x0_f64", &g0, &c["grad_x0_f64"], 2e-16, 0.0);
    assert_close("grad_x1_f64", &g1, &c["grad_x1_f64"], 2e-16, 0.0);
    for prefix in ["ns_", "odd_"] {
        let (g0, _) = grads(&net, &f64t(&format!("{prefix}x0")), &f64t(&format!("{prefix}x1")));
        assert_close(&format!("{prefix}grad_x0_f64"), &g0, &c[&format!("{prefix}grad_x0_f64")], 2e-16, 0.0);
    }
}

#[test]
fn lpips_input_gradients_match_in_f32_by_the_fixture_rule() {
    let Some(root) = fixture("lpips") else { return };
    let c = load(&root.join("cases.safetensors"));
    let net = lpips(&root, DType::F32, VQGAN_LC_EPS);
    let (g0, g1) = grads(&net, &c["x0"], &c["x1"]);
    // per pair: relative L2 and relative max within 1e-2 (a ReLU within f32 error of 0 may flip); the
    // identical pair 1 gets exactly zero
    for (name, got) in [("grad_x0", g0), ("grad_x1", g1)] {
        for i in 0..4 {
            let (g, r) = (to_f64(&got.get(i).unwrap()), to_f64(&c[name].get(i).unwrap()));
            let l2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let diff: Vec<f64> = g.iter().zip(&r).map(|(a, b)| a - b).collect();
            let max = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            if i == 1 {
                assert!(max(&g) <= 5e-8, "{name}[1] should vanish: {}", max(&g));
                continue;
            }
            assert!(l2(&diff) <= 1e-2 * l2(&r), "{name}[{i}]: relative L2 {}", l2(&diff) / l2(&r));
            assert!(max(&diff) <= 1e-2 * max(&r), "{name}[{i}]: relative max {}", max(&diff) / max(&r));
        }
    }
}

#[test]
fn lpips_gradcheck_f64() {
    let Some(root) = fixture("lpips") else { return };
    let c = load(&root.join("cases.safetensors"));
    let net = lpips(&root, DType::F64, VQGAN_LC_EPS);
    // a small crop keeps the finite differences cheap; the decoder side (x1) is what training moves
    let crop = |k: &str| c[k].narrow(0, 3, 1).unwrap().narrow(2, 0, 16).unwrap().narrow(3, 0, 16).unwrap();
    let x0 = crop("x0").to_dtype(DType::F64).unwrap();
    let x1 = crop("x1").to_dtype(DType::F64).unwrap();
    let f = |v: &[Tensor]| net.forward(&x0, &v[0]).map(|o| o.dist);
    let err = gen_nn::gradcheck::gradcheck(&f, std::slice::from_ref(&x1), 1e-6, 24).unwrap();
    assert!(err < 1e-6, "LPIPS gradcheck: {err}");
}
