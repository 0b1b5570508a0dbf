//! Golden parity of the VQGAN-LC tokenizer against the official PyTorch code
//! (`../shared/golden/tokenizer`, see its README for how each file was made and the tolerances).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use gen_nn::{Params, Weights};
use gen_tests::{assert_close, assert_exact, device, fixture, load, Tolerances};
use gen_tokenizer::{read_weights, VqConfig, VqModel};

/// `resolution:` from the fixture's official `config.yaml` (it places the attention layers).
fn yaml_resolution(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("resolution:").map(|v| v.trim().parse().unwrap()))
        .expect("resolution in config.yaml")
}

fn check(tol: &Tolerances, cfg: &str, file: &str, name: &str, got: &Tensor, want: &Tensor) -> f64 {
    let (atol, rtol) = tol.get(&format!("{cfg}/{file}:{name}"));
    assert_close(&format!("{cfg} {name}"), got, want, atol, rtol)
}

/// Every intermediate of the eval forward pass, from `weights.safetensors`.
fn forward_parity(cfg: &str) {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join(cfg);
    let tol = Tolerances::open(&root);
    let res = yaml_resolution(&dir);
    let w = read_weights(&dir.join("weights.safetensors"), None, Some(res)).unwrap();
    assert_eq!(w.config.resolution, res);
    let (mut model, weights) = w.build(DType::F32, &device()).unwrap();
    model.quantizer.freeze_projection().unwrap();
    let unused = weights.unused();
    assert!(unused.is_empty(), "weights the model never read: {unused:?}");
    forward_checks(cfg, &model, &root, &tol);
}

fn forward_checks(cfg: &str, model: &VqModel, root: &Path, tol: &Tolerances) {
    let dir = root.join(cfg);
    let x = &load(&dir.join("inputs.safetensors"))["x"].to_device(&device()).unwrap();
    let want = load(&dir.join("outputs.safetensors"));
    let o = "outputs.safetensors";
    let mut acts: HashMap<String, Tensor> = HashMap::new();
    let h = model
        .encoder
        .forward_traced(x, &mut |n, t| {
            acts.insert(n.to_string(), t.clone());
        })
        .unwrap();
    check(tol, cfg, o, "h", &h, &want["h"]);
    let z = model.encode_latent(x).unwrap();
    check(tol, cfg, o, "z", &z, &want["z"]);
    check(tol, cfg, o, "codebook_projected", &model.quantizer.codebook().unwrap(), &want["codebook_projected"]);
    let q = model.quantizer.quantize(&z).unwrap();
    assert_exact(&format!("{cfg} indices"), &q.indices, &want["indices"]);
    check(tol, cfg, o, "z_q", &q.z_q, &want["z_q"]);
    let side = (q.indices.dim(1).unwrap() as f64).sqrt() as usize;
    let lookup = model.quantizer.embed(&q.indices, side, side).unwrap();
    check(tol, cfg, o, "z_q_lookup", &lookup, &want["z_q_lookup"]);
    check(tol, cfg, o, "qloss", &q.loss.reshape(1).unwrap(), &want["qloss"]);
    let q_mse = (&q.z_q - &z).unwrap().sqr().unwrap().mean_all().unwrap().reshape(1).unwrap();
    check(tol, cfg, o, "q_mse", &q_mse, &want["q_mse"]);
    let post = model.post_quant_conv.forward(&q.z_q).unwrap();
    check(tol, cfg, o, "post_quant", &post, &want["post_quant"]);
    let mut dacts: HashMap<String, Tensor> = HashMap::new();
    let xrec = model
        .decoder
        .forward_traced(&post, &mut |n, t| {
            dacts.insert(n.to_string(), t.clone());
        })
        .unwrap();
    check(tol, cfg, o, "xrec", &xrec, &want["xrec"]);
    let from_ids = model.decode_indices(&want["indices"].to_device(&device()).unwrap(), None).unwrap();
    check(tol, cfg, o, "xrec_from_indices", &from_ids, &want["xrec_from_indices"]);
    acts.extend(dacts);
    for (name, t) in &want {
        if let Some(block) = name.strip_prefix("act.") {
            check(tol, cfg, o, name, &acts[block], t);
        }
    }
}

#[test]
fn lc_f16_tiny_matches_official_forward() {
    forward_parity("f16-tiny");
}

#[test]
fn lc_f8_tiny_with_mlp_projector_matches_official_forward() {
    forward_parity("f8-tiny");
}

#[test]
fn lc_mult_tiny_with_nin_shortcut_matches_official_forward() {
    forward_parity("mult-tiny");
}

