//! The official evaluation preprocessing and denormalisation, bit for bit
//! (`../shared/golden/tokenizer/reconstruct`, fixture README §4).

use candle_core::{DType, Device, Tensor};
use gen_runtime::imageio::{self, RgbImage, SourceMode};
use gen_tests::{assert_close, assert_exact, device, fixture, load, Tolerances};

fn u8_tensor(img: &RgbImage) -> Tensor {
    Tensor::from_vec(img.data.clone(), (img.height, img.width, 3), &Device::Cpu).unwrap()
}

#[test]
fn pil_convert_rgb_replicates_gray_and_drops_alpha() {
    let Some(dir) = fixture("tokenizer/reconstruct") else { return };
    let case = load(&dir.join("case.safetensors"));
    for (name, mode) in [("rgb", SourceMode::Rgb), ("gray", SourceMode::Converted), ("rgba", SourceMode::Converted)] {
        let (img, m) = imageio::load_rgb(&dir.join(format!("input_{name}.png"))).unwrap();
        assert_eq!(m, mode, "{name}");
        let want_rgb = case[&format!("{name}.mode_is_rgb")].to_vec1::<i64>().unwrap()[0] == 1;
        assert_eq!(m == SourceMode::Rgb, want_rgb);
        assert_exact(&format!("{name}.as_rgb"), &u8_tensor(&img), &case[&format!("{name}.as_rgb")]);
    }
}

#[test]
fn resize_crop_and_normalise_match_official_exactly() {
    let Some(dir) = fixture("tokenizer/reconstruct") else { return };
    let case = load(&dir.join("case.safetensors"));
    let (img, _) = imageio::load_rgb(&dir.join("input_rgb.png")).unwrap();
    let resized = imageio::resize_shorter_side(&img, 64);
    assert_exact("resized_u8 (cv2 INTER_LINEAR)", &u8_tensor(&resized), &case["resized_u8"]);
    let cropped = imageio::center_crop(&resized, 64);
    assert_exact("cropped_u8", &u8_tensor(&cropped), &case["cropped_u8"]);
    let x = imageio::to_tensor(&cropped, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let diff = (&x - &case["x"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "x must be exactly float32(float64(u8)/127.5 - 1)");
}

#[test]
fn denormalisation_of_official_xrec_is_exact() {
    let Some(dir) = fixture("tokenizer/reconstruct") else { return };
    let case = load(&dir.join("case.safetensors"));
    let out = imageio::from_tensor(&case["xrec"].get(0).unwrap()).unwrap();
    assert_exact("output_u8", &u8_tensor(&out), &case["output_u8"]);
}

#[test]
fn reconstruct_case_indices_and_xrec_match_official() {
    let Some(root) = fixture("tokenizer") else { return };
    let dir = root.join("reconstruct");
    let case = load(&dir.join("case.safetensors"));
    let model = gen_tokenizer::load_tokenizer(
        &root.join("f16-tiny/weights.safetensors"),
        None,
        Some(64),
        DType::F32,
        &device(),
    )
    .unwrap();
    let (xrec, idx) = model.reconstruct(&case["x"].to_device(&device()).unwrap()).unwrap();
    assert_exact("reconstruct indices", &idx, &case["indices"]);
    let (atol, rtol) = Tolerances::open(&root).get("reconstruct/case.safetensors:xrec");
    assert_close("reconstruct xrec", &xrec, &case["xrec"], atol, rtol);
}

#[test]
fn cv2_exact_half_downscale_uses_area_averaging() {
    // OpenCV turns an exact 2× downscale into INTER_AREA: the rounded mean of each 2×2 block
    let img = RgbImage::new(2, 2, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 4, 4, 4]);
    let out = imageio::cv2_resize_linear(&img, 1, 1);
    assert_eq!(out.data, vec![2, 2, 2]); // (0+1+2+4+2)>>2
}
