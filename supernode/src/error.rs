//! The crate's one error type. Domain errors (bad input, unknown peer or task) become 4xx
//! replies in [`crate::api`]; the rest are start-up and serving failures.

use shoal_common::TaskId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request was malformed or out of range; the message says what.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The peer has not announced itself (or expired): it should announce again.
    #[error("peer {0:?} is not known; announce it first")]
    PeerUnknown(String),
    /// The task is not known (and no layout was given to create it).
    #[error("task {0} is not known")]
    TaskUnknown(TaskId),
    /// The request contradicts the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A configuration value is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// Whether the same operation may succeed if simply tried again later. Errors that need
    /// the caller to change something (announce, send a layout, fix input) are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Serve(_))
    }

    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable() {
        assert!(!Error::bad("x").is_retryable());
        assert!(!Error::PeerUnknown("p".into()).is_retryable());
        assert!(Error::Serve(std::io::Error::other("boom")).is_retryable());
    }
}
