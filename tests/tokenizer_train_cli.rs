//! `gen train-tokenizer` and `gen utilization` end to end on a tiny model and synthetic images: every
//! quantizer trains and gives a loadable model, a resumed run equals an unbroken one bit for bit, and
//! bad inputs are one-line errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use gen_runtime::imageio::{save_png, RgbImage};
use gen_runtime::Rng;
use gen_tests::assert_one_line_error;

fn gen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gen")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-tok-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 12 blobby 16×16 images.
fn images(dir: &Path) -> PathBuf {
    let out = dir.join("images");
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = Rng::new(5);
    for i in 0..12 {
        let (cx, cy, r) = (4.0 + 8.0 * rng.uniform(), 4.0 + 8.0 * rng.uniform(), 2.0 + 4.0 * rng.uniform());
        let mut data = Vec::with_capacity(16 * 16 * 3);
        for y in 0..16 {
            for x in 0..16 {
                let inside = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < r;
                let v = if inside { 200 + (i * 4) as u8 } else { 10 };
                data.extend_from_slice(&[v, v / 2, 255 - v]);
            }
        }
        save_png(&out.join(format!("{i:02}.png")), &RgbImage::new(16, 16, data)).unwrap();
    }
    out
}

/// A tiny config: 16² → 8×8 tokens, 64 codes; the GAN from step 2.
fn config(dir: &Path, kind: &str, extra: &str) -> PathBuf {
    let (codebook, projector, dim) = match kind {
        "lc" => {
            let cb = Rng::new(9).randn((64, 16), 1.0, &Device::Cpu).unwrap();
            let path = dir.join("codebook.safetensors");
            gen_runtime::io::save_safetensors(&path, &[("codebook".to_string(), cb)], None).unwrap();
            (format!("[codebook]\nfile = \"{}\"\n{extra}\n", s(&path)), "linear", 16)
        }
        "simvq" => (String::new(), "linear", 4),
        _ => (String::new(), "none", 4),
    };
    let text = format!(
        "[model]\nch = 32\nch_mult = [1, 1]\nnum_res_blocks = 1\nattn_resolutions = [8]\nresolution = 16\n\
         in_channels = 3\nout_ch = 3\nz_channels = 32\nembed_dim = 4\ncodebook_size = 64\ncodebook_dim = {dim}\n\
         quantizer = \"{kind}\"\nprojector = {{ kind = \"{projector}\" }}\n\n{codebook}\n\
         [loss]\nrate_q = 0.1\nrate_p = 1.0\nrate_d = 0.1\ndisc_start = 2\n\n\
         [optim]\nlr = 1e-3\nmin_lr = 0.0\nwarmup_steps = 1\nbeta1 = 0.5\nbeta2 = 0.9\neps = 1e-7\n\n\
         [train]\nsteps = 6\nbatch_size = 4\nseed = 3\nlog_every = 2\ncheckpoint_every = 3\n"
    );
    let path = dir.join(format!("{kind}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    gen_runtime::io::load_safetensors(path, &Device::Cpu).unwrap()
}

#[test]
fn every_quantizer_trains_and_its_model_reports_utilisation() {
    let dir = tmp("kinds");
    let data = images(&dir);
    for kind in ["lc", "vqgan", "ema", "fc", "simvq"] {
        let cfg = config(&dir, kind, "projector_init = \"latent-moments\"");
        let run = dir.join(format!("run-{kind}"));
        let out = ok(gen(&["train-tokenizer", "--quiet", "--config", s(&cfg), "--data", s(&data), "--out", s(&run)]));
        assert!(out.contains("trained 6 steps"), "{kind}: {out}");
        for f in
            ["config.toml", "log.jsonl", "loss.png", "utilization.png", "model/config.toml", "model/model.safetensors"]
        {
            assert!(run.join(f).exists(), "{kind}: {f} missing");
        }
        // the GAN came in after disc_start, and the log has the utilisation columns
        let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        for key in ["rec_loss", "q_loss", "g_loss", "d_loss", "d_weight", "window_utilization", "window_perplexity"] {
            assert!(last.get(key).and_then(|v| v.as_f64()).is_some_and(f64::is_finite), "{kind}: {key} in {last}");
        }
        let hist = dir.join(format!("usage-{kind}.png"));
        let model = run.join("model");
        let curve = dir.join(format!("curve-{kind}.png"));
        let out = ok(gen(&[
            "utilization",
            "--quiet",
            "--tokenizer",
            s(&model),
            "--data",
            s(&data),
            "--histogram",
            s(&hist),
            "--curve",
            s(&curve),
        ]));
        assert!(out.contains("of 64 codes active") && out.contains("768 tokens of 12 images at 16²"), "{kind}: {out}");
        assert!(out.contains("Chao1 estimate of the codes this tokenizer reaches"), "{kind}: {out}");
        assert!(hist.exists() && curve.exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_equals_an_unbroken_one_bit_for_bit() {
    let dir = tmp("resume");
    let data = images(&dir);
    let cfg = config(&dir, "lc", "");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let train = |run: &Path, more: &[&str]| {
        ok(gen(&[
            &["train-tokenizer", "--quiet", "--config", s(&cfg), "--data", s(&data), "--out", s(run), "--threads", "2"]
                [..],
            more,
        ]
        .concat()))
    };
    train(&a, &[]);
    let out = train(&b, &["--until", "4"]);
    assert!(out.contains("stopped at step 4 of 6"), "{out}");
    train(&b, &["--resume"]);
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (ta, tb) =
            (load(&a.join("checkpoints/step-00000006").join(f)), load(&b.join("checkpoints/step-00000006").join(f)));
        assert_eq!(ta.len(), tb.len());
        for (k, t) in &ta {
            let (x, y) = (t.flatten_all().unwrap(), tb[k].flatten_all().unwrap());
            let same = match t.dtype() {
                candle_core::DType::I64 => x.to_vec1::<i64>().unwrap() == y.to_vec1::<i64>().unwrap(),
                _ => {
                    let (x, y) =
                        (x.to_dtype(candle_core::DType::F32).unwrap(), y.to_dtype(candle_core::DType::F32).unwrap());
                    x.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .zip(y.to_vec1::<f32>().unwrap())
                        .all(|(p, q)| p.to_bits() == q.to_bits())
                }
            };
            assert!(same, "{f}: {k} differs after resume");
        }
    }
    // the discriminator and its running statistics are in the checkpoint
    assert!(
        load(&a.join("checkpoints/step-00000006/model.safetensors")).contains_key("discriminator.main.3.running_var")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tmp("bad");
    let data = images(&dir);
    let run = dir.join("run");
    // a codebook whose size does not match the config
    let cfg = config(&dir, "lc", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("codebook_size = 64", "codebook_size = 65");
    let wrong = dir.join("wrong.toml");
    std::fs::write(&wrong, text).unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&wrong), "--data", s(&data), "--out", s(&run)]);
    assert_one_line_error(&o, &["codebook is 64 × 16", "codebook_size 65"]);
    // an empty data folder
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&cfg), "--data", s(&empty), "--out", s(&run)]);
    assert_one_line_error(&o, &["holds no images"]);
    // an unreadable image stops training, named
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for i in 0..4 {
        std::fs::copy(data.join(format!("{i:02}.png")), broken.join(format!("{i:02}.png"))).unwrap();
    }
    std::fs::write(broken.join("zz.png"), b"not a png").unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&cfg), "--data", s(&broken), "--out", s(&dir.join("run-broken"))]);
    assert_one_line_error(&o, &["zz.png"]);
    // --resume with another config
    ok(gen(&["train-tokenizer", "--quiet", "--config", s(&cfg), "--data", s(&data), "--out", s(&run), "--until", "3"]));
    let other = dir.join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&cfg).unwrap().replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&other), "--data", s(&data), "--out", s(&run), "--resume"]);
    assert_one_line_error(&o, &["config"]);
    // a run folder that already holds a checkpoint is not overwritten without --resume
    let o = gen(&["train-tokenizer", "--config", s(&cfg), "--data", s(&data), "--out", s(&run)]);
    assert_one_line_error(&o, &["already holds a checkpoint"]);
    // a diverging run stops at the step whose loss is not finite, keeping the last good checkpoint
    let nan = dir.join("nan.toml");
    std::fs::write(&nan, std::fs::read_to_string(&cfg).unwrap().replace("lr = 1e-3", "lr = 1e30")).unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&nan), "--data", s(&data), "--out", s(&dir.join("run-nan"))]);
    assert_one_line_error(&o, &["the loss is", "training stopped"]);
    // a config that asks the LC quantizer to train without its codebook
    let nocb = dir.join("nocb.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[codebook]").unwrap();
    let end = text.find("[loss]").unwrap();
    std::fs::write(&nocb, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let o = gen(&["train-tokenizer", "--config", s(&nocb), "--data", s(&data), "--out", s(&dir.join("run-nocb"))]);
    assert_one_line_error(&o, &["codebook.file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shipped_training_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tokenizer");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg =
                gen_tokenizer::train::TrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(cfg.train.steps > 0);
            n += 1;
        }
    }
    assert!(n >= 4, "f16, f8, the demo and the experiment configs");
}
