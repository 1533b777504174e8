//! The runtime crate's error: configuration that cannot be read or applied, and metrics that
//! cannot be encoded.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config {}: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    ConfigParse { path: PathBuf, message: String },
    /// A flag or environment value that parsed but cannot be applied to the config.
    #[error("applying flags and environment: {0}")]
    Flags(String),
    #[error("encoding metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// Whether trying again unchanged may succeed. Nothing here is: a config is wrong until
    /// someone edits it, and encoding fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::ConfigRead { source, .. } if source.kind() == std::io::ErrorKind::Interrupted)
    }

    /// Whether this is the operator's configuration being wrong (exit [`crate::Exit::Config`]).
    pub fn is_config(&self) -> bool {
        !matches!(self, Error::Metrics(_))
    }
}