#[test]
fn official_checkpoint_pth_with_codebook_gives_identical_outputs() {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join("f16-tiny");
    let tol = Tolerances::open(&root);
    // resolution comes from the checkpoint's own `args.image_size` (64)
    let w = read_weights(&dir.join("checkpoint.pth"), Some(&dir.join("codebook_init.pth")), None).unwrap();
    assert_eq!(w.config.resolution, 64);
    let (mut model, _) = w.build(DType::F32, &device()).unwrap();
    model.quantizer.freeze_projection().unwrap();
    forward_checks("f16-tiny", &model, &root, &tol);
    // and without --codebook: the state dict carries tok_embeddings.weight
    let w2 = read_weights(&dir.join("checkpoint.pth"), None, None).unwrap();
    assert_eq!(w2.config, w.config);
}

/// The gradient case: `loss = mean|x − decode(encode(x))| + 0.1·qloss`, one backward, train mode.
fn gradient_parity(cfg: &str) {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join(cfg);
    let tol = Tolerances::open(&root);
    let w = read_weights(&dir.join("weights.safetensors"), None, Some(yaml_resolution(&dir))).unwrap();
    let dev = device();
    let on_dev: HashMap<String, Tensor> =
        w.tensors.iter().map(|(k, t)| (k.clone(), t.to_device(&dev).unwrap())).collect();
    // Every tensor is a Var, the codebook too: whether it receives a gradient is measured, not assumed.
    let (params, tensors) = Params::from_tensors(&on_dev, |_| true).unwrap();
    let weights = Weights::new(cfg, tensors);
    let model = VqModel::new(weights.var_builder(DType::F32, &dev), &w.config).unwrap();
    let x = &load(&dir.join("inputs.safetensors"))["x"].to_device(&dev).unwrap();
    let want = load(&dir.join("grads.safetensors"));
    let q = model.encode(x).unwrap();
    let xrec = model.decode(&q.z_q).unwrap();
    let rec = gen_nn::ops::l1_loss(x, &xrec).unwrap();
    let loss = (&rec + (&q.loss * 0.1).unwrap()).unwrap();
    let g = "grads.safetensors";
    check(&tol, cfg, g, "loss", &loss.reshape(1).unwrap(), &want["loss"]);
    check(&tol, cfg, g, "rec_loss", &rec.reshape(1).unwrap(), &want["rec_loss"]);
    check(&tol, cfg, g, "qloss", &q.loss.reshape(1).unwrap(), &want["qloss"]);
    let grads = loss.backward().unwrap();
    let by_name: HashMap<&str, &candle_core::Var> = params.vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    for (name, t) in &want {
        let Some(p) = name.strip_prefix("grad.") else { continue };
        let got = grads.get(by_name[p].as_tensor()).unwrap_or_else(|| panic!("{p}: no gradient"));
        let got = &got.to_device(&Device::Cpu).unwrap();
        check(&tol, cfg, g, name, got, t);
        // gradients are small: also hold them to 1e-3 of their largest magnitude
        let diff = (got - t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-3 * scale, "{cfg} {name}: relative gradient error {} > 1e-3", diff / scale);
    }
    // The official codebook is frozen (fixture: requires_grad 0). Ours, though a Var here, must receive no
    // gradient at all from a training step, or only zeros.
    assert_eq!(want["tok_embeddings_has_grad"].to_vec1::<i64>().unwrap(), vec![0]);
    let codebook = by_name["tok_embeddings.weight"].as_tensor();
    let codebook_grad = match grads.get(codebook) {
        None => 0.0,
        Some(g) => g.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
    };
    assert_eq!(codebook_grad, 0.0, "{cfg}: the frozen codebook received a gradient (max |g| {codebook_grad:e})");
    eprintln!(
        "{cfg}: tok_embeddings.weight gradient: {}",
        if grads.get(codebook).is_none() { "absent" } else { "all zero" }
    );
    // every other parameter gets one
    let missing: Vec<&str> = params
        .vars
        .iter()
        .filter(|(n, v)| n != "tok_embeddings.weight" && grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(missing.is_empty(), "parameters without a gradient: {missing:?}");
}

#[test]
fn lc_f16_tiny_gradients_match_official_straight_through() {
    gradient_parity("f16-tiny");
}

#[test]
fn lc_f8_tiny_gradients_match_official_mlp_projector() {
    gradient_parity("f8-tiny");
}

#[test]
fn lc_mult_tiny_gradients_match_official_nin_shortcut() {
    gradient_parity("mult-tiny");
}

#[test]
fn lc_100k_quantizer_indices_and_utilisation_match_official() {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join("quantizer-100k");
    let tol = Tolerances::open(&root);
    let weights = load(&dir.join("weights.safetensors"));
    let case = load(&dir.join("case.safetensors"));
    let cb = &weights["tok_embeddings.weight"];
    let cfg = VqConfig {
        codebook_size: cb.dim(0).unwrap(),
        codebook_dim: cb.dim(1).unwrap(),
        embed_dim: 8,
        ..VqConfig::f16()
    };
    let w = Weights::new("quantizer-100k/weights.safetensors", weights);
    let mut q = gen_tokenizer::quantizer::LcQuantizer::new(w.var_builder(DType::F32, &device()), &cfg).unwrap();
    q.freeze_projection().unwrap();
    let out = q.quantize(&case["z"].to_device(&device()).unwrap()).unwrap();
    assert_exact("100k indices", &out.indices, &case["indices"]);
    let mut ids = out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as i64, case["utilisation"].to_vec1::<i64>().unwrap()[0]);
    let f = "case.safetensors";
    check(&tol, "quantizer-100k", f, "z_q", &out.z_q, &case["z_q"]);
    check(&tol, "quantizer-100k", f, "qloss", &out.loss.reshape(1).unwrap(), &case["qloss"]);
}

