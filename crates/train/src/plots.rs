//! Curves of a run folder's `log.jsonl`, for the PNG plots every trainer writes.

use std::path::Path;

use gen_runtime::plot::Series;
use gen_runtime::{Error, Result};

/// The log lines of a run folder (lines that do not parse are skipped: a run stopped mid-write).
pub fn read_log(root: &Path) -> Result<Vec<serde_json::Value>> {
    let log = root.join(crate::run::LOG);
    let text = std::fs::read_to_string(&log).map_err(|e| Error::io(&log, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// `key` against `step` over the log lines that have it, times `scale`; per-epoch series (names
/// starting with `epoch` or `val`) are drawn with markers, as they have one value per epoch.
pub fn series(lines: &[serde_json::Value], key: &str, scale: f64) -> Series {
    Series {
        name: key.to_string(),
        points: lines.iter().filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()? * scale))).collect(),
        markers: key.starts_with("epoch") || key.starts_with("val"),
    }
}

/// The series of `keys` that have at least one point.
pub fn present(lines: &[serde_json::Value], keys: &[(&str, f64)]) -> Vec<Series> {
    keys.iter().map(|&(k, s)| series(lines, k, s)).filter(|s| !s.points.is_empty()).collect()
}
