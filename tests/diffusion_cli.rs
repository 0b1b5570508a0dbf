//! End to end for the latent generators: images → latent shards (`gen tokenize --latents`) → `gen train
//! --model dit|sit|ldm` (exact resume) → `gen sample` from the model folder, decoded by its paired
//! tokenizer; and every bad input as a one-line error.

use std::path::{Path, PathBuf};

use gen_tests::{assert_ok, assert_one_line_error, class_images, fixture, run_gen, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const OPTIM: &str = "[optim]\nlr = 1e-3\nmin_lr = 0.0\nwarmup_steps = 1\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\n\n\
[train]\nsteps = 4\nbatch_size = 4\nseed = 1\nlog_every = 1\ncheckpoint_every = 2\nema = { decay = 0.9, warmup = true }\n";

fn config(kind: &str) -> String {
    let (model, sampling) = match kind {
        "dit" => (
            "kind = \"dit\"\nhidden_size = 16\ndepth = 1\nnum_heads = 2\npatch_size = 2\n",
            "sampler = \"ddim\"\nsteps = 5\ncfg_scale = 2.0\n",
        ),
        "sit" => (
            "kind = \"sit\"\nhidden_size = 16\ndepth = 1\nnum_heads = 2\npatch_size = 2\nlearn_sigma = false\n",
            "sampler = \"heun\"\nsteps = 4\ncfg_scale = 2.0\n",
        ),
        _ => (
            "kind = \"ldm\"\nmodel_channels = 32\nattention_resolutions = [1]\nnum_res_blocks = 1\nchannel_mult = [1, 1]\n\
             num_head_channels = 16\ncontext_dim = 16\n",
            "sampler = \"ddim\"\nsteps = 5\ncfg_scale = 2.0\neta = 1.0\n",
        ),
    };
    format!("[model]\n{model}\n{OPTIM}\n[sampling]\n{sampling}")
}

/// Latent shards of 16 two-class images through the golden f16-tiny tokenizer (8 × 4 × 4 latents).
fn latents(dir: &Path, tok: &Path) -> PathBuf {
    let images = class_images(dir);
    let out = dir.join("latents");
    assert_ok(&run_gen!(&[
        "tokenize",
        "--data",
        s(&images),
        "--out",
        s(&out),
        "--latents",
        "--tokenizer",
        s(tok),
        "--resolution",
        "64",
        "--quiet"
    ]));
    out
}

fn train(kind: &str, latents: &Path, cfg: &Path, out: &Path, tok: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["train", "--model", kind, "--latents", s(latents), "--config", s(cfg), "--out", s(out)];
    a.extend(["--tokenizer", s(tok), "--quiet"]);
    a.extend(extra);
    run_gen!(&a)
}

#[test]
fn latents_train_and_sample_each_generator_with_exact_resume() {
    let Some(tok) = fixture("tokenizer/f16-tiny/weights.safetensors") else { return };
    let dir = temp_dir("diffusion-e2e");
    let lat = latents(&dir, &tok);
    for kind in ["dit", "sit", "ldm"] {
        let cfg = dir.join(format!("{kind}.toml"));
        std::fs::write(&cfg, config(kind)).unwrap();
        let (whole, parts) = (dir.join(format!("{kind}-whole")), dir.join(format!("{kind}-parts")));
        assert_ok(&train(kind, &lat, &cfg, &whole, &tok, &[]));
        assert!(assert_ok(&train(kind, &lat, &cfg, &parts, &tok, &["--until", "2"])).contains("stopped at step 2"));
        // a run part-way exports its newest checkpoint without training (or touching the run)
        let log = std::fs::read(parts.join("log.jsonl")).unwrap();
        let out = assert_ok(&train(kind, &lat, &cfg, &parts, &tok, &["--resume", "--export-now"]));
        assert!(out.contains("exported step 2 of"), "{out}");
        assert!(parts.join("model-step-2/model.safetensors").exists());
        assert_eq!(std::fs::read(parts.join("log.jsonl")).unwrap(), log);
        assert_ok(&train(kind, &lat, &cfg, &parts, &tok, &["--resume"]));
        let a = std::fs::read(whole.join("model/model.safetensors")).unwrap();
        let b = std::fs::read(parts.join("model/model.safetensors")).unwrap();
        assert!(a == b, "{kind}: a resumed run must equal an unbroken one bit for bit");
        assert!(whole.join("loss.png").exists());

        // the folder samples with its recorded [sampling] and tokenizer; the same seed, the same image
        let model = whole.join("model");
        let (p1, p2) = (dir.join(format!("{kind}-1.png")), dir.join(format!("{kind}-2.png")));
        let args = |png: &Path| {
            vec![
                "sample",
                "--model",
                s(&model),
                "--prompt",
                "b",
                "--num-samples",
                "3",
                "--resolution",
                "64",
                "--out",
                s(png),
                "--quiet",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        };
        let out = assert_ok(&run_gen!(&args(&p1)));
        assert!(out.contains("class 1 (b)") && out.contains(kind), "{out}");
        assert_ok(&run_gen!(&args(&p2)));
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap(), "{kind}: seeded sampling");
        // every class, written per class for eval-classes / fid
        let grid = dir.join(format!("{kind}-all.png"));
        let per = dir.join(format!("{kind}-samples"));
        assert_ok(&run_gen!(&[
            "sample",
            "--model",
            s(&model),
            "--all-classes",
            "--num-samples",
            "2",
            "--resolution",
            "64",
            "--out",
            s(&grid),
            "--out-dir",
            s(&per),
            "--quiet"
        ]));
        assert!(per.join("a/00001.png").exists() && per.join("b/00000.png").exists());
    }
    // the official presets run (DiT: DDPM with the 3-channel guidance, fewer steps here)
    let model = dir.join("dit-whole/model");
    let png = dir.join("official.png");
    let out = assert_ok(&run_gen!(&[
        "sample",
        "--model",
        s(&model),
        "--class",
        "0",
        "--preset",
        "official",
        "--steps",
        "4",
        "--resolution",
        "64",
        "--out",
        s(&png),
        "--quiet"
    ]));
    assert!(out.contains("Ddpm") && out.contains("cfg 8"), "{out}");
}

#[test]
fn training_refuses_a_device_or_precision_it_does_not_run_on() {
    // checked before any file is read: the paths need not exist
    for cmd in ["train", "train-prior"] {
        let base: Vec<&str> = if cmd == "train" {
            vec![cmd, "--model", "dit", "--latents", "nowhere", "--config", "none.toml", "--out", "x"]
        } else {
            vec![cmd, "--shards", "nowhere", "--config", "none.toml", "--out", "x"]
        };
        for (extra, needles) in [
            (["--device", "cuda:0"], ["--device cuda:0", "on the CPU only"]),
            (["--dtype", "bf16"], ["--dtype bf16", "f32 only"]),
        ] {
            let mut a = base.clone();
            a.extend(extra);
            assert_one_line_error(&run_gen!(&a), &needles);
        }
    }
    // the tokenizer trains on the device it is given, in f32
    let a = ["train-tokenizer", "--config", "none.toml", "--data", "nowhere", "--out", "x", "--dtype", "f16"];
    assert_one_line_error(&run_gen!(&a), &["--dtype f16", "f32 only"]);
}

#[test]
fn bad_generator_inputs_are_one_line_errors() {
    let Some(tok) = fixture("tokenizer/f16-tiny/weights.safetensors") else { return };
    let dir = temp_dir("diffusion-bad");
    let lat = latents(&dir, &tok);
    let cfg = dir.join("dit.toml");
    std::fs::write(&cfg, config("dit")).unwrap();
    let run = dir.join("dit");
    assert_ok(&train("dit", &lat, &cfg, &run, &tok, &[]));
    let model = run.join("model");
    let png = dir.join("x.png");
    let sample = |extra: &[&str]| {
        let mut a = vec!["sample", "--model", s(&model), "--resolution", "64", "--out", s(&png)];
        a.extend(extra);
        run_gen!(&a)
    };
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--class", "0", "--cfg-scale=-1"], &["--cfg-scale -1", ">= 0"]),
        (&["--class", "0", "--steps", "0"], &["--steps 0"]),
        (&["--class", "0", "--steps", "1001"], &["--steps 1001", "1000 steps"]),
        (&["--class", "0", "--sampler", "lms"], &["--sampler", "unknown sampler 'lms'"]),
        (&["--class", "0", "--sampler", "sde"], &["dit samples with ddpm, ddim"]),
        (&["--class", "2"], &["--class 2 is out of range", "0 to 1"]),
        (&["--class", "0", "--top-k", "5"], &["GPT settings"]),
        (&["--class", "0", "--preset", "greedy"], &["--preset greedy", "GPT preset"]),
    ];
    for (extra, needles) in cases {
        assert_one_line_error(&sample(extra), needles);
    }
    // latents of another shape than the model's: the tokenizer at 128² decodes 8×8 latents, the model makes 4×4
    let o = run_gen!(&["sample", "--model", s(&model), "--class", "0", "--resolution", "128", "--out", s(&png)]);
    assert_one_line_error(&o, &["8×4×4 latents", "8×8×8", "not a pair"]);
    // a config that says another architecture than the weights hold
    let text = std::fs::read_to_string(model.join("config.toml")).unwrap();
    std::fs::write(model.join("config.toml"), text.replace("hidden_size = 16", "hidden_size = 32")).unwrap();
    assert_one_line_error(&sample(&["--class", "0"]), &["x_embedder.proj"]);
    std::fs::write(model.join("config.toml"), text).unwrap();
    // a config whose kind is not the --model's; latents that are tokens
    assert_one_line_error(&train("sit", &lat, &cfg, &dir.join("x"), &tok, &[]), &["--model sit", "trains a dit"]);
    let tokens = dir.join("tokens");
    assert_ok(&run_gen!(&[
        "tokenize",
        "--data",
        s(&dir.join("images")),
        "--out",
        s(&tokens),
        "--tokenizer",
        s(&tok),
        "--resolution",
        "64",
        "--quiet"
    ]));
    assert_one_line_error(&train("dit", &tokens, &cfg, &dir.join("y"), &tok, &[]), &["holds tokens, not latents"]);
    // the official x·2 − 1 quirk is a flag of latent tokenization, and changes the latents
    let doubled = dir.join("doubled");
    assert_ok(&run_gen!(&[
        "tokenize",
        "--data",
        s(&dir.join("images")),
        "--out",
        s(&doubled),
        "--latents",
        "--official-double-scale",
        "--tokenizer",
        s(&tok),
        "--resolution",
        "64",
        "--quiet"
    ]));
    let shard = |d: &Path| std::fs::read(d.join("shard-00000.safetensors")).unwrap();
    assert_ne!(shard(&doubled), shard(&lat));
    // a weights file: DiT or SiT must be said, the head count of an unnamed size too
    let pt = dir.join("weights.safetensors");
    std::fs::copy(model.join("model.safetensors"), &pt).unwrap();
    let file = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--model",
            s(&pt),
            "--class",
            "0",
            "--tokenizer",
            s(&tok),
            "--resolution",
            "64",
            "--out",
            s(&png),
            "--quiet",
        ];
        a.extend(extra);
        run_gen!(&a)
    };
    assert_one_line_error(&file(&["--kind", "dit"]), &["not a named size", "--heads"]);
    assert_ok(&file(&["--kind", "dit", "--heads", "2"]));
}
