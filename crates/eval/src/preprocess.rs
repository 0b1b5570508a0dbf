//! What pytorch-fid does to an image before its first conv, in the same f32 arithmetic:
//! `ToTensor` (u8 / 255, a true division), `F.interpolate(size=299, mode='bilinear', align_corners=False)`
//! (no antialiasing), then `2x − 1`.

use gen_runtime::imageio::RgbImage;

/// Inception's input side.
pub const INCEPTION_SIZE: usize = 299;

/// The FID protocols' image preprocessing (both end in the FID Inception's [N, 3, 299, 299] input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// pytorch-fid: ToTensor, bilinear 299 (align_corners=False, no antialias), `2x − 1`.
    PytorchFid,
    /// clean-fid "clean": PIL float bicubic 299 per channel (antialiased), clip, `(x − 128)/128`.
    Clean,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::PytorchFid => "pytorch-fid",
            Protocol::Clean => "clean",
        }
    }

    /// The network input of one image, CHW [3, 299, 299].
    pub fn input(self, img: &RgbImage) -> Vec<f32> {
        match self {
            Protocol::PytorchFid => pytorch_fid_input(img),
            Protocol::Clean => clean_fid_input(img),
        }
    }
}

/// One axis of torch's bilinear resize: for each output index, the two source indices and weights.
/// `scale = in / out` in f32; `src = max(scale·(d + ½) − ½, 0)`; `i1 = min(i0 + 1, in − 1)`.
fn axis(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `2·bilinear299(ToTensor(img)) − 1` as CHW f32 [3, 299, 299]. Torch's CPU kernel evaluates
/// `λh0·(λw0·x00 + λw1·x01) + λh1·(λw0·x10 + λw1·x11)`; so does this.
pub fn pytorch_fid_input(img: &RgbImage) -> Vec<f32> {
    let (h, w, s) = (img.height, img.width, INCEPTION_SIZE);
    let (ys, xs) = (axis(h, s), axis(w, s));
    let mut out = vec![0f32; 3 * s * s];
    for c in 0..3 {
        let px = |y: usize, x: usize| f32::from(img.data[(y * w + x) * 3 + c]) / 255.0;
        for (oy, &(y0, y1, hy0, hy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                let top = wx0 * px(y0, x0) + wx1 * px(y0, x1);
                let bottom = wx0 * px(y1, x0) + wx1 * px(y1, x1);
                let v = hy0 * top + hy1 * bottom;
                out[(c * s + oy) * s + ox] = 2.0 * v - 1.0;
            }
        }
    }
    out
}

/// `2·ToTensor(img) − 1` without a resize, CHW (the network-only parity case).
pub fn unit_range_input(img: &RgbImage) -> Vec<f32> {
    let (h, w) = (img.height, img.width);
    let mut out = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for i in 0..h * w {
            out[c * h * w + i] = 2.0 * (f32::from(img.data[i * 3 + c]) / 255.0) - 1.0;
        }
    }
    out
}

/// Taps and normalised weights of one axis of PIL's float resample with the Keys bicubic (a = −0.5),
/// antialiased when downscaling (`ImagingResample` → `precompute_coeffs`, all in f64).
fn pil_bicubic_axis(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    fn keys(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..output)
        .map(|j| {
            let center = (j as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(input as isize).max(xmin as isize) as usize;
            let mut w: Vec<f64> = (xmin..xmax).map(|x| keys((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// One separable pass over a float plane [rows, cols] along its columns (`horizontal`) or rows; each output
/// accumulates in f64 and is stored as f32, as PIL's 32-bit float resample.
fn pil_pass(plane: &[f32], rows: usize, cols: usize, taps: &[(usize, Vec<f64>)], horizontal: bool) -> Vec<f32> {
    let (out_rows, out_cols) = if horizontal { (rows, taps.len()) } else { (taps.len(), cols) };
    let mut out = vec![0f32; out_rows * out_cols];
    for r in 0..out_rows {
        for c in 0..out_cols {
            let (start, w) = if horizontal { &taps[c] } else { &taps[r] };
            let mut acc = 0f64;
            for (k, &wk) in w.iter().enumerate() {
                let v = if horizontal { plane[r * cols + start + k] } else { plane[(start + k) * cols + c] };
                acc += f64::from(v) * wk;
            }
            out[r * out_cols + c] = acc as f32;
        }
    }
    out
}

/// clean-fid's "clean" resize (`make_resizer("PIL", False, "bicubic", (299, 299))`): each channel as a
/// 32-bit float PIL image in [0, 255], bicubic to 299×299 (horizontal pass first; a pass whose size does
/// not change is skipped, as PIL does), clipped to [0, 255], not quantised. HWC [299, 299, 3].
pub fn clean_resize(img: &RgbImage) -> Vec<f32> {
    pil_bicubic_resize(img, INCEPTION_SIZE, INCEPTION_SIZE)
}

/// PIL's float bicubic resize (antialiased when downscaling) of each channel to `out_w × out_h`,
/// clipped to [0, 255], not quantised: HWC floats.
pub fn pil_bicubic_resize(img: &RgbImage, out_w: usize, out_h: usize) -> Vec<f32> {
    let (h, w) = (img.height, img.width);
    let (xs, ys) = (pil_bicubic_axis(w, out_w), pil_bicubic_axis(h, out_h));
    let mut out = vec![0f32; out_w * out_h * 3];
    for c in 0..3 {
        let mut plane: Vec<f32> = (0..h * w).map(|i| f32::from(img.data[i * 3 + c])).collect();
        let mut cols = w;
        if w != out_w {
            plane = pil_pass(&plane, h, w, &xs, true);
            cols = out_w;
        }
        if h != out_h {
            plane = pil_pass(&plane, h, cols, &ys, false);
        }
        for (i, v) in plane.iter().enumerate() {
            out[i * 3 + c] = v.clamp(0.0, 255.0);
        }
    }
    out
}

/// clean-fid's network input: the clean resize, transposed to CHW, then `(x − 128) / 128`.
pub fn clean_fid_input(img: &RgbImage) -> Vec<f32> {
    let hwc = clean_resize(img);
    let s = INCEPTION_SIZE;
    let mut out = vec![0f32; 3 * s * s];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * s * s + i] = (px[c] - 128.0) / 128.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_299_image_passes_through_unchanged() {
        let data: Vec<u8> = (0..299 * 299 * 3).map(|i| (i * 31 % 256) as u8).collect();
        let img = RgbImage::new(299, 299, data.clone());
        let x = pytorch_fid_input(&img);
        for (i, &v) in data.iter().enumerate().step_by(97) {
            let (p, c) = (i / 3, i % 3);
            assert_eq!(x[c * 299 * 299 + p], 2.0 * (f32::from(v) / 255.0) - 1.0);
        }
    }

    #[test]
    fn axis_weights_sum_to_one_and_stay_in_bounds() {
        for (i, o) in [(32, 299), (400, 299), (17, 299), (1, 299)] {
            for (a, b, l0, l1) in axis(i, o) {
                assert!(a < i && b < i && (l0 + l1 - 1.0).abs() < 1e-6);
            }
        }
    }
}
