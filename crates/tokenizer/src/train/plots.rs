//! The run folder's plots.

use std::path::Path;

use gen_runtime::plot::line_chart;
use gen_runtime::Result;
use gen_train::plots::{present, read_log};

/// `loss.png` (the loss terms) and `utilization.png` (codes used per log window and per epoch, %) of a
/// run folder, from its `log.jsonl`.
pub fn write_plots(root: &Path) -> Result<()> {
    let lines = read_log(root)?;
    let losses = present(&lines, &[("rec_loss", 1.0), ("q_loss", 1.0), ("g_loss", 1.0), ("d_loss", 1.0)]);
    line_chart(&root.join("loss.png"), "training losses", "step", "loss", &losses)?;
    let util = present(&lines, &[("window_utilization", 100.0), ("epoch_utilization", 100.0)]);
    line_chart(&root.join("utilization.png"), "codebook utilisation", "step", "codes used (%)", &util)
}
