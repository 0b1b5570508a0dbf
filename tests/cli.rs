//! End-to-end tests of the `gen` executable: the tokenizer commands on the official f16-tiny checkpoint,
//! and one test per kind of bad input (one-line error, non-zero exit, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use gen_tests::fixture;

fn gen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gen")).args(args).output().expect("gen runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with exactly one `error:` line that contains every `needle`, and no panic.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

fn decode_png(p: &Path) -> Vec<u8> {
    gen_runtime::imageio::load_rgb(p).unwrap().0.data
}

struct Golden {
    ckpt: PathBuf,
    codebook: PathBuf,
    weights: PathBuf,
    recon: PathBuf,
}

fn golden() -> Option<Golden> {
    let root = fixture("tokenizer")?;
    Some(Golden {
        ckpt: root.join("f16-tiny/checkpoint.pth"),
        codebook: root.join("f16-tiny/codebook_init.pth"),
        weights: root.join("f16-tiny/weights.safetensors"),
        recon: root.join("reconstruct"),
    })
}

#[test]
fn reconstruct_with_official_checkpoint_matches_official_output() {
    let Some(g) = golden() else { return };
    let out = tmp("recon");
    let o = gen(&[
        "reconstruct",
        "--quiet",
        "--tokenizer",
        s(&g.ckpt),
        "--codebook",
        s(&g.codebook),
        s(&g.recon.join("input_rgb.png")),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = decode_png(&out.join("input_rgb.png"));
    let want = decode_png(&g.recon.join("expected_output.png"));
    assert_eq!(got.len(), want.len());
    // ±1 allowed only where the official value lies within ~1e-4 of an integer (fixture README §5)
    let off: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(off.iter().all(|&i| got[i].abs_diff(want[i]) <= 1), "a pixel differs by more than 1");
    assert!(off.len() <= 10, "{} of {} pixels differ by 1", off.len(), got.len());
    eprintln!("reconstruct: {} of {} u8 values differ by 1 from the official output", off.len(), got.len());
}

#[test]
fn reconstruct_converts_gray_and_rgba_inputs() {
    let Some(g) = golden() else { return };
    let out = tmp("gray");
    let o = gen(&[
        "reconstruct",
        "--quiet",
        "--tokenizer",
        s(&g.ckpt),
        s(&g.recon.join("input_gray.png")),
        s(&g.recon.join("input_rgba.png")),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["input_gray.png", "input_rgba.png"] {
        let (img, _) = gen_runtime::imageio::load_rgb(&out.join(f)).unwrap();
        assert_eq!((img.width, img.height), (64, 64));
    }
}

#[test]
fn reconstruct_writes_a_grid_of_inputs_over_reconstructions() {
    let Some(g) = golden() else { return };
    let out = tmp("grid");
    let img = g.recon.join("input_rgb.png");
    let o = gen(&[
        "reconstruct",
        "--quiet",
        "--tokenizer",
        s(&g.ckpt),
        s(&img),
        s(&img),
        s(&img),
        "--out",
        s(&out),
        "--grid",
        s(&out.join("grid.png")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (grid, _) = gen_runtime::imageio::load_rgb(&out.join("grid.png")).unwrap();
    assert_eq!((grid.width, grid.height), (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)); // 3 columns, input row + output row
}

#[test]
fn reconstruct_upscales_an_image_smaller_than_the_resolution() {
    let Some(g) = golden() else { return };
    let dir = tmp("small");
    let small = gen_runtime::imageio::RgbImage::new(20, 12, (0..720).map(|i| (i % 251) as u8).collect());
    gen_runtime::imageio::save_png(&dir.join("small.png"), &small).unwrap();
    let o = gen(&["reconstruct", "--tokenizer", s(&g.ckpt), s(&dir.join("small.png")), "--out", s(&dir.join("out"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("smaller than 64"), "{}", stderr(&o));
    let (img, _) = gen_runtime::imageio::load_rgb(&dir.join("out/small.png")).unwrap();
    assert_eq!((img.width, img.height), (64, 64));
}

#[test]
fn convert_then_encode_gives_identical_indices_and_decode_round_trips() {
    let Some(g) = golden() else { return };
    let dir = tmp("convert");
    let model = dir.join("model");
    let o = gen(&["convert", "--from", s(&g.ckpt), "--codebook", s(&g.codebook), "--to", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["config.toml", "model.safetensors", "MODEL_CARD.md"] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    let st = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.contains_key("quantize.codebook_projected"));
    assert!(!st.keys().any(|k| k.starts_with("discriminator.") || k.starts_with("perceptual_loss.")));
    let img = g.recon.join("input_rgb.png");
    let t1 = dir.join("pth.safetensors");
    let t2 = dir.join("dir.safetensors");
    let o1 = gen(&["encode", "--quiet", "--tokenizer", s(&g.ckpt), s(&img), s(&img), "--out", s(&t1), "--print"]);
    let o2 = gen(&["encode", "--quiet", "--tokenizer", s(&model), s(&img), s(&img), "--out", s(&t2)]);
    assert!(o1.status.success() && o2.status.success(), "{}{}", stderr(&o1), stderr(&o2));
    let a = &candle_core::safetensors::load(&t1, &Device::Cpu).unwrap()["tokens"];
    let b = &candle_core::safetensors::load(&t2, &Device::Cpu).unwrap()["tokens"];
    assert_eq!(a.dtype(), DType::U32);
    assert_eq!(a.dims(), &[2, 16]);
    assert_eq!(a.to_vec2::<u32>().unwrap(), b.to_vec2::<u32>().unwrap());
    // the official indices of this image
    let want = &candle_core::safetensors::load(g.recon.join("case.safetensors"), &Device::Cpu).unwrap()["indices"];
    let want: Vec<u32> = want.flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&v| v as u32).collect();
    assert_eq!(a.to_vec2::<u32>().unwrap()[0], want);
    // --print shows them as text
    let printed = String::from_utf8_lossy(&o1.stdout);
    assert_eq!(printed.lines().count(), 2);
    assert!(printed.lines().next().unwrap().ends_with(&want.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")));
    // decode(tokens) equals reconstruct(image) up to the straight-through ulp
    let dec = dir.join("dec");
    let o = gen(&["decode", "--quiet", "--tokenizer", s(&model), s(&t2), "--out", s(&dec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = dir.join("rec");
    let o = gen(&["reconstruct", "--quiet", "--tokenizer", s(&model), s(&img), "--out", s(&rec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (x, y) = (decode_png(&dec.join("00000.png")), decode_png(&rec.join("input_rgb.png")));
    assert!(x.iter().zip(&y).all(|(a, b)| a.abs_diff(*b) <= 1));
}

#[test]
fn missing_input_file_is_named() {
    let Some(g) = golden() else { return };
    let o = gen(&["reconstruct", "--tokenizer", s(&g.ckpt), "/nonexistent/cat.png", "--out", s(&tmp("missing"))]);
    assert_one_line_error(&o, &["/nonexistent/cat.png"]);
}

#[test]
fn bf16_on_the_cpu_is_refused_in_one_line() {
    let Some(g) = golden() else { return };
    let o = gen(&["encode", "--device", "cpu", "--dtype", "bf16", "--tokenizer", s(&g.ckpt), "x.png", "--print"]);
    assert_one_line_error(&o, &["--dtype bf16", "CPU"]);
}

#[test]
fn missing_tokenizer_is_named() {
    let o = gen(&["encode", "--tokenizer", "/nonexistent/model", "x.png", "--print"]);
    assert_one_line_error(&o, &["/nonexistent/model"]);
}

#[test]
fn a_file_that_is_not_an_image_is_rejected() {
    let Some(g) = golden() else { return };
    let dir = tmp("notimg");
    std::fs::write(dir.join("fake.png"), b"this is text, not a PNG").unwrap();
    let o = gen(&["reconstruct", "--tokenizer", s(&g.ckpt), s(&dir.join("fake.png")), "--out", s(&dir)]);
    assert_one_line_error(&o, &["fake.png", "not a readable image"]);
}

#[test]
fn an_unsupported_image_format_is_rejected() {
    let Some(g) = golden() else { return };
    let dir = tmp("bmp");
    // a valid 1×1 BMP: this build reads PNG and JPEG only
    let bmp: Vec<u8> = [
        &b"BM"[..],
        &58u32.to_le_bytes(),
        &[0; 4],
        &54u32.to_le_bytes(),
        &40u32.to_le_bytes(),
        &1i32.to_le_bytes(),
        &1i32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &24u16.to_le_bytes(),
        &[0; 24],
        &[255, 0, 0, 0],
    ]
    .concat();
    std::fs::write(dir.join("pic.bmp"), bmp).unwrap();
    let o = gen(&["reconstruct", "--tokenizer", s(&g.ckpt), s(&dir.join("pic.bmp")), "--out", s(&dir)]);
    assert_one_line_error(&o, &["pic.bmp", "PNG or JPEG"]);
}

/// Writes the f16-tiny weights with one change, for the checkpoint error cases.
fn edited_weights(dir: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) -> PathBuf {
    let g = golden().unwrap();
    let mut w = candle_core::safetensors::load(&g.weights, &Device::Cpu).unwrap();
    edit(&mut w);
    let p = dir.join("edited.safetensors");
    candle_core::safetensors::save(&w, &p).unwrap();
    p
}

#[test]
fn a_checkpoint_missing_a_key_names_the_key_and_its_shape() {
    if golden().is_none() {
        return;
    }
    let dir = tmp("missingkey");
    let p = edited_weights(&dir, |w| {
        w.remove("decoder.conv_out.bias");
    });
    let o = gen(&["encode", "--tokenizer", s(&p), "--resolution", "64", "x.png", "--print"]);
    assert_one_line_error(&o, &["missing key 'decoder.conv_out.bias'", "[3]"]);
}

#[test]
fn a_tensor_of_the_wrong_shape_names_both_shapes() {
    if golden().is_none() {
        return;
    }
    let dir = tmp("wrongshape");
    let p = edited_weights(&dir, |w| {
        w.insert("encoder.mid.attn_1.q.bias".into(), Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap());
    });
    let o = gen(&["encode", "--tokenizer", s(&p), "--resolution", "64", "x.png", "--print"]);
    assert_one_line_error(&o, &["encoder.mid.attn_1.q.bias", "[7]", "[32]"]);
}

#[test]
fn a_codebook_whose_dim_does_not_match_the_projector_is_rejected() {
    let Some(g) = golden() else { return };
    let dir = tmp("cbdim");
    let cb = dir.join("codebook.safetensors");
    let t = Tensor::zeros((1000, 16), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("codebook".to_string(), t)]), &cb).unwrap();
    let o = gen(&["encode", "--tokenizer", s(&g.ckpt), "--codebook", s(&cb), "x.png", "--print"]);
    assert_one_line_error(&o, &["codebook.safetensors", "dim 16", "expects dim 32"]);
}

#[test]
fn decode_rejects_a_token_past_the_codebook() {
    let Some(g) = golden() else { return };
    let dir = tmp("badtoken");
    let mut ids = vec![0u32; 16];
    ids[5] = 1000; // codebook has 1000 entries
    let t = Tensor::from_vec(ids, (1, 16), &Device::Cpu).unwrap();
    let p = dir.join("tokens.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("tokens".to_string(), t)]), &p).unwrap();
    let o = gen(&["decode", "--tokenizer", s(&g.ckpt), s(&p), "--out", s(&dir.join("out"))]);
    assert_one_line_error(&o, &["token 1000", "position 5", "1000 entries"]);
    assert!(!dir.join("out/00000.png").exists());
}

#[test]
fn a_pth_with_a_forbidden_global_is_refused_without_running_it() {
    let Some(root) = fixture("pth") else { return };
    let o = gen(&["encode", "--tokenizer", s(&root.join("evil_global.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["evil_global.pth", "builtins.print"]);
    assert!(o.stdout.is_empty(), "the file printed something");
    let o = gen(&["encode", "--tokenizer", s(&root.join("evil_os_system.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["evil_os_system.pth", "system"]);
}
