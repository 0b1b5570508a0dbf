//! gen-tests support: locating the golden fixtures and comparing against their tolerances.
//!
//! Fixtures live in `$GEN_GOLDEN_DIR` (default `../shared/golden` from the workspace root). When a
//! fixture is missing the test is skipped with a message, unless `GEN_REQUIRE_GOLDEN=1`, which fails it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub fn golden_dir() -> PathBuf {
    match std::env::var_os("GEN_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"),
    }
}

fn require() -> bool {
    std::env::var("GEN_REQUIRE_GOLDEN").is_ok_and(|v| v == "1")
}

/// The fixture path `rel` under the golden folder, or `None` (skip) when it is missing; with
/// `GEN_REQUIRE_GOLDEN=1` a missing fixture panics, so the test fails.
pub fn fixture(rel: &str) -> Option<PathBuf> {
    let p = golden_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    if require() {
        panic!("golden fixture {} is missing and GEN_REQUIRE_GOLDEN=1", p.display());
    }
    eprintln!("SKIPPED: golden fixture {} not found (set GEN_GOLDEN_DIR)", p.display());
    None
}

/// The device parity tests run on: `GEN_TEST_DEVICE=cuda` (a `--features cuda` build) or the CPU.
pub fn device() -> Device {
    match std::env::var("GEN_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("GEN_TEST_DEVICE=cuda needs a CUDA build and a GPU"),
        _ => Device::Cpu,
    }
}

pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tolerances of one fixture folder (`tolerances.json`: key "file:tensor" → {atol, rtol} or "exact").
pub struct Tolerances(serde_json::Value);