#[test]
fn ema_quantizer_updates_match_official_including_blow_up() {
    let Some(root) = fixture("tokenizer") else { return };
    let tol = Tolerances::open(&root);
    let case = load(&root.join("ema/case.safetensors"));
    let f = "case.safetensors";
    // each step starts from its stored state (A2's is A1's official output), so errors do not compound
    for tag in ["A1", "A2", "B1"] {
        let t = |k: &str| case[&format!("{tag}.{k}")].clone();
        let mut q = gen_tokenizer::quantizer::EmaQuantizer::new(&t("before.embedding")).unwrap();
        q.cluster_size = t("before.cluster_size").to_vec1().unwrap();
        q.embed_avg = t("before.embed_avg").flatten_all().unwrap().to_vec1().unwrap();
        if tag == "A1" {
            // the official initial state: cluster_size = 0, embed_avg = embedding
            assert!(q.cluster_size.iter().all(|&c| c == 0.0));
            assert_eq!(q.embed_avg, q.embedding);
        }
        let out = q.quantize(&t("z")).unwrap();
        assert_exact(&format!("ema {tag} indices"), &out.indices.flatten_all().unwrap(), &t("indices"));
        check(&tol, "ema", f, &format!("{tag}.z_q"), &out.z_q, &t("z_q"));
        check(&tol, "ema", f, &format!("{tag}.loss"), &out.loss.reshape(1).unwrap(), &t("loss"));
        let n = q.n;
        let cs = Tensor::from_vec(q.cluster_size.clone(), n, &Device::Cpu).unwrap();
        let ea = Tensor::from_vec(q.embed_avg.clone(), (n, q.dim), &Device::Cpu).unwrap();
        check(&tol, "ema", f, &format!("{tag}.new.cluster_size"), &cs, &t("new.cluster_size"));
        check(&tol, "ema", f, &format!("{tag}.new.embed_avg"), &ea, &t("new.embed_avg"));
        check(
            &tol,
            "ema",
            f,
            &format!("{tag}.new.embedding"),
            &q.embedding_tensor(&Device::Cpu).unwrap(),
            &t("new.embedding"),
        );
    }
}

/// Any resolution at inference: the f16-tiny model (trained at 64², attention at its 4×4 level) encodes
/// and decodes 128² images through the same weights, attention on the same level over an 8×8 grid: an
/// image made of 2×2 copies of the golden input gives an 8×8 token grid whose decoding is the
/// reconstruction.
#[test]
fn a_model_works_at_twice_its_training_resolution() {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join("f16-tiny");
    let res = yaml_resolution(&dir);
    let base = read_weights(&dir.join("weights.safetensors"), None, Some(res)).unwrap();
    let big = read_weights(&dir.join("weights.safetensors"), None, Some(2 * res)).unwrap();
    assert_eq!(big.config.resolution, 2 * res);
    assert_eq!(big.config.attn_resolutions, vec![8], "attention stays on the lowest level: 128 >> 4");
    let (mut model, weights) = big.build(DType::F32, &device()).unwrap();
    model.quantizer.freeze_projection().unwrap();
    assert!(weights.unused().is_empty(), "every weight used at 128²: {:?}", weights.unused());
    assert_eq!(weights.names_used().len(), base.build(DType::F32, &device()).unwrap().1.names_used().len());
    let x = load(&dir.join("inputs.safetensors"))["x"].to_device(&device()).unwrap(); // [2, 3, 64, 64]
    let row = Tensor::cat(&[&x, &x], 3).unwrap();
    let tiled = Tensor::cat(&[&row, &row], 2).unwrap(); // [2, 3, 128, 128]
    let (xrec, ids) = model.reconstruct(&tiled).unwrap();
    assert_eq!(xrec.dims(), [2, 3, 128, 128]);
    assert_eq!(ids.dims(), [2, 64], "an 8×8 token grid");
    let v = xrec.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    // decoding the token grid gives back the same images
    let again = model.decode_indices(&ids, None).unwrap();
    let d = (again - &xrec).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "decode(encode) vs reconstruct differ by {d}");
}
