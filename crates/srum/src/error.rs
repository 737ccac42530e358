//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `srum`, with enough context to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum SrumError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSON-lines file is malformed.
    #[error("{path}:{line}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A configuration value is impossible.
    #[error("invalid config field `{field}`: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        message: String,
    },
    /// Tensors or inputs of incompatible shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Input data had nothing usable; the message names the file and the first problems.
    #[error("{0}")]
    Data(String),
    /// A checkpoint could not be saved or restored.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Training cannot go on (too many non-finite steps in a row, ...).
    #[error("training: {0}")]
    Training(String),
    /// The model refused an input (unknown word, bad image, ...).
    #[error("model: {0}")]
    Model(String),
}

impl SrumError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `field`.
    pub fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            field,
            message: message.into(),
        }
    }
}

/// What is wrong with one line of a record file, naming the field; the
/// [`RecordReader`](crate::data::RecordReader) adds the file and line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LineError(pub String);

impl From<String> for LineError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for LineError {
    fn from(message: &str) -> Self {
        Self(message.into())
    }
}

/// `Result` with [`SrumError`].
pub type Result<T, E = SrumError> = std::result::Result<T, E>;
