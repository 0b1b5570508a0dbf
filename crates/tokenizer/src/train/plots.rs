//! The run folder's plots.

use std::path::Path;

use gen_runtime::{Error, Result};

/// `loss.png` (the loss terms) and `utilization.png` (codes used per log window and per epoch, %) of a
/// run folder, from its `log.jsonl`.
pub fn write_plots(root: &Path) -> Result<()> {
    use gen_runtime::plot::{line_chart, Series};
    let log = root.join("log.jsonl");
    let text = std::fs::read_to_string(&log).map_err(|e| Error::io(&log, e))?;
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str, scale: f64| Series {
        name: key.to_string(),
        points: lines.iter().filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()? * scale))).collect(),
        markers: key.starts_with("epoch"),
    };
    let losses: Vec<Series> = ["rec_loss", "q_loss", "g_loss", "d_loss"]
        .iter()
        .map(|k| series(k, 1.0))
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart(&root.join("loss.png"), "training losses", "step", "loss", &losses)?;
    let util: Vec<Series> = [("window_utilization", 100.0), ("epoch_utilization", 100.0)]
        .iter()
        .map(|&(k, f)| series(k, f))
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart(&root.join("utilization.png"), "codebook utilisation", "step", "codes used (%)", &util)
}