impl Tolerances {
    pub fn open(folder: &Path) -> Tolerances {
        let p = folder.join("tolerances.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Tolerances(serde_json::from_str(&text).expect("tolerances.json parses"))
    }

    /// (atol, rtol) for `key` ("f16-tiny/outputs.safetensors:xrec"); exact entries give (0, 0). Files whose
    /// entries nest as `{"tolerances": {file: {tensor: …}}}` (gpt/) are read with the same key.
    pub fn get(&self, key: &str) -> (f64, f64) {
        let nested = || {
            let (file, tensor) = key.split_once(':')?;
            self.0.get("tolerances")?.get(file)?.get(tensor)
        };
        let e = self.0.get(key).or_else(nested).unwrap_or_else(|| panic!("no tolerance for {key}"));
        let atol = e.get("atol").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let rtol = e.get("rtol").and_then(|v| v.as_f64()).unwrap_or(0.0);
        (atol, rtol)
    }
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).expect("tensor to f64")
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` elementwise (shapes must agree) and returns the worst
/// used fraction of the tolerance (`max |diff| / (atol + rtol·|want|)`, ≤ 1 when passing).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (to_f64(got), to_f64(want));
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = atol + rtol * b.abs();
        let d = (a - b).abs();
        assert!(d <= tol, "{what}: element {i}: got {a}, want {b}, |diff| {d:.3e} > tol {tol:.3e}");
        worst = worst.max(if tol > 0.0 { d / tol } else { 0.0 });
    }
    eprintln!("parity {what}: {:.1}% of tolerance used", worst * 100.0);
    worst
}

/// Asserts integer tensors are identical.
pub fn assert_exact(what: &str, got: &Tensor, want: &Tensor) {
    let g: Vec<i64> = got.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<i64> = want.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g.len(), w.len(), "{what}: length");
    let bad: Vec<usize> = (0..g.len()).filter(|&i| g[i] != w[i]).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ, first at {} (got {}, want {})",
        bad.len(),
        g.len(),
        bad[0],
        g[bad[0]],
        w[bad[0]]
    );
}

/// A tiny file that starts like a zip and ends with a ZIP64 end record (+ locator + end record) claiming
/// `entries` entries: a crafted header the `zip` crate would size a table from.
pub fn forged_zip64(entries: u64) -> Vec<u8> {
    let mut f = b"PK\x03\x04".to_vec();
    f.extend([0u8; 60]);
    let record_at = f.len() as u64;
    f.extend(b"PK\x06\x06");
    f.extend(44u64.to_le_bytes()); // record size
    f.extend([45, 0, 45, 0]); // versions
    f.extend([0; 8]); // disk numbers
    f.extend(entries.to_le_bytes()); // entries on this disk
    f.extend(entries.to_le_bytes()); // entries
    f.extend((entries.saturating_mul(46)).to_le_bytes()); // directory size
    f.extend((entries.saturating_mul(50)).to_le_bytes()); // directory start
    f.extend(b"PK\x06\x07");
    f.extend(0u32.to_le_bytes());
    f.extend(record_at.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    f.extend(b"PK\x05\x06");
    f.extend([0xff; 16]);
    f.extend(0u16.to_le_bytes());
    f
}

/// `../shared/golden/detinit.py`: deterministic weights for fixtures of networks too large to store.
/// `value = offset + (2u − 1)·scale` in f32, with `u = (splitmix64(fnv1a64(name) + i) >> 40) / 2²⁴`.
pub mod detinit {
    use std::collections::HashMap;
    use std::path::Path;

    use candle_core::{Device, Tensor};

    fn fnv1a64(name: &str) -> u64 {
        name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
    }

    fn splitmix64(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `det_tensor(name, shape, scale, offset)`, row-major values.
    pub fn det_values(name: &str, numel: usize, scale: f32, offset: f32) -> Vec<f32> {
        let seed = fnv1a64(name);
        (0..numel as u64)
            .map(|i| {
                let u = (splitmix64(seed.wrapping_add(i)) >> 40) as f32 / (1u32 << 24) as f32;
                (2.0 * u - 1.0) * scale + offset
            })
            .collect()
    }

    /// Every tensor of a `weights_spec.json` (`{name: {"shape", "scale", "offset"}}`, scale and offset as
    /// f32-exact decimal strings or numbers).
    pub fn build(spec_path: &Path) -> HashMap<String, Tensor> {
        let text = std::fs::read_to_string(spec_path).unwrap_or_else(|e| panic!("{}: {e}", spec_path.display()));
        let spec: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("weights spec");
        let number = |v: Option<&serde_json::Value>| -> f32 {
            match v {
                Some(serde_json::Value::String(s)) => s.parse::<f64>().expect("decimal") as f32,
                Some(serde_json::Value::Number(n)) => n.as_f64().expect("number") as f32,
                _ => 0.0,
            }
        };
        spec.iter()
            .map(|(name, entry)| {
                let shape: Vec<usize> = entry["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim") as usize)
                    .collect();
                let numel = shape.iter().product();
                let values = det_values(name, numel, number(entry.get("scale")), number(entry.get("offset")));
                (name.clone(), Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor"))
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn det_values_match_the_python_self_check() {
            let got: Vec<f64> = super::det_values("check", 4, 1.0, 0.0).iter().map(|&v| f64::from(v)).collect();
            assert_eq!(got, [0.04737353324890137, -0.14812350273132324, -0.619655966758728, 0.6241564750671387]);
        }
    }
}

/// Asserts a failed run of `gen` with exactly one `error:` line that contains every `needle`, and no panic.
pub fn assert_one_line_error(o: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}

/// Whether Fashion-MNIST is installed (Debian's `dataset-fashion-mnist`); a test that needs it returns
/// early when it is not, and with GEN_REQUIRE_GOLDEN=1 its absence fails instead.
pub fn fmnist_installed() -> bool {
    let dir = Path::new(gen_data::fmnist::DEFAULT_DIR);
    if dir.exists() {
        return true;
    }
    assert!(std::env::var("GEN_REQUIRE_GOLDEN").ok().as_deref() != Some("1"), "{} missing", dir.display());
    eprintln!("SKIPPED: {} not installed", dir.display());
    false
}

/// Runs the `gen` binary from the workspace root: `run_gen!(&["sample", …])`. A macro because only an
/// integration test knows the binary's path (`CARGO_BIN_EXE_gen`).
#[macro_export]
macro_rules! run_gen {
    ($args:expr) => {
        std::process::Command::new(env!("CARGO_BIN_EXE_gen"))
            .args($args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("the gen binary runs")
    };
}

/// Asserts a run succeeded; returns its stdout.
pub fn assert_ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "gen failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh, empty temp folder unique to this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// One tensor's tolerance in the `{"inputs", "outputs": {name: …}}` files of dit/ and sit/:
/// `tol` (|x − ref| ≤ tol·max(1, |ref|)), `atol` (+ `rtol`·|ref|), `atol_per_step` (per leading index)
/// or `exact`.
#[derive(Clone, Debug)]
pub enum OutputTol {
    Scaled(f64),
    Abs { atol: f64, rtol: f64 },
    PerStep(Vec<f64>),
    Exact,
}

pub struct OutputTolerances(serde_json::Value);

impl OutputTolerances {
    pub fn open(folder: &Path) -> OutputTolerances {
        let p = folder.join("tolerances.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        OutputTolerances(serde_json::from_str(&text).expect("tolerances.json parses"))
    }

    pub fn get(&self, name: &str) -> OutputTol {
        let e = self.0.get("outputs").and_then(|o| o.get(name)).unwrap_or_else(|| panic!("no tolerance for {name}"));
        let num = |k: &str| e.get(k).and_then(|v| v.as_f64());
        if let Some(steps) = e.get("atol_per_step").and_then(|v| v.as_array()) {
            return OutputTol::PerStep(steps.iter().map(|v| v.as_f64().expect("a number")).collect());
        }
        if let Some(t) = num("tol") {
            return OutputTol::Scaled(t);
        }
        if e.get("exact").and_then(|v| v.as_bool()) == Some(true)
            || e.get("kind").and_then(|v| v.as_str()) == Some("exact")
        {
            return OutputTol::Exact;
        }
        match (num("atol"), num("rtol")) {
            (None, None) => panic!("{name}: no tolerance given"),
            (a, r) => OutputTol::Abs { atol: a.unwrap_or(0.0), rtol: r.unwrap_or(0.0) },
        }
    }

    /// Asserts `got` matches `want` within `name`'s tolerance; returns the worst used fraction.
    pub fn check(&self, name: &str, got: &Tensor, want: &Tensor) -> f64 {
        match self.get(name) {
            OutputTol::Exact => {
                assert_exact(name, got, want);
                0.0
            }
            OutputTol::Abs { atol, rtol } => assert_close(name, got, want, atol, rtol),
            OutputTol::Scaled(tol) => {
                assert_eq!(got.dims(), want.dims(), "{name}: shape");
                let (g, w) = (to_f64(got), to_f64(want));
                let mut worst = 0f64;
                for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                    let lim = tol * b.abs().max(1.0);
                    let d = (a - b).abs();
                    assert!(d <= lim, "{name}: element {i}: got {a}, want {b}, |diff| {d:.3e} > {lim:.3e}");
                    worst = worst.max(d / lim);
                }
                eprintln!("parity {name}: {:.1}% of tolerance used", worst * 100.0);
                worst
            }
            OutputTol::PerStep(steps) => {
                assert_eq!(got.dims(), want.dims(), "{name}: shape");
                assert_eq!(steps.len(), got.dim(0).unwrap(), "{name}: one tolerance per step");
                let mut worst = 0f64;
                for (k, atol) in steps.iter().enumerate() {
                    let what = format!("{name}[{k}]");
                    worst = worst.max(assert_close(&what, &got.get(k).unwrap(), &want.get(k).unwrap(), *atol, 0.0));
                }
                worst
            }
        }
    }
}

/// 16 images of 64² in two class folders: bright discs ("a") and dark squares ("b").
pub fn class_images(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    let mut rng = gen_runtime::Rng::new(3);
    for (class, disc) in [("a", true), ("b", false)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..8 {
            let (cx, cy, r) = (20.0 + 24.0 * rng.uniform(), 20.0 + 24.0 * rng.uniform(), 6.0 + 10.0 * rng.uniform());
            let mut px = vec![0u8; 64 * 64 * 3];
            for y in 0..64 {
                for x in 0..64 {
                    let (dx, dy): (f64, f64) = (x as f64 - cx, y as f64 - cy);
                    let inside = if disc { dx.hypot(dy) < r } else { dx.abs().max(dy.abs()) < r };
                    let v = if inside == disc { 230 } else { 25 };
                    px[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&[v, v / 2, 255 - v]);
                }
            }
            gen_runtime::imageio::save_png(
                &root.join(class).join(format!("{i}.png")),
                &gen_runtime::imageio::RgbImage::new(64, 64, px),
            )
            .unwrap();
        }
    }
    root
}

/// The golden fixtures' tiny DiT / SiT network (`dit/` case d1, `sit/` case s1): 8×8×8 latent, patch 2,
/// width 64, 2 blocks of 4 heads, 10 classes + the null row, learned sigma.
pub fn golden_tiny_dit() -> gen_diffusion::DitConfig {
    gen_diffusion::DitConfig {
        input_size: 8,
        patch_size: 2,
        in_channels: 8,
        hidden_size: 64,
        depth: 2,
        num_heads: 4,
        mlp_ratio: 4.0,
        class_dropout_prob: 0.1,
        num_classes: 10,
        learn_sigma: true,
    }
}

/// Draws 10 samples of each `(id, name)` class from a shipped model (`gen sample --model MODEL`) into
/// `dir`, has the shipped classifier judge them (`gen eval-classes`), and returns each class's accuracy
/// in percent, in the order given. `gen` runs the binary (`&|a| run_gen!(a)`: only an integration test
/// knows its path).
pub fn shipped_class_accuracy(
    gen: &dyn Fn(&[&str]) -> std::process::Output,
    model: &str,
    classes: &[(&str, &str)],
    dir: &Path,
) -> Vec<f64> {
    let samples = dir.join(format!("{model}-samples"));
    for (class, _) in classes {
        let png = dir.join(format!("{model}-{class}.png"));
        let out = assert_ok(&gen(&[
            "sample",
            "--model",
            model,
            "--class",
            class,
            "--num-samples",
            "10",
            "--batch-size",
            "10",
            "--out",
            png.to_str().unwrap(),
            "--out-dir",
            samples.to_str().unwrap(),
            "--quiet",
        ]));
        assert!(out.contains(&format!("class {class} (")), "{out}");
    }
    let table = assert_ok(&gen(&["eval-classes", "--images", samples.to_str().unwrap(), "--quiet"]));
    classes
        .iter()
        .map(|(_, name)| {
            let row =
                table.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_else(|| panic!("{table}"));
            row.split('|').nth(3).unwrap().trim().trim_end_matches('%').parse().unwrap()
        })
        .collect()
}
