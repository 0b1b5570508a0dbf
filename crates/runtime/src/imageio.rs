//! Image I/O and the official VQGAN-LC evaluation preprocessing, bit-exact.
//!
//! Official (`eval_reconstruction.ImageNetDataset.__getitem__`): PIL `convert("RGB")` (gray replicated,
//! alpha dropped without compositing) → albumentations `SmallestMaxSize(S)` (OpenCV `INTER_LINEAR`, a
//! fixed-point kernel we reproduce exactly) → `CenterCrop(S, S)` → `x/127.5 − 1` computed in f64 then cast.
//! Output: clamp to [−1, 1], `((x+1)·127.5)/255·255` in f32, truncated to u8 (as `np.uint8` does).

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// An 8-bit RGB image, HWC row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3);
        RgbImage { width, height, data }
    }
    fn px(&self, y: usize, x: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + c]
    }
}

/// What the file held before conversion to RGB (the official code converts anything that is not RGB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceMode {
    Rgb,
    Converted,
}

/// Reads an image file and converts it to 8-bit RGB like PIL's `convert("RGB")`.
pub fn load_rgb(path: &Path) -> Result<(RgbImage, SourceMode)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::format(path, format!("not a readable image (PNG or JPEG expected): {e}")))?;
    let mode = match img {
        image::DynamicImage::ImageRgb8(_) => SourceMode::Rgb,
        _ => SourceMode::Converted,
    };
    // `to_rgb8` replicates gray and drops alpha without compositing, as PIL does.
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has zero width or height"));
    }
    Ok((RgbImage::new(w, h, rgb.into_raw()), mode))
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| Error::Invalid(format!("{}: image buffer has the wrong size", path.display())))?;
    let mut bytes = Vec::new();
    buf.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    crate::io::write_atomic(path, &bytes)
}

/// Python 3 `round` (half to even).
fn py3round(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - x.signum() } else { r };
    r.max(0.0) as usize
}

/// albumentations `SmallestMaxSize(max_size=s)`: scales so the shorter side is `s` (up or down).
pub fn resize_shorter_side(img: &RgbImage, s: usize) -> RgbImage {
    let scale = s as f64 / img.width.min(img.height) as f64;
    if scale == 1.0 {
        return img.clone();
    }
    let new_h = py3round(img.height as f64 * scale).max(1);
    let new_w = py3round(img.width as f64 * scale).max(1);
    cv2_resize_linear(img, new_w, new_h)
}

/// albumentations `CenterCrop(s, s)` with floor offsets. The image must be at least `s` on each side.
pub fn center_crop(img: &RgbImage, s: usize) -> RgbImage {
    let (y1, x1) = ((img.height - s) / 2, (img.width - s) / 2);
    let mut data = Vec::with_capacity(s * s * 3);
    for y in y1..y1 + s {
        let row = (y * img.width + x1) * 3;
        data.extend_from_slice(&img.data[row..row + s * 3]);
    }
    RgbImage::new(s, s, data)
}

const COEF_BITS: i32 = 11; // OpenCV INTER_RESIZE_COEF_BITS: coefficients sum to 2048

/// Per output coordinate: source index and the two fixed-point weights, as OpenCV computes them.
fn linear_taps(dsize: usize, ssize: usize, clamp: bool) -> Vec<(isize, i32, i32)> {
    let scale = 1.0 / (dsize as f64 / ssize as f64);
    (0..dsize)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as isize;
            f -= s as f32;
            if clamp {
                if s < 0 {
                    s = 0;
                    f = 0.0;
                }
                if s >= ssize as isize - 1 {
                    s = ssize as isize - 1;
                    f = 0.0;
                }
            }
            let a0 = ((1.0f32 - f) * (1 << COEF_BITS) as f32).round_ties_even() as i32;
            let a1 = (f * (1 << COEF_BITS) as f32).round_ties_even() as i32;
            (s, a0, a1)
        })
        .collect()
}

/// `cv2.resize(img, (w, h), interpolation=INTER_LINEAR)` on u8, bit-exact (fixed point, 11-bit weights).
/// OpenCV turns an exact 2× downscale on both axes into `INTER_AREA`, a rounded 2×2 mean; so do we.
pub fn cv2_resize_linear(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    if img.width == 2 * w && img.height == 2 * h {
        return area_halve(img);
    }
    let xt = linear_taps(w, img.width, true);
    let yt = linear_taps(h, img.height, false); // y is not clamped; rows are clipped when fetched
    let last_x = img.width - 1;
    let hrow = |sy: isize, x: usize, c: usize| -> i32 {
        let y = sy.clamp(0, img.height as isize - 1) as usize;
        let (s, a0, a1) = xt[x];
        let s = s as usize;
        img.px(y, s, c) as i32 * a0 + img.px(y, (s + 1).min(last_x), c) as i32 * a1
    };
    let mut data = Vec::with_capacity(w * h * 3);
    for &(sy, b0, b1) in &yt {
        for x in 0..w {
            for c in 0..3 {
                let (t0, t1) = (hrow(sy, x, c), hrow(sy + 1, x, c));
                let v = (((b0 * (t0 >> 4)) >> 16) + ((b1 * (t1 >> 4)) >> 16) + 2) >> 2;
                data.push(v.clamp(0, 255) as u8);
            }
        }
    }
    RgbImage::new(w, h, data)
}

