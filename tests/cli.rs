//! End-to-end tests of the `gen` executable: the tokenizer commands on the official f16-tiny checkpoint,
//! and one test per kind of bad input (one-line error, non-zero exit, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use gen_tests::{assert_one_line_error, fixture};

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
    // as for `decode` below: our xrec may differ by its tolerance, 127.5·atol in u8 units
    let xrec = &load_case(&g)["xrec"];
    let root = g.recon.parent().expect("reconstruct/ sits in the tokenizer fixtures");
    let (atol, _) = gen_tests::Tolerances::open(root).get("reconstruct/case.safetensors:xrec");
    let off = assert_u8_matches_official("reconstruct", &got, &want, &official_arr(xrec), (127.5 * atol) as f32);
    eprintln!("reconstruct: {off} of {} u8 values differ by 1 from the official output", got.len());
}

fn load_case(g: &Golden) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(g.recon.join("case.safetensors"), &Device::Cpu).unwrap()
}

/// The official denormalisation before its u8 cast, per HWC value: clamp to [−1, 1], then
/// `(x + 1)·127.5 / 255 · 255`, each step rounded to f32 (fixture README §4). `xrec` is [B, 3, H, W];
/// the result is image after image, HWC.
fn official_arr(xrec: &Tensor) -> Vec<f32> {
    let (b, c, h, w) = xrec.dims4().unwrap();
    let v: Vec<f32> = xrec.flatten_all().unwrap().to_vec1().unwrap();
    let mut out = Vec::with_capacity(v.len());
    for n in 0..b {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let e = v[((n * c + ch) * h + y) * w + x].clamp(-1.0, 1.0);
                    out.push((e + 1.0) * 127.5 / 255.0 * 255.0);
                }
            }
        }
    }
    out
}

