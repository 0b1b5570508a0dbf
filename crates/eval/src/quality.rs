//! Pixel-level reconstruction metrics: PSNR (on RGB, or on the Y channel as BasicSR / pyiqa's `psnry`)
//! and SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, the 'valid' window positions
//! as the reference MATLAB code), on images in [0, 1] (data range 1).

use gen_runtime::imageio::RgbImage;

/// Which pixels a metric reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// R, G and B (SSIM: the mean over the three channels).
    Rgb,
    /// BT.601 luma `Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255` (R, G, B in [0, 1]), as
    /// BasicSR's `rgb2ycbcr(y_only=True)`.
    Y,
}

/// The planes a metric compares, each [h·w] in [0, 1].
fn planes(img: &RgbImage, channels: Channels) -> Vec<Vec<f64>> {
    let px = |i: usize, c: usize| f64::from(img.data[i * 3 + c]) / 255.0;
    let n = img.width * img.height;
    match channels {
        Channels::Rgb => (0..3).map(|c| (0..n).map(|i| px(i, c)).collect()).collect(),
        Channels::Y => {
            vec![(0..n).map(|i| (16.0 + 65.481 * px(i, 0) + 128.553 * px(i, 1) + 24.966 * px(i, 2)) / 255.0).collect()]
        }
    }
}

fn same_size(a: &RgbImage, b: &RgbImage) -> Result<(), String> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(format!("images of {}×{} and {}×{} cannot be compared", a.width, a.height, b.width, b.height));
    }
    Ok(())
}

/// `10·log10(1 / MSE)` over the chosen channels; infinite for identical images.
pub fn psnr(a: &RgbImage, b: &RgbImage, channels: Channels) -> Result<f64, String> {
    same_size(a, b)?;
    let (pa, pb) = (planes(a, channels), planes(b, channels));
    let (mut sum, mut count) = (0.0, 0usize);
    for (x, y) in pa.iter().zip(&pb) {
        sum += x.iter().zip(y).map(|(u, v)| (u - v) * (u - v)).sum::<f64>();
        count += x.len();
    }
    let mse = sum / count as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (1.0 / mse).log10() })
}

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// The normalised 1-D Gaussian (the 2-D window is its outer product).
fn gaussian() -> [f64; WINDOW] {
    let mut g = [0.0; WINDOW];
    let half = (WINDOW / 2) as f64;
    for (i, v) in g.iter_mut().enumerate() {
        *v = (-((i as f64 - half).powi(2)) / (2.0 * SIGMA * SIGMA)).exp();
    }
    let total: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= total);
    g
}

/// Separable Gaussian filtering at the 'valid' positions: [h − 10, w − 10].
fn filter_valid(p: &[f64], h: usize, w: usize, g: &[f64; WINDOW]) -> Vec<f64> {
    let (ho, wo) = (h + 1 - WINDOW, w + 1 - WINDOW);
    let mut rows = vec![0.0; h * wo];
    for y in 0..h {
        for x in 0..wo {
            rows[y * wo + x] = (0..WINDOW).map(|k| p[y * w + x + k] * g[k]).sum();
        }
    }
    let mut out = vec![0.0; ho * wo];
    for y in 0..ho {
        for x in 0..wo {
            out[y * wo + x] = (0..WINDOW).map(|k| rows[(y + k) * wo + x] * g[k]).sum();
        }
    }
    out
}

