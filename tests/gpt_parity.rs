//! Golden parity of GPT-LC against the official minGPT / `VQGANTransformer` (`../shared/golden/gpt`,
//! see its README for how each file was made and the tolerances): logits, losses (plain, label-smoothed,
//! pkeep replayed), gradients, greedy decoding through the KV cache, the top-k filter, and loading the
//! official training containers (F32 and DeepSpeed-fp16).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use gen_nn::{Params, Weights};
use gen_prior::loss::{cross_entropy, shifted_inputs, Corruption};
use gen_prior::sample::{generate, top_k_filter, Request, Sampling};
use gen_prior::{read_gpt, Gpt, GptHints, GptWeights};
use gen_runtime::Rng;
use gen_tests::{assert_close, assert_exact, device, fixture, load, Tolerances};

/// The fixtures' codebook: 1,000 codes, 10 classes.
const HINTS: GptHints = GptHints { n_codes: Some(1000), n_head: None };

fn check(tol: &Tolerances, file: &str, name: &str, got: &Tensor, want: &Tensor) {
    let (atol, rtol) = tol.get(&format!("{file}:{name}"));
    assert_close(&format!("{file} {name}"), got, want, atol, rtol);
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect()
}

fn build(w: &GptWeights) -> Gpt {
    let (model, weights) = w.build(DType::F32, &device()).unwrap();
    assert!(weights.unused().is_empty(), "weights the model never read: {:?}", weights.unused());
    model
}

fn g1(root: &Path) -> GptWeights {
    let w = read_gpt(&root.join("g1/weights.safetensors"), &HINTS).unwrap();
    let c = &w.config;
    assert_eq!((c.n_codes, c.n_classes, c.block_size, c.n_layer, c.n_head, c.n_embd), (1000, 10, 17, 2, 4, 64));
    assert!(!c.tied_head && !c.null_class);
    w
}

#[test]
fn g1_forward_loss_and_gradients() {
    let Some(root) = fixture("gpt") else { return };
    let tol = Tolerances::open(&root);
    let f = "g1/forward.safetensors";
    let want = load(&root.join(f));
    let w = g1(&root);
    // every tensor a trainable Var, so the backward fills each official parameter's gradient
    let (params, tensors) = Params::from_tensors(&w.tensors, |_| true).unwrap();
    let weights = Weights::new("g1", tensors);
    let model = Gpt::new(weights.var_builder(DType::F32, &device()), &w.config).unwrap();

    let tokens = ids(&want["tokens"]);
    let class_tokens = ids(&want["c_indices"]);
    let input = shifted_inputs(&class_tokens, &tokens, &device()).unwrap();
    assert_exact("input_ids", &input, &want["input_ids"]);
    let logits = model.forward(&input).unwrap();
    check(&tol, f, "logits", &logits, &want["logits"]);
    let targets = want["tokens"].to_device(&device()).unwrap();
    let loss = cross_entropy(&logits, &targets, 0.0).unwrap();
    check(&tol, f, "loss", &loss, &want["loss"]);
    let smooth = cross_entropy(&logits, &targets, 0.1).unwrap();
    check(&tol, f, "loss_label_smooth", &smooth, &want["loss_label_smooth"]);

    // the training path (the fused head loss, no [B, T, V] logits) gives the same loss and gradients
    let fused = model.loss(&input, &tokens, 0.0).unwrap();
    check(&tol, f, "loss", &fused, &want["loss"]);
    check(&tol, f, "loss_label_smooth", &model.loss(&input, &tokens, 0.1).unwrap(), &want["loss_label_smooth"]);
    let grads = fused.backward().unwrap();
    let vars: HashMap<&str, &candle_core::Var> = params.vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let names: Vec<&str> = want.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    assert_eq!(names.len(), 10, "{names:?}");
    for name in names {
        let g = grads.get(vars[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        check(&tol, f, &format!("grad.{name}"), g, &want[&format!("grad.{name}")]);
    }
}

#[test]
fn g1_pkeep_step_replayed() {
    let Some(root) = fixture("gpt") else { return };
    let tol = Tolerances::open(&root);
    let f = "g1/pkeep.safetensors";
    let want = load(&root.join(f));
    let model = build(&g1(&root));
    let tokens = ids(&want["tokens"]);
    let corruption = Corruption { keep: ids(&want["mask"]), random: ids(&want["random_indices"]) };
    let new = corruption.apply(&tokens);
    assert_eq!(new, ids(&want["new_indices"]));
    let class_tokens: Vec<u32> = ids(&want["class_ids"]).iter().map(|c| c + 1000).collect();
    let input = shifted_inputs(&class_tokens, &new, &device()).unwrap();
    assert_exact("pkeep input_ids", &input, &want["input_ids"]);
    let logits = model.forward(&input).unwrap();
    check(&tol, f, "logits", &logits, &want["logits"]);
    // the loss is against the uncorrupted tokens
    let loss = cross_entropy(&logits, &want["tokens"].to_device(&device()).unwrap(), 0.0).unwrap();
    check(&tol, f, "loss", &loss, &want["loss"]);
}

/// `-inf` at the same places, finite entries within the tolerance.
fn check_with_infinities(tol: &Tolerances, file: &str, name: &str, got: &[f32], want: &Tensor) {
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), w.len());
    let inf_got: Vec<bool> = got.iter().map(|x| *x == f32::NEG_INFINITY).collect();
    let inf_want: Vec<bool> = w.iter().map(|x| *x == f32::NEG_INFINITY).collect();
    assert_eq!(inf_got, inf_want, "{name}: -inf positions");
    let finite = |v: &[f32]| v.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect::<Vec<f32>>();
    let dev = candle_core::Device::Cpu;
    let (g, wt) = (Tensor::new(finite(got), &dev).unwrap(), Tensor::new(finite(&w), &dev).unwrap());
    check(tol, file, name, &g, &wt);
}

