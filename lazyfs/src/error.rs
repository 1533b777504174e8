//! The one error type of the library. Every variant carries what a user needs to find the
//! problem (a path, a blob, a chunk, an index position) because most of them end up as the
//! only line `check` or `convert` prints.

use shoal_common::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The index blob does not parse or breaks a structural rule. `at` names the section and
    /// item (e.g. `entry #12 (usr/bin)`, `chunk #7`) so a corrupt index points at the culprit.
    #[error("invalid index: {at}: {reason}")]
    Index { at: String, reason: String },

    /// A chunk's stored bytes are wrong: bad zstd frame, wrong size or wrong digest.
    #[error("chunk #{chunk} (blob {blob} offset {offset}, file {path}): {reason}")]
    Chunk {
        chunk: u32,
        blob: Digest,
        offset: u64,
        path: String,
        reason: String,
    },

    /// A whole blob does not match the digest it is named by, or is missing.
    #[error("blob {digest}: {reason}")]
    Blob { digest: Digest, reason: String },

    /// An entry of a source layer (or source directory) cannot be applied.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Layer {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A manifest, image index or config is not what we expect.
    #[error("manifest {what}: {reason}")]
    Manifest { what: String, reason: String },

    /// An image reference (`oci:DIR:TAG`, `HOST/REPO:TAG`, `dir:PATH`) does not parse.
    #[error("reference {input:?}: {reason}")]
    Reference { input: String, reason: String },

    /// The registry answered with an unexpected HTTP status.
    #[error("registry {url}: HTTP {status}: {message}")]
    Registry {
        url: String,
        status: u16,
        message: String,
    },

    /// The registry could not be reached or the transfer broke.
    #[error("registry {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The registry client failed in a way the variants above do not name (a token
    /// endpoint, a malformed answer, a body cut short).
    #[error(transparent)]
    Client(shoal_registry::Error),

    /// A chunk range could not be fetched from one source (peer mirror or registry) of a
    /// mount. `retryable` says whether asking the same source again may help.
    #[error("fetching {what} from {from}: {reason}")]
    Fetch {
        what: String,
        from: String,
        reason: String,
        retryable: bool,
    },

    /// A fetch did not finish within the mount's `--timeout`.
    #[error("fetching {what} from {from}: no answer within {after:?}")]
    Timeout {
        what: String,
        from: String,
        after: std::time::Duration,
    },

    /// Mounting, serving or unmounting the FUSE filesystem failed.
    #[error("mount {mountpoint}: {context}: {source}")]
    Mount {
        mountpoint: String,
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A snapshot operation containerd asked the snapshotter for cannot be done. `code`
    /// tells containerd how to read it (an `AlreadyExists` is how a remote snapshotter
    /// says "this layer needs no download").
    #[error("snapshot {key:?}: {reason}")]
    Snapshot {
        key: String,
        code: SnapshotCode,
        reason: String,
    },

    /// A caller asked for something this build cannot do (bad option values, unsupported
    /// source kinds).
    #[error("{0}")]
    Invalid(String),
}

/// How containerd should read a [`Error::Snapshot`]: these map one to one onto the gRPC
/// codes containerd turns back into its own error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotCode {
    NotFound,
    AlreadyExists,
    /// The snapshot exists but is in the wrong state (not committed, has children).
    FailedPrecondition,
    InvalidArgument,
}

impl Error {
    pub fn snapshot(key: impl Into<String>, code: SnapshotCode, reason: impl Into<String>) -> Self {
        Error::Snapshot {
            key: key.into(),
            code,
            reason: reason.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn index(at: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Index {
            at: at.into(),
            reason: reason.into(),
        }
    }

    pub fn layer(
        layer: impl Into<String>,
        entry: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Layer {
            layer: layer.into(),
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    pub fn manifest(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Manifest {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A write that failed for lack of space (`ENOSPC`, or a quota: `EDQUOT`). By kind, not
    /// errno: wrappers such as `tempfile`'s keep only the kind.
    pub fn is_out_of_space(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        matches!(self, Error::Io { source, .. } if matches!(source.kind(), StorageFull | QuotaExceeded))
    }

    /// Whether trying again later may succeed: network trouble and server-side failures are
    /// transient; corrupt data and bad input are not.
    pub fn is_retryable(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                Interrupted
                    | TimedOut
                    | WouldBlock
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
            ),
            Error::Http { source, .. } => {
                source.is_timeout()
                    || source.is_connect()
                    || source.is_request()
                    || source.is_body()
            }
            Error::Registry { status, .. } => *status == 429 || *status >= 500,
            Error::Client(e) => e.retryable(),
            Error::Fetch { retryable, .. } => *retryable,
            Error::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// `e` and every error under it, joined by ": ". HTTP clients put the useful part (a
/// connection closed early, a body cut short) in the causes, not in the top message.
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Attach a context string to `io::Result`s without a closure at every call site.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let timeout = Error::io("x", std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(timeout.is_retryable());
        let notfound = Error::io("x", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!notfound.is_retryable());
        let busy = Error::Registry {
            url: "u".into(),
            status: 503,
            message: String::new(),
        };
        assert!(busy.is_retryable());
        assert!(!Error::index("entry #1", "bad").is_retryable());
    }

    #[test]
    fn causes_are_spelled_out() {
        let inner = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "body cut short");
        let outer = Error::io("reading blob", inner);
        assert_eq!(with_causes(&outer), "reading blob: body cut short");
    }
}
