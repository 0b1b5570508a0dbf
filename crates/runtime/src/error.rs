//! The common error type of the library crates: each variant names the file, key, shape or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// A `.pth` pickle asked for a global that is not on the allow-list; nothing was executed.
    #[error("{path}: refusing to load: the pickle calls the global '{global}', which is not on the allow-list (only tensors, OrderedDict and argparse.Namespace are rebuilt)")]
    ForbiddenGlobal { path: PathBuf, global: String },

    #[error("{path}: missing key '{key}'{}", expected.as_ref().map(|s| format!(" (expected {s})")).unwrap_or_default())]
    MissingKey { path: PathBuf, key: String, expected: Option<String> },

    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}