/// Asserts our u8 values equal the official ones, except by ±1 where the official value before the
/// cast (`arr`) lies within `slack` of an integer (a last-ulp difference can cross it there). Returns
/// how many values differ by 1.
fn assert_u8_matches_official(what: &str, got: &[u8], want: &[u8], arr: &[f32], slack: f32) -> usize {
    assert_eq!((got.len(), want.len()), (arr.len(), arr.len()), "{what}: sizes");
    let mut off = 0;
    for i in 0..got.len() {
        assert_eq!(want[i], arr[i] as u8, "{what}: value {i}: the official output is not the truncated chain");
        if got[i] != want[i] {
            let near = (arr[i] - arr[i].round()).abs() <= slack;
            assert!(
                got[i].abs_diff(want[i]) == 1 && near,
                "{what}: value {i} is {} where the official output is {} (official value before the cast {})",
                got[i],
                want[i],
                arr[i]
            );
            off += 1;
        }
    }
    off
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
    // The official conversion (PIL: gray replicated, alpha dropped) is in the fixture: the RGB images it
    // gives, written as RGB PNGs, must reconstruct to exactly the same pixels as the gray and RGBA files.
    let case = load_case(&g);
    let dir = tmp("gray-official");
    for name in ["gray", "rgba"] {
        let rgb = &case[&format!("{name}.as_rgb")];
        let (h, w, _) = rgb.dims3().unwrap();
        let data = rgb.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        gen_runtime::imageio::save_png(
            &dir.join(format!("{name}_as_rgb.png")),
            &gen_runtime::imageio::RgbImage::new(w, h, data),
        )
        .unwrap();
    }
    let o = gen(&[
        "reconstruct",
        "--quiet",
        "--tokenizer",
        s(&g.ckpt),
        s(&dir.join("gray_as_rgb.png")),
        s(&dir.join("rgba_as_rgb.png")),
        "--out",
        s(&dir.join("out")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["gray", "rgba"] {
        let ours = decode_png(&out.join(format!("input_{name}.png")));
        let official = decode_png(&dir.join(format!("out/{name}_as_rgb.png")));
        assert_eq!(ours.len(), 64 * 64 * 3);
        assert!(ours == official, "{name}: the converted input does not reconstruct like the official conversion");
    }
}

#[test]
fn decode_of_official_indices_matches_official_xrec_from_indices() {
    let Some(g) = golden() else { return };
    let root = g.recon.parent().unwrap().to_path_buf();
    let dir = tmp("decode-golden");
    let outputs = candle_core::safetensors::load(root.join("f16-tiny/outputs.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = outputs["indices"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    let tokens = dir.join("tokens.safetensors");
    gen_data::tokens::TokenFile { ids, grid: (4, 4), vocab: None }.write(&tokens).unwrap();
    let o = gen(&["decode", "--quiet", "--tokenizer", s(&g.ckpt), s(&tokens), "--out", s(&dir.join("out"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Official: `z_to_image(indices)`; our xrec may differ by its tolerance, i.e. 127.5·atol in u8 units.
    let xrec = &outputs["xrec_from_indices"];
    let (atol, _) = gen_tests::Tolerances::open(&root).get("f16-tiny/outputs.safetensors:xrec_from_indices");
    let arr = official_arr(xrec);
    let per_image = arr.len() / 2;
    let mut off = 0;
    for i in 0..2 {
        let got = decode_png(&dir.join(format!("out/{i:05}.png")));
        let slice = &arr[i * per_image..(i + 1) * per_image];
        let want: Vec<u8> = slice.iter().map(|&v| v as u8).collect();
        off += assert_u8_matches_official("decode", &got, &want, slice, (127.5 * atol) as f32);
    }
    eprintln!("decode: {off} of {} u8 values differ by 1 from the official xrec_from_indices", arr.len());
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

// ----- every argument and every input: one error line naming the fault -----

/// (tensor name, tensor, metadata, expected error text).
type TokenCase<'a> = (&'a str, Tensor, Vec<(&'a str, &'a str)>, &'a str);

/// A token file with `name` holding `t` and the given metadata.
fn token_file(dir: &Path, file: &str, name: &str, t: Tensor, meta: &[(&str, &str)]) -> PathBuf {
    let p = dir.join(file);
    let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    gen_runtime::io::save_safetensors(&p, &[(name.to_string(), t)], Some(meta)).unwrap();
    p
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let Some(g) = golden() else { return };
    let img = g.recon.join("input_rgb.png");
    let (ckpt, img) = (s(&g.ckpt), s(&img));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["encode", "--tokenizer", ckpt, img], vec!["nothing to do", "--out", "--print"]),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--batch-size", "0"], vec!["--batch-size", "at least 1"]),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--batch-size=-2"], vec!["--batch-size", "'-2'"]),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--threads", "0"], vec!["--threads", "at least 1"]),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--resolution", "0"], vec!["--resolution", "at least 1"]),
        (
            vec!["encode", "--tokenizer", ckpt, img, "--print", "--resolution", "100"],
            vec!["--resolution 100", "not a multiple of the downsampling factor 16"],
        ),
        (
            vec!["encode", "--tokenizer", ckpt, img, "--print", "--device", "gpu"],
            vec!["--device", "gpu", "cuda:<index>"],
        ),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--device", "cuda:x"], vec!["cuda:x"]),
        (vec!["encode", "--tokenizer", ckpt, img, "--print", "--dtype", "f64"], vec!["--dtype", "'f64'"]),
        (vec!["bench", "--only", "no_such_item", "--no-baseline"], vec!["unknown item or family 'no_such_item'"]),
        (vec!["bench", "--reps", "0"], vec!["--reps", "at least 1"]),
    ];
    for (args, needles) in cases {
        assert_one_line_error(&gen(&args), &needles);
    }
    // clap lists the accepted values on the line below its error
    let o = gen(&["encode", "--tokenizer", ckpt, img, "--print", "--dtype", "f64"]);
    assert!(stderr(&o).contains("[possible values: f32, f16, bf16]"), "{}", stderr(&o));
}

#[test]
fn cuda_on_a_cpu_only_build_is_refused_in_one_line() {
    if cfg!(feature = "cuda") {
        return; // this build has CUDA: the refusal does not apply
    }
    let Some(g) = golden() else { return };
    let o = gen(&["encode", "--tokenizer", s(&g.ckpt), "x.png", "--print", "--device", "cuda:1"]);
    assert_one_line_error(&o, &["--device cuda:1", "built without CUDA", "--features cuda"]);
}

#[test]
fn bad_token_files_are_refused_before_any_image_is_written() {
    let Some(g) = golden() else { return };
    let dir = tmp("badtokens");
    let dev = Device::Cpu;
    let u32s = |v: Vec<u32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
    let cases: Vec<TokenCase> = vec![
        ("ids", u32s(vec![0; 16], &[1, 16]), vec![], "no tensor named 'tokens'"),
        ("tokens", u32s(vec![0; 16], &[16]), vec![], "shape [16], expected [N, h·w]"),
        ("tokens", Tensor::zeros((1, 16), DType::F32, &dev).unwrap(), vec![], "dtype F32, expected an integer"),
        (
            "tokens",
            Tensor::from_vec(vec![3i64; 16], (1, 16), &dev).unwrap().affine(1.0, -5.0).unwrap(),
            vec![],
            "token -2 at position 0 of image 0 is negative",
        ),
        ("tokens", u32s(vec![0; 12], &[1, 12]), vec![], "12 tokens per image is not a square grid"),
        ("tokens", u32s(vec![0; 12], &[1, 12]), vec![("grid", "4,4")], "grid 4×4 does not hold the 12 tokens"),
        ("tokens", u32s(vec![0; 12], &[1, 12]), vec![("grid", "3x4")], "grid '3x4' is not 'h,w'"),
    ];
    for (i, (name, t, meta, needle)) in cases.into_iter().enumerate() {
        let p = token_file(&dir, &format!("t{i}.safetensors"), name, t, &meta);
        let out = dir.join(format!("out{i}"));
        let o = gen(&["decode", "--tokenizer", s(&g.ckpt), s(&p), "--out", s(&out)]);
        assert_one_line_error(&o, &[&format!("t{i}.safetensors"), needle]);
        assert!(!out.join("00000.png").exists(), "case {i} wrote an image");
    }
    // a file that is not safetensors at all
    std::fs::write(dir.join("junk.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    let o = gen(&["decode", "--tokenizer", s(&g.ckpt), s(&dir.join("junk.safetensors")), "--out", s(&dir)]);
    assert_one_line_error(&o, &["junk.safetensors", "not a readable safetensors"]);
    // a non-square grid with its metadata decodes
    let p = token_file(&dir, "wide.safetensors", "tokens", u32s(vec![1; 32], &[1, 32]), &[("grid", "4,8")]);
    let o = gen(&["decode", "--quiet", "--tokenizer", s(&g.ckpt), s(&p), "--out", s(&dir.join("wide"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (img, _) = gen_runtime::imageio::load_rgb(&dir.join("wide/00000.png")).unwrap();
    assert_eq!((img.width, img.height), (128, 64));
}

#[test]
fn a_codebook_file_with_several_tensors_is_refused() {
    let Some(g) = golden() else { return };
    let dir = tmp("cbmany");
    let cb = dir.join("codebook.safetensors");
    let t = || Tensor::zeros((1000, 32), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("a".to_string(), t()), ("b".to_string(), t())]),
        &cb,
    )
    .unwrap();
    let o = gen(&["encode", "--tokenizer", s(&g.ckpt), "--codebook", s(&cb), "x.png", "--print"]);
    assert_one_line_error(&o, &["codebook.safetensors", "expected one codebook tensor", "found 2 tensors (a, b)"]);
}

#[test]
fn model_folders_without_a_valid_config_are_refused() {
    let Some(g) = golden() else { return };
    let dir = tmp("modeldir");
    let model = dir.join("model");
    let o = gen(&["convert", "--from", s(&g.ckpt), "--to", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = model.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let encode = || gen(&["encode", "--tokenizer", s(&model), "x.png", "--print"]);
    for (edit, needles) in [
        (
            text.replace("kind = \"tokenizer\"", "kind = \"gpt\""),
            vec!["config.toml", "kind is 'gpt', expected 'tokenizer'"],
        ),
        (text.replace("kind = \"tokenizer\"", "kind = \"unet\""), vec!["config.toml", "kind 'unet' is unknown"]),
        (text.replace("format_version = 1", "format_version = 9"), vec!["config.toml", "format_version 9 is newer"]),
        (text.replace("resolution = 64", "resolution = 0"), vec!["config.toml", "resolution: must be at least 1"]),
        (text.replace("ch = 32", "ch = \"wide\""), vec!["config.toml", "[tokenizer]"]),
    ] {
        std::fs::write(&cfg, edit).unwrap();
        assert_one_line_error(&encode(), &needles);
    }
    std::fs::remove_file(&cfg).unwrap();
    assert_one_line_error(&encode(), &["config.toml", "is not a model folder"]);
}

#[test]
fn broken_and_hostile_pth_files_are_refused_through_the_cli() {
    let Some(root) = fixture("pth") else { return };
    let cases = [
        ("truncated.pth", "not a readable zip archive"),
        ("legacy_format.pth", "legacy (pre-1.6, non-zip) torch.save format is not supported"),
        ("bad_pickle.pth", "pickle ends mid-stream"),
        ("model_key.pth", "missing key 'tok_embeddings.weight'"), // a .pth with no codebook
    ];
    for (file, needle) in cases {
        let o = gen(&["encode", "--tokenizer", s(&root.join(file)), "x.png", "--print"]);
        assert_one_line_error(&o, &[file, needle]);
    }
    let o = gen(&["encode", "--tokenizer", s(&root.join("model_key.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["--codebook codebook-100K.pth"]);
    // the same broken files given as the codebook
    let Some(g) = golden() else { return };
    let o =
        gen(&["encode", "--tokenizer", s(&g.ckpt), "--codebook", s(&root.join("truncated.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["truncated.pth", "not a readable zip archive"]);
    let o =
        gen(&["encode", "--tokenizer", s(&g.ckpt), "--codebook", s(&root.join("model_key.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["model_key.pth", "not a bare tensor"]);
}

#[test]
fn two_inputs_with_the_same_stem_are_refused_before_anything_is_written() {
    let Some(g) = golden() else { return };
    let dir = tmp("samestem");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::copy(g.recon.join("input_rgb.png"), dir.join("a/x.png")).unwrap();
    std::fs::copy(g.recon.join("input_rgb.png"), dir.join("b/x.png")).unwrap();
    let out = dir.join("out");
    let o = gen(&[
        "reconstruct",
        "--tokenizer",
        s(&g.ckpt),
        s(&dir.join("a/x.png")),
        s(&dir.join("b/x.png")),
        "--out",
        s(&out),
    ]);
    assert_one_line_error(&o, &["a/x.png", "b/x.png", "out/x.png"]);
    assert!(!out.join("x.png").exists());
}

#[test]
fn export_fmnist_refuses_a_bad_split_and_a_range_past_the_end() {
    let dir = tmp("fmnist");
    let o = gen(&["export-fmnist", "--split", "test", "--out", s(&dir)]);
    assert_one_line_error(&o, &["--split 'test'", "train or t10k"]);
    let o = gen(&["export-fmnist", "--dir", "/nonexistent/fmnist", "--out", s(&dir)]);
    assert_one_line_error(&o, &["/nonexistent/fmnist", "apt-get install dataset-fashion-mnist"]);
    if fixture_fmnist().is_none() {
        return;
    }
    let o = gen(&["export-fmnist", "--start", "9995", "--count", "10", "--out", s(&dir)]);
    assert_one_line_error(&o, &["--start 9995 --count 10", "10000 images"]);
    let o = gen(&["export-fmnist", "--start", "18446744073709551615", "--count", "2", "--out", s(&dir)]);
    assert_one_line_error(&o, &["--count 2", "10000 images"]);
}

/// The installed Fashion-MNIST, or None (skip); with GEN_REQUIRE_GOLDEN=1 its absence fails.
fn fixture_fmnist() -> Option<PathBuf> {
    let p = PathBuf::from(gen_data::fmnist::DEFAULT_DIR);
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("GEN_REQUIRE_GOLDEN").ok().as_deref() != Some("1"), "{} missing", p.display());
    eprintln!("SKIPPED: {} not installed", p.display());
    None
}

#[test]
fn a_forged_zip64_checkpoint_is_an_error_not_an_abort() {
    let dir = tmp("zip64");
    let f = gen_tests::forged_zip64(1 << 40);
    std::fs::write(dir.join("forged.pth"), &f).unwrap();
    let o = gen(&["encode", "--tokenizer", s(&dir.join("forged.pth")), "x.png", "--print"]);
    assert_one_line_error(&o, &["forged.pth", "corrupt zip archive", "1099511627776 entries"]);
}

#[test]
fn convert_weights_only_copies_a_state_dict_to_safetensors() {
    let Some(root) = fixture("pth") else { return };
    let dir = tmp("weights-only");
    let out = dir.join("w.safetensors");
    let o = gen(&["convert", "--weights-only", "--from", s(&root.join("model_key.pth")), "--to", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = gen_runtime::pth::PthFile::open(&root.join("model_key.pth")).unwrap().tensors(None).unwrap();
    let kept: Vec<&(String, Tensor)> = want.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    assert_eq!(got.len(), kept.len());
    for (k, t) in kept {
        assert_eq!(got[k].dims(), t.dims(), "{k}");
    }
    let o =
        gen(&["convert", "--weights-only", "--from", s(&root.join("model_key.pth")), "--to", s(&dir.join("w.bin"))]);
    assert_one_line_error(&o, &["w.bin", ".safetensors"]);
}
