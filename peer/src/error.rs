//! The peer library's one error type. Every variant carries what was being worked on (task,
//! piece, peer, path) so a log line is enough to act on, and says whether retrying elsewhere
//! or later can help.

use std::path::PathBuf;

use shoal_common::{Digest, ParseError, TaskId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),

    /// The configuration (file, environment, flags) is wrong: the operator must change it.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Something the peer sets up or keeps for itself failed while it runs (a listener, its
    /// HTTP client, a cache file that holds another task): neither the configuration's nor a
    /// client's fault, so never a 4xx.
    #[error("{what}: {message}")]
    Runtime { what: String, message: String },

    #[error("bad request: {0}")]
    BadRequest(String),

    #[error("task {task} is not in the cache")]
    TaskNotFound { task: TaskId },

    #[error("task {task}: bytes {start}-{end} are not held here")]
    RangeNotHeld { task: TaskId, start: u64, end: u64 },

    #[error("task {task}: range {range:?} starts past the end ({length} bytes)")]
    RangeNotSatisfiable {
        task: TaskId,
        range: String,
        length: u64,
    },

    #[error("storage {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("task {task} needs {needed} bytes but the cache quota is {quota} bytes and {pinned} bytes are in use")]
    CacheFull {
        task: TaskId,
        needed: u64,
        quota: u64,
        pinned: u64,
    },

    /// The data directory's filesystem has no room for this task's bytes (`ENOSPC`, or the
    /// owner's quota: `EDQUOT`), even after evicting the cached blobs nobody is using. Not
    /// retryable for this download: fetching the same bytes again cannot make room. The
    /// message leaves the path out (clients see it); the log line that reports it has it.
    #[error(
        "task {task}: the peer's disk is full: no room for {needed} more bytes even after \
         evicting unused cached blobs"
    )]
    DiskFull {
        task: TaskId,
        /// Where the write or reservation failed (for the log, not the client).
        path: PathBuf,
        needed: u64,
    },

    #[error("origin {url}: {message}")]
    Origin {
        url: String,
        message: String,
        /// HTTP status from the origin, when it answered.
        status: Option<u16>,
        /// How long the origin asked us to wait (`Retry-After` on a 429 or 503).
        retry_after: Option<std::time::Duration>,
    },

    #[error("peer {peer}: {message}")]
    Parent {
        peer: String,
        message: String,
        /// How to report it to the supernode.
        reason: shoal_common::api::FailReason,
        /// What this download makes of it, beyond the reason.
        fault: ParentFault,
    },

    #[error("task {task} piece {piece}: expected {expected}, got {actual}")]
    PieceDigest {
        task: TaskId,
        piece: u32,
        expected: Digest,
        actual: Digest,
    },

    #[error("task {task}: whole blob has digest {actual}, expected {expected}")]
    BlobDigest {
        task: TaskId,
        expected: Digest,
        actual: Digest,
    },

    #[error("supernode {url}: {message}")]
    Supernode {
        url: String,
        message: String,
        /// The supernode forgot us (restart, expiry): announce again.
        unknown_peer: bool,
    },

    #[error("task {task}: download failed: {message}")]
    DownloadFailed { task: TaskId, message: String },

    #[error("task {task} has layout {theirs:?} at the supernode, {ours:?} here")]
    LayoutConflict {
        task: TaskId,
        theirs: shoal_common::PieceLayout,
        ours: shoal_common::PieceLayout,
    },

    #[error("shutting down")]
    Cancelled,
}

/// How a parent failed, where the download treats cases of one reported reason differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentFault {
    Other,
    /// Its host refused the connection (nothing listens there): reported as such, and the
    /// supernode takes the parent out at once.
    Refused,
    /// It went silent while relaying a piece still arriving from its own source. Reported
    /// as an interruption (the source may be the origin, stalling for everyone, so the
    /// supernode does not count it against the parent), but this download stops asking the
    /// parent for a short while: a parent whose source stalls cuts its readers off itself
    /// within its own stall timeout, so a relay silent for twice that is most likely the
    /// parent's own doing. Pieces only avoided parents hold come from the origin meanwhile.
    RelayStalled,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn runtime(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Runtime {
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// Whether this is a storage write that failed for lack of space (`ENOSPC`, `EDQUOT`):
    /// evicting may help, fetching the bytes again does not.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::DiskFull { .. } => true,
            // By kind, not errno: wrapped I/O errors keep only the kind.
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }

    /// What a request that waited on another's download reports when that download failed:
    /// a full disk or cache keeps its kind (the client is told why, with the right status),
    /// anything else becomes [`Error::DownloadFailed`] with the message (errors are not
    /// `Clone`).
    pub fn for_waiter(&self, task: TaskId) -> Error {
        match self {
            Error::DiskFull { task, path, needed } => Error::DiskFull {
                task: *task,
                path: path.clone(),
                needed: *needed,
            },
            Error::CacheFull {
                task,
                needed,
                quota,
                pinned,
            } => Error::CacheFull {
                task: *task,
                needed: *needed,
                quota: *quota,
                pinned: *pinned,
            },
            other => Error::DownloadFailed {
                task,
                message: other.to_string(),
            },
        }
    }

    /// Could the same operation succeed if tried again (later or from another source)?
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Origin { status, .. } => match status {
                None => true,
                Some(s) => *s == 408 || *s == 429 || *s >= 500,
            },
            Error::Parent { .. }
            | Error::PieceDigest { .. }
            | Error::Supernode { .. }
            | Error::CacheFull { .. } => true,
            Error::Io { .. } | Error::DiskFull { .. } => false,
            _ => false,
        }
    }
}
