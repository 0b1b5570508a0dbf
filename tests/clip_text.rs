//! The CLIP text tower and `gen sample --prompt … --clip DIR` against Hugging Face transformers, on the
//! tiny random-weight CLIP in `tests/fixtures/clip-text-tiny/` (its `make.py` says how it was made).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gen_clip::prompt::ClipPrompts;
use gen_tests::{assert_ok, assert_one_line_error, run_gen, temp_dir};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-text-tiny")
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn ids_hidden_states_and_embeddings_match_transformers() {
    let dev = Device::Cpu;
    let clip = ClipPrompts::open(&tiny(), &dev).unwrap();
    let c = &clip.model.config;
    assert_eq!((c.vocab, c.width, c.layers, c.heads, c.positions, c.output_dim), (22, 128, 2, 2, 16, 16));
    let want = candle_core::safetensors::load(tiny().join("expected.safetensors"), &dev).unwrap();
    let prompts = std::fs::read_to_string(tiny().join("prompts.txt")).unwrap();
    let eos = 21;
    for (i, p) in prompts.lines().enumerate() {
        let ids = clip.ids(p).unwrap();
        let want_ids: Vec<u32> =
            want[&format!("ids.{i}")].to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect();
        assert_eq!(ids, want_ids, "{p}");
        let h = clip.model.hidden_states(&ids).unwrap();
        assert!(max_rel(&h, &want[&format!("last_hidden_state.{i}")]) < 1e-5, "{p}: last_hidden_state");
        let e = clip.model.embed(&ids, eos).unwrap();
        assert!(max_rel(&e, &want[&format!("text_embeds.{i}")]) < 1e-5, "{p}: text_embeds");
    }
}

#[test]
fn a_prompt_resolves_to_the_class_whose_template_it_is() {
    let clip = ClipPrompts::open(&tiny(), &Device::Cpu).unwrap();
    let names: Vec<String> = gen_data::classes::fashion_mnist();
    for (i, name) in names.iter().enumerate() {
        let (c, cos) = clip.nearest_class(&format!("a photo of a {name}"), &names).unwrap();
        assert_eq!(c, i, "{name}");
        assert!((cos - 1.0).abs() < 1e-5, "{name}: cosine {cos}");
    }
    // a long prompt is cut to the model's 16 positions, keeping its end token
    let ids = clip.ids(&"bag ".repeat(40)).unwrap();
    assert_eq!((ids.len(), ids[15]), (16, 21));
    assert!(clip.nearest_class("  ", &names).is_err());
}

#[test]
fn sample_resolves_prompt_by_clip_and_bad_folders_are_one_line_errors() {
    let dir = temp_dir("clip-cli");
    let png = dir.join("x.png");
    let o = png.to_str().unwrap();
    let run = |clip: &str, prompt: &str| {
        run_gen!(&["sample", "--model", "gpt", "--prompt", prompt, "--clip", clip, "--out", o, "--quiet"])
    };
    let out = run(tiny().to_str().unwrap(), "a photo of a Sneaker");
    let stdout = assert_ok(&out);
    assert!(stdout.contains("class 7 (Sneaker)"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLIP picks class 7 (Sneaker), cosine 1.000"));
    assert!(png.exists());

    assert_one_line_error(&run(dir.join("none").to_str().unwrap(), "bag"), &["none", "openai/clip-vit-large-patch14"]);
    let no_tok = dir.join("no-tokenizer");
    std::fs::create_dir_all(&no_tok).unwrap();
    std::fs::copy(tiny().join("model.safetensors"), no_tok.join("model.safetensors")).unwrap();
    assert_one_line_error(&run(no_tok.to_str().unwrap(), "bag"), &["tokenizer.json", "not found"]);
    let no_weights = dir.join("no-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::copy(tiny().join("tokenizer.json"), no_weights.join("tokenizer.json")).unwrap();
    assert_one_line_error(
        &run(no_weights.to_str().unwrap(), "bag"),
        &["model.safetensors", "openai/clip-vit-large-patch14"],
    );
    std::fs::write(no_weights.join("tokenizer.json"), "{ not json").unwrap();
    assert_one_line_error(&run(no_weights.to_str().unwrap(), "bag"), &["tokenizer.json"]);
    // --clip without a prompt has nothing to resolve
    let o2 = run_gen!(&["sample", "--model", "gpt", "--class", "1", "--clip", tiny().to_str().unwrap(), "--out", o]);
    assert_one_line_error(&o2, &["--clip", "--prompt"]);
    let _ = std::fs::remove_dir_all(dir);
}
