//! The runtime crate's error: configuration that cannot be read or applied, and metrics that
//! cannot be encoded.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // `error` is part of the message rather than a `source`, so that one-line reports
    // (`{e}`) and chain reports (`{e:#}`) both name the cause once.
    #[error("reading config {}: {error}", path.display())]
    ConfigRead {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    ConfigParse { path: PathBuf, message: String },
    /// A flag or environment value that parsed but cannot be applied to the config.
    #[error("applying flags and environment: {0}")]
    Flags(String),
    /// The loaded config breaks one of its own rules (the binary's `validate()`).
    #[error(transparent)]
    Invalid(Box<dyn std::error::Error + Send + Sync>),
    #[error("encoding metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// Wraps a config's validation failure, so that it exits [`crate::Exit::Config`].
    pub fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Invalid(e.into())
    }

    /// Whether trying again unchanged may succeed: only an interrupted read. A config is
    /// wrong until someone edits it, and encoding fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::ConfigRead { error, .. } if error.kind() == std::io::ErrorKind::Interrupted)
    }

    /// Whether this is the operator's configuration being wrong (exit [`crate::Exit::Config`]).
    pub fn is_config(&self) -> bool {
        !matches!(self, Error::Metrics(_))
    }
}
