//! The common error type of the library crates: each variant names the file, key, shape or value at fault.
//!
//! Errors cross Candle's APIs (a `VarBuilder` backend can only return `candle_core::Error`) without losing
//! their type: [`Error::into_candle`] wraps one so that the `From<candle_core::Error>` conversion on the
//! other side gets the very same variant back. [`one_line`] is the one place that makes any error chain a
//! single line for the CLI.

use std::path::{Path, PathBuf};

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

    /// A configuration whose numbers do not fit together; `field` names the one at fault.
    #[error("{}{field}: {msg}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config { path: Option<PathBuf>, field: String, msg: String },

    #[error("{0}")]
    Invalid(String),

    #[error("{}", first_lines(.0))]
    Candle(candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: one_line_text(&msg.into()) }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { path: None, field: field.into(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// The same error, naming `path` where it names no file yet (a config checked after it was read).
    pub fn at(self, path: &Path) -> Self {
        match self {
            Error::Config { path: None, field, msg } => Error::Config { path: Some(path.to_path_buf()), field, msg },
            Error::Invalid(msg) => Error::format(path, msg),
            other => other,
        }
    }

    /// Wraps this error for a Candle API; `Error::from` on the way back out returns this very variant.
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::WrappedContext { wrapped: Box::new(self), context: String::new() }
    }
}

impl From<candle_core::Error> for Error {
    /// Unwraps our own errors that travelled through Candle, and drops Candle's backtraces.
    fn from(e: candle_core::Error) -> Self {
        match e {
            candle_core::Error::WithBacktrace { inner, .. } => Error::from(*inner),
            candle_core::Error::WrappedContext { wrapped, context } => match wrapped.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(wrapped) => Error::Candle(candle_core::Error::WrappedContext { wrapped, context }),
            },
            candle_core::Error::Context { inner, context } => match Error::from(*inner) {
                Error::Candle(inner) => Error::Candle(candle_core::Error::Context { inner: Box::new(inner), context }),
                ours => ours,
            },
            other => Error::Candle(other),
        }
    }
}

/// An error and its causes on one line: the text of each cause without Candle's backtraces, its lines
/// joined, causes already said dropped. Every message the CLI prints goes through here.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = first_lines(&c.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// A message on one line: its lines joined with "; " (a library's multi-line text, e.g. TOML errors).
pub fn one_line_text(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// The lines of an error's text before a backtrace starts (Candle appends one when RUST_BACKTRACE is set).
fn first_lines(text: &dyn std::fmt::Display) -> String {
    let text = text.to_string();
    let lines = text.lines().take_while(|l| !is_backtrace_line(l));
    lines.map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn is_backtrace_line(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("stack backtrace:")
        || t.starts_with("disabled backtrace")
        || t.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_error_survives_a_trip_through_candle() {
        let e = Error::MissingKey { path: "m.safetensors".into(), key: "w".into(), expected: Some("[3]".into()) };
        let back = Error::from(e.into_candle().bt().context("while building"));
        assert!(matches!(back, Error::MissingKey { ref key, .. } if key == "w"), "{back:?}");
    }

    #[test]
    fn candle_errors_lose_their_backtrace_and_stay_one_line() {
        let e = candle_core::Error::Msg("bad shape".into());
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(e),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let ours = Error::from(e);
        assert_eq!(one_line(&ours), "bad shape");
    }

    #[test]
    fn one_line_joins_causes_and_lines() {
        let io = std::io::Error::other("disk full\nsecond line");
        let e = Error::io("/tmp/x", io);
        let text = one_line(&e);
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("/tmp/x") && text.contains("second line"), "{text}");
    }

    #[test]
    fn config_errors_name_the_field_and_then_the_file() {
        let e = Error::config("ch", "must be positive").at(Path::new("model/config.toml"));
        assert_eq!(e.to_string(), "model/config.toml: ch: must be positive");
    }
}
