//! PNG plots for results people would rather see than read: training curves and code-usage
//! histograms. Drawn with plotters into a pixel buffer and written atomically as PNG.
//!
//! Text needs a TrueType font: `GEN_PLOT_FONT`, else DejaVu Sans where Debian's `fonts-dejavu-core`
//! puts it. Without one, plots are drawn without text (axes, lines and bars only) and a note says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::imageio::{save_png, RgbImage};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const SIZE: (usize, usize) = (960, 540);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the font once; false when none is found (plots then carry no text).
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var("GEN_PLOT_FONT").into_iter().chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // the font lives as long as the process: plotters keeps a 'static reference
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        eprintln!("note: no TrueType font found (install fonts-dejavu-core or set GEN_PLOT_FONT): plots have no text");
        false
    })
}

/// One named line of a chart; with `markers` each point is also drawn as a dot (sparse series such as
/// one value per epoch, or a single point, stay visible).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, markers: false }
    }

    pub fn with_markers(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, markers: true }
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot draw the plot: {e}"))
}

/// The range of `values` with a margin, never empty.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// A line chart of `series` (x against y) with a legend, written to `path`.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let text = font();
    let (w, h) = SIZE;
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16).x_label_area_size(if text { 48 } else { 8 }).y_label_area_size(if text { 72 } else { 8 });
        if text {
            builder.caption(title, ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(path, e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 14));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let drawn = chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(path, e))?;
            if text {
                drawn
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
        }
        if text && series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(path, e))?;
        }
        root.present().map_err(|e| err(path, e))?;
    }
    save_png(path, &RgbImage::new(w, h, buf))
}

/// A bar chart of `values` (bar i at x = i), written to `path`: e.g. code usage counts sorted from the
/// most used code down.
pub fn bar_chart(path: &Path, title: &str, x_label: &str, y_label: &str, values: &[f64]) -> Result<()> {
    let text = font();
    let (w, h) = SIZE;
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let n = values.len().max(1) as f64;
        let (_, y1) = range(values.iter().copied().chain([0.0]));
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16).x_label_area_size(if text { 48 } else { 8 }).y_label_area_size(if text { 72 } else { 8 });
        if text {
            builder.caption(title, ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(0.0..n, 0.0..y1).map_err(|e| err(path, e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 14));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.disable_x_mesh().draw().map_err(|e| err(path, e))?;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| Rectangle::new([(i as f64, 0.0), (i as f64 + 1.0, v)], COLORS[0].filled())),
            )
            .map_err(|e| err(path, e))?;
        root.present().map_err(|e| err(path, e))?;
    }
    save_png(path, &RgbImage::new(w, h, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_png_of_the_plot_size() {
        let dir = std::env::temp_dir().join(format!("gen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = vec![
            Series::line("a", (0..50).map(|i| (i as f64, (i as f64 / 7.0).sin())).collect()),
            Series::with_markers("b", vec![(0.0, 0.5), (49.0, -0.5)]),
        ];
        let line = dir.join("line.png");
        line_chart(&line, "test", "step", "value", &s).unwrap();
        let bars = dir.join("bars.png");
        bar_chart(&bars, "usage", "code", "count", &[5.0, 3.0, 2.0, 0.0]).unwrap();
        for p in [&line, &bars] {
            let (img, _) = crate::imageio::load_rgb(p).unwrap();
            assert_eq!((img.width, img.height), SIZE);
            // something other than the white background was drawn
            assert!(img.data.iter().any(|&v| v < 200));
        }
        // an empty series still draws axes
        line_chart(&dir.join("empty.png"), "empty", "x", "y", &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
