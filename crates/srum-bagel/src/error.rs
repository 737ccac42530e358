//! The crate's error type: every variant names the file, field or tensor to fix.

use std::path::PathBuf;

/// Everything that can go wrong reading a BAGEL checkpoint or running it.
#[derive(Debug, thiserror::Error)]
pub enum BagelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is malformed or describes an unsupported model.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The configuration file (or `<built-in>` for a config built in code).
        path: PathBuf,
        /// The offending field.
        field: String,
        /// Why it is rejected.
        message: String,
    },
    /// A weights file does not fit the model; the message lists every problem.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The safetensors file.
        path: PathBuf,
        /// Every missing, unexpected or misshapen tensor.
        message: String,
    },
    /// An input (token ids, latents, grid) does not fit the model.
    #[error("input: {0}")]
    Input(String),
}

impl BagelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<BagelError> for srum::SrumError {
    fn from(e: BagelError) -> Self {
        match e {
            BagelError::Io { path, source } => srum::SrumError::Io { path, source },
            BagelError::Checkpoint { path, message } => {
                srum::SrumError::Checkpoint { path, message }
            }
            other => srum::SrumError::Model(other.to_string()),
        }
    }
}

/// `Result` with [`BagelError`].
pub type Result<T> = std::result::Result<T, BagelError>;