#[test]
fn g1_greedy_decoding_with_the_kv_cache() {
    let Some(root) = fixture("gpt") else { return };
    let tol = Tolerances::open(&root);
    let f = "g1/greedy.safetensors";
    let want = load(&root.join(f));
    let model = build(&g1(&root));
    let classes: Vec<usize> = ids(&want["class_ids"]).iter().map(|&c| c as usize).collect();

    // step 0 and step 1 logits through the cache (the prompt, then one token)
    let prefix = want["prefix"].to_dtype(DType::U32).unwrap().to_device(&device()).unwrap();
    let mut cache = model.new_cache();
    let step0 = model.forward_last(&prefix, &mut cache).unwrap();
    check(&tol, f, "step0_logits", &step0, &want["step0_logits"]);
    let first = want["tokens"].narrow(1, 0, 1).unwrap().to_dtype(DType::U32).unwrap().to_device(&device()).unwrap();
    let step1 = model.forward_last(&first, &mut cache).unwrap();
    check(&tol, f, "step1_logits", &step1, &want["step1_logits"]);

    // the whole greedy run, batched: one sequence per class
    let mut rngs: Vec<Rng> = (0..classes.len()).map(|i| Rng::for_item(0, i as u64)).collect();
    let req = Request { classes: &classes, prefix: None, steps: 16 };
    let out = generate(&model, &req, &Sampling::greedy(), &mut rngs, |_| {}).unwrap();
    let flat: Vec<u32> = out.concat();
    assert_eq!(flat, ids(&want["tokens"]), "greedy tokens");

    // continuation of 8 given tokens
    let cont_classes: Vec<usize> = ids(&want["cont_class_ids"]).iter().map(|&c| c as usize).collect();
    let p = ids(&want["cont_prefix"]);
    let rows: Vec<Vec<u32>> = p.chunks(8).map(<[u32]>::to_vec).collect();
    let mut rngs: Vec<Rng> = (0..3).map(|i| Rng::for_item(0, i)).collect();
    let req = Request { classes: &cont_classes, prefix: Some(&rows), steps: 8 };
    let out = generate(&model, &req, &Sampling::greedy(), &mut rngs, |_| {}).unwrap();
    assert_eq!(out.concat(), ids(&want["cont_tokens"]), "continuation tokens");

    // the official top-k filter at temperature 0.7, k 5, and its softmax
    let topk_in: Vec<Vec<f32>> = want["topk_in"].to_vec2().unwrap();
    let (mut filtered, mut probs) = (Vec::new(), Vec::new());
    for row in &topk_in {
        let mut r = row.clone();
        top_k_filter(&mut r, 5);
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = r.iter().map(|&x| (x - max).exp()).collect();
        let s: f32 = e.iter().sum();
        probs.extend(e.iter().map(|x| x / s));
        filtered.extend(r);
    }
    check_with_infinities(&tol, f, "topk_out", &filtered, &want["topk_out"]);
    let dims = want["topk_probs"].dims().to_vec();
    let probs = Tensor::from_vec(probs, dims, &candle_core::Device::Cpu).unwrap();
    check(&tol, f, "topk_probs", &probs, &want["topk_probs"]);
}

#[test]
fn g2_official_training_containers_load_as_they_are() {
    let Some(root) = fixture("gpt") else { return };
    let tol = Tolerances::open(&root);
    let f = "g2/forward.safetensors";
    let want = load(&root.join(f));
    for (file, suffix) in [("checkpoint.pth", "f32"), ("checkpoint_fp16.pth", "fp16")] {
        let w = read_gpt(&root.join("g2").join(file), &HINTS).unwrap();
        assert_eq!(w.config.n_layer, 2);
        let dtype = w.tensors["tok_emb.weight"].dtype();
        assert_eq!(dtype, if suffix == "f32" { DType::F32 } else { DType::F16 }, "{file}");
        let vq = w.tokenizer_tensors.as_ref().expect("the vqgan.* half");
        assert_eq!(vq.len(), 394, "{file}: the tokenizer keys of the container");
        assert!(vq.contains_key("codebook_projection.weight") && vq.contains_key("tok_embeddings.weight"));
        let model = build(&w);
        let input = want["input_ids"].to_dtype(DType::U32).unwrap().to_device(&device()).unwrap();
        let logits = model.forward(&input).unwrap();
        check(&tol, f, &format!("logits_{suffix}"), &logits, &want[&format!("logits_{suffix}")]);
        let loss = cross_entropy(&logits, &want["tokens"].to_device(&device()).unwrap(), 0.0).unwrap();
        check(&tol, f, &format!("loss_{suffix}"), &loss, &want[&format!("loss_{suffix}")]);
    }
}
