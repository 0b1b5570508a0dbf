//! What pytorch-fid does to an image before its first conv, in the same f32 arithmetic:
//! `ToTensor` (u8 / 255, a true division), `F.interpolate(size=299, mode='bilinear', align_corners=False)`
//! (no antialiasing), then `2x − 1`.

use gen_runtime::imageio::RgbImage;

/// Inception's input side.
pub const INCEPTION_SIZE: usize = 299;

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