fn area_halve(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width / 2, img.height / 2);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let s = img.px(2 * y, 2 * x, c) as u32
                    + img.px(2 * y, 2 * x + 1, c) as u32
                    + img.px(2 * y + 1, 2 * x, c) as u32
                    + img.px(2 * y + 1, 2 * x + 1, c) as u32;
                data.push(((s + 2) >> 2) as u8);
            }
        }
    }
    RgbImage::new(w, h, data)
}

/// Resize the shorter side to `s`, then centre-crop `s × s`: the official evaluation preprocessing.
pub fn preprocess(img: &RgbImage, s: usize) -> RgbImage {
    center_crop(&resize_shorter_side(img, s), s)
}

/// HWC u8 → [3, H, W] f32 in [−1, 1]; `x/127.5 − 1` in f64 then cast, as the official numpy code does.
pub fn to_tensor(img: &RgbImage, dev: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width, img.height);
    let mut v = vec![0f32; 3 * h * w];
    for (i, &b) in img.data.iter().enumerate() {
        let (pix, c) = (i / 3, i % 3);
        v[c * h * w + pix] = (b as f64 / 127.5 - 1.0) as f32;
    }
    Tensor::from_vec(v, (3, h, w), dev)
}

/// [3, H, W] float → u8 RGB with the official denormalisation: clamp to [−1, 1], `(x+1)·127.5`, `/255`,
/// `·255`, each in f32, then truncation toward zero.
pub fn from_tensor(t: &Tensor) -> candle_core::Result<RgbImage> {
    let (c, h, w) = t.dims3()?;
    if c != 3 {
        candle_core::bail!("expected a [3, H, W] image tensor, got {:?}", t.dims());
    }
    let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut data = vec![0u8; h * w * 3];
    for ch in 0..3 {
        for pix in 0..h * w {
            let x = v[ch * h * w + pix].clamp(-1.0, 1.0);
            let a = (x + 1.0) * 127.5f32;
            let a = a / 255.0f32;
            let a = a * 255.0f32;
            data[pix * 3 + ch] = a as u8; // truncation, like np.uint8 of a non-negative float
        }
    }
    Ok(RgbImage::new(w, h, data))
}

/// Tiles equally sized images into rows of `cols`, with a 2-pixel gray gutter (for sample grids).
pub fn grid(images: &[RgbImage], cols: usize) -> Option<RgbImage> {
    let first = images.first()?;
    let (w, h, gap) = (first.width, first.height, 2);
    if cols == 0 || images.iter().any(|i| i.width != w || i.height != h) {
        return None;
    }
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap);
    let mut data = vec![128u8; gw * gh * 3];
    for (k, img) in images.iter().enumerate() {
        let (x0, y0) = (gap + (k % cols) * (w + gap), gap + (k / cols) * (h + gap));
        for y in 0..h {
            let dst = ((y0 + y) * gw + x0) * 3;
            data[dst..dst + w * 3].copy_from_slice(&img.data[y * w * 3..(y + 1) * w * 3]);
        }
    }
    Some(RgbImage::new(gw, gh, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_in_rows_with_gutters() {
        let a = RgbImage::new(2, 2, vec![255; 12]);
        let b = RgbImage::new(2, 2, vec![0; 12]);
        let g = grid(&[a.clone(), b.clone(), a], 2).unwrap();
        assert_eq!((g.width, g.height), (2 * 2 + 3 * 2, 2 * 2 + 3 * 2));
        assert_eq!(g.px(2, 2, 0), 255); // first image
        assert_eq!(g.px(2, 6, 0), 0); // second image, same row
        assert_eq!(g.px(0, 0, 0), 128); // gutter
        assert!(grid(&[RgbImage::new(1, 1, vec![0; 3]), RgbImage::new(2, 1, vec![0; 6])], 2).is_none());
    }

    #[test]
    fn py3round_is_half_even() {
        assert_eq!(py3round(2.5), 2);
        assert_eq!(py3round(3.5), 4);
        assert_eq!(py3round(101.6), 102);
    }

    #[test]
    fn center_crop_takes_floor_offsets() {
        let img = RgbImage::new(5, 3, (0..45).map(|i| i as u8).collect());
        let c = center_crop(&img, 3);
        assert_eq!(c.px(0, 0, 0), img.px(0, 1, 0));
    }

    #[test]
    fn identity_resize_is_exact() {
        let img = RgbImage::new(4, 4, (0..48).map(|i| (i * 5) as u8).collect());
        assert_eq!(cv2_resize_linear(&img, 4, 4), img);
    }

    #[test]
    fn normalisation_round_trips_every_byte() {
        let data: Vec<u8> = (0..=255u8).flat_map(|b| [b, b, b]).collect();
        let img = RgbImage::new(256, 1, data);
        let t = to_tensor(&img, &Device::Cpu).unwrap();
        let back = from_tensor(&t).unwrap();
        // truncation may lose one level; never more
        for (a, b) in img.data.iter().zip(&back.data) {
            assert!(a.abs_diff(*b) <= 1);
        }
    }
}