/// Mean SSIM over the valid window positions (and over channels for RGB). Images must be at least 11×11.
pub fn ssim(a: &RgbImage, b: &RgbImage, channels: Channels) -> Result<f64, String> {
    same_size(a, b)?;
    let (h, w) = (a.height, a.width);
    if h < WINDOW || w < WINDOW {
        return Err(format!("SSIM needs images of at least {WINDOW}×{WINDOW}, got {w}×{h}"));
    }
    let g = gaussian();
    let (pa, pb) = (planes(a, channels), planes(b, channels));
    let mut total = 0.0;
    for (x, y) in pa.iter().zip(&pb) {
        let f = |p: &[f64]| filter_valid(p, h, w, &g);
        let (mx, my) = (f(x), f(y));
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(y).map(|(u, v)| u * v).collect();
        let (sxx, syy, sxy) = (f(&xx), f(&yy), f(&xy));
        let map = (0..mx.len()).map(|i| {
            let (m1, m2) = (mx[i], my[i]);
            let (v1, v2, cov) = (sxx[i] - m1 * m1, syy[i] - m2 * m2, sxy[i] - m1 * m2);
            ((2.0 * m1 * m2 + C1) * (2.0 * cov + C2)) / ((m1 * m1 + m2 * m2 + C1) * (v1 + v2 + C2))
        });
        total += map.sum::<f64>() / mx.len() as f64;
    }
    Ok(total / pa.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(w: usize, h: usize, v: u8) -> RgbImage {
        RgbImage::new(w, h, vec![v; w * h * 3])
    }

    fn pattern(w: usize, h: usize, seed: usize) -> RgbImage {
        RgbImage::new(w, h, (0..w * h * 3).map(|i| ((i * 7919 + seed * 104729) % 251) as u8).collect())
    }

    #[test]
    fn psnr_of_a_constant_offset_is_closed_form() {
        let (a, b) = (constant(16, 12, 100), constant(16, 12, 110));
        let want = 10.0 * (1.0 / (10.0f64 / 255.0).powi(2)).log10();
        assert!((psnr(&a, &b, Channels::Rgb).unwrap() - want).abs() < 1e-12);
        // Y: an offset of 10 in every channel moves Y by 10·(65.481 + 128.553 + 24.966)/255 / 255
        let dy: f64 = 10.0 * (65.481 + 128.553 + 24.966) / 255.0 / 255.0;
        let want_y = 10.0 * (1.0f64 / (dy * dy)).log10();
        assert!((psnr(&a, &b, Channels::Y).unwrap() - want_y).abs() < 1e-9);
        assert_eq!(psnr(&a, &a, Channels::Rgb).unwrap(), f64::INFINITY);
    }

    #[test]
    fn ssim_is_one_for_identical_images_and_closed_form_for_constants() {
        let a = pattern(20, 17, 1);
        assert!((ssim(&a, &a, Channels::Rgb).unwrap() - 1.0).abs() < 1e-12);
        // two constant images: no variance, SSIM = (2·c1·c2 + C1) / (c1² + c2² + C1)
        let (c1, c2) = (60.0 / 255.0, 200.0 / 255.0);
        let want = (2.0 * c1 * c2 + C1) / (c1 * c1 + c2 * c2 + C1);
        let got = ssim(&constant(11, 11, 60), &constant(11, 11, 200), Channels::Rgb).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        let b = pattern(20, 17, 2);
        let s = ssim(&a, &b, Channels::Rgb).unwrap();
        assert!(s < 0.5 && s > -1.0, "{s}");
        assert!((ssim(&a, &b, Channels::Rgb).unwrap() - ssim(&b, &a, Channels::Rgb).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn ssim_and_psnr_match_scikit_image() {
        // scikit-image 0.26.0 on these two patterns (values / 255): structural_similarity(a, b,
        // gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        // = -0.11416110586296259; peak_signal_noise_ratio(a, b, data_range=1.0) = 7.430149191572339
        let (a, b) = (pattern(20, 17, 1), pattern(20, 17, 2));
        let s = ssim(&a, &b, Channels::Rgb).unwrap();
        assert!((s - -0.11416110586296259).abs() < 1e-12, "{s}");
        let p = psnr(&a, &b, Channels::Rgb).unwrap();
        assert!((p - 7.430149191572339).abs() < 1e-12, "{p}");
    }

    #[test]
    fn mismatched_or_tiny_images_are_errors() {
        assert!(psnr(&constant(4, 4, 0), &constant(5, 4, 0), Channels::Rgb).unwrap_err().contains("4×4 and 5×4"));
        assert!(ssim(&constant(8, 8, 0), &constant(8, 8, 0), Channels::Y).unwrap_err().contains("at least 11×11"));
    }

    #[test]
    fn the_gaussian_window_is_normalised_and_symmetric() {
        let g = gaussian();
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!((0..WINDOW).all(|i| (g[i] - g[WINDOW - 1 - i]).abs() < 1e-18));
    }
}
