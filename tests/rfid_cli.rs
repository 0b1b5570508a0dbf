//! `gen rfid` end to end: its rFID equals `gen fid` between the inputs and `gen reconstruct`'s outputs,
//! its PSNR / SSIM equal the metrics of those files, its utilisation counts the codes `gen encode` gives,
//! and its LPIPS equals the library's on the same tensors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Tensor;
use gen_eval::quality::{psnr, ssim, Channels};
use gen_runtime::imageio::{self, RgbImage};
use gen_tests::{detinit, fixture};

fn gen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gen")).args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The value cell of the table row starting with `label`.
fn row<'a>(table: &'a str, label: &str) -> &'a str {
    let line =
        table.lines().find(|l| l.starts_with(&format!("| {label}"))).unwrap_or_else(|| panic!("no {label} in {table}"));
    line.split('|').nth(2).unwrap().trim()
}

#[test]
fn rfid_table_agrees_with_fid_reconstruct_and_the_metric_functions() {
    let (Some(tok), Some(fid), Some(lp)) = (fixture("tokenizer"), fixture("fid"), fixture("lpips")) else { return };
    let dir = std::env::temp_dir().join(format!("gen-rfid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("in")).unwrap();
    // ten 64×64 inputs (f16-tiny's resolution, so the official preprocessing keeps them as they are)
    for i in 0..10 {
        let (a, _) = imageio::load_rgb(&fid.join(format!("A/{i:03}.png"))).unwrap();
        let mut data = vec![0u8; 64 * 64 * 3];
        for y in 0..64 {
            for x in 0..64 {
                let src = ((y % 32) * 32 + (x % 32)) * 3;
                data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&a.data[src..src + 3]);
            }
        }
        imageio::save_png(&dir.join(format!("in/{i:02}.png")), &RgbImage::new(64, 64, data)).unwrap();
    }
    let inception = dir.join("inception.safetensors");
    let w: Vec<(String, Tensor)> = detinit::build(&fid.join("weights_spec.json")).into_iter().collect();
    gen_runtime::io::save_safetensors(&inception, &w, None).unwrap();
    let vgg = dir.join("vgg.safetensors");
    let w: Vec<(String, Tensor)> = detinit::build(&lp.join("weights_spec.json")).into_iter().collect();
    gen_runtime::io::save_safetensors(&vgg, &w, None).unwrap();
    let ckpt = tok.join("f16-tiny/checkpoint.pth");
    let table = ok(gen(&[
        "rfid",
        "--quiet",
        "--tokenizer",
        s(&ckpt),
        "--data",
        s(&dir.join("in")),
        "--inception",
        s(&inception),
        "--lpips-vgg",
        s(&vgg),
        "--lpips-lin",
        s(&lp.join("lin.safetensors")),
        "--batch-size",
        "4",
    ]));
    eprintln!("{table}");
    // the same reconstructions through the other commands
    let inputs: Vec<PathBuf> = (0..10).map(|i| dir.join(format!("in/{i:02}.png"))).collect();
    let rec = dir.join("rec");
    let mut args = vec!["reconstruct", "--quiet", "--tokenizer", s(&ckpt), "--out", s(&rec)];
    args.extend(inputs.iter().map(|p| s(p)));
    ok(gen(&args));
    let fid_out = ok(gen(&[
        "fid",
        "--quiet",
        s(&dir.join("in")),
        s(&dir.join("rec")),
        "--mode",
        "clean",
        "--inception",
        s(&inception),
        "--digits",
        "4",
    ]));
    let fid_value = fid_out.split_whitespace().nth(1).unwrap();
    assert_eq!(row(&table, "rFID (clean"), fid_value, "rFID vs gen fid: {fid_out}");
    // PSNR and SSIM of the written files
    let (mut p, mut py, mut ss) = (0.0, 0.0, 0.0);
    for i in 0..10 {
        let a = imageio::load_rgb(&dir.join(format!("in/{i:02}.png"))).unwrap().0;
        let b = imageio::load_rgb(&dir.join(format!("rec/{i:02}.png"))).unwrap().0;
        p += psnr(&a, &b, Channels::Rgb).unwrap() / 10.0;
        py += psnr(&a, &b, Channels::Y).unwrap() / 10.0;
        ss += ssim(&a, &b, Channels::Rgb).unwrap() / 10.0;
    }
    let psnr_row = row(&table, "PSNR");
    assert!(psnr_row.starts_with(&format!("{p:.4} / {py:.4}")), "{psnr_row} vs {p:.4} / {py:.4}");
    assert!(row(&table, "SSIM").starts_with(&format!("{ss:.4}")), "{} vs {ss:.4}", row(&table, "SSIM"));
    // utilisation: the distinct codes of `gen encode`
    let mut args = vec!["encode", "--quiet", "--tokenizer", s(&ckpt), "--print"];
    args.extend(inputs.iter().map(|p| s(p)));
    let printed = ok(gen(&args));
    let codes: std::collections::HashSet<&str> =
        printed.lines().flat_map(|l| l.split('\t').nth(1).unwrap().split_whitespace()).collect();
    assert!(row(&table, "codebook utilisation").contains(&format!("({} of 1000 codes)", codes.len())));
    // LPIPS: a positive number, the library's value on the inputs and clamped reconstructions
    let lpips: f64 = row(&table, "LPIPS").parse().unwrap();
    assert!(lpips > 0.0 && lpips.is_finite(), "{lpips}");
    assert!(row(&table, "images").starts_with("10 at 64"));
    // rFID in the Fashion-MNIST classifier's space equals `gen fid --features fmnist-classifier` on the
    // same inputs and reconstructions
    let table = ok(gen(&[
        "rfid",
        "--quiet",
        "--tokenizer",
        s(&ckpt),
        "--data",
        s(&dir.join("in")),
        "--features",
        "fmnist-classifier",
        "--batch-size",
        "4",
    ]));
    let fid_out = ok(gen(&[
        "fid",
        "--quiet",
        s(&dir.join("in")),
        s(&dir.join("rec")),
        "--features",
        "fmnist-classifier",
        "--digits",
        "4",
    ]));
    assert_eq!(row(&table, "rFID (fmnist-classifier 128-d)"), fid_out.split_whitespace().nth(1).unwrap(), "{fid_out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rfid_refuses_bad_data_specs() {
    let Some(tok) = fixture("tokenizer") else { return };
    let ckpt = tok.join("f16-tiny/checkpoint.pth");
    let o = gen(&["rfid", "--tokenizer", s(&ckpt), "--data", "fmnist:validation"]);
    gen_tests::assert_one_line_error(&o, &["fmnist:validation", "fmnist:test or fmnist:train"]);
    let o = gen(&["rfid", "--tokenizer", s(&ckpt), "--data", "/nonexistent/images"]);
    gen_tests::assert_one_line_error(&o, &["/nonexistent/images"]);
    let o = gen(&[
        "rfid",
        "--tokenizer",
        s(&ckpt),
        "--data",
        "fmnist:test",
        "--count",
        "5",
        "--inception",
        "/nonexistent/w.pth",
    ]);
    gen_tests::assert_one_line_error(&o, &["/nonexistent/w.pth", "pt_inception-2015-12-05-6726825d.pth"]);
}
