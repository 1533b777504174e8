//! Where a mount fetches chunk bytes from: range reads over the one registry client, either
//! through the local peer's registry mirror (`PEER/v2/<repo>/blobs/<digest>?ns=<host>`) or
//! from the registry itself. Every request has a deadline; a source that just failed is
//! skipped for a short while so a dead peer costs one timeout, not one per read.
//!
//! The client does not retry here: the fetcher retries across sources itself, within the
//! mount's `--retries`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use shoal_common::registry::credentials_from_env;
use shoal_common::Digest;
use shoal_registry::{Auth, Client, ClientOptions, Repository, RetryPolicy};

use crate::error::{with_causes, Error, Result};
use crate::registry::client_error;

/// How long a failed source is skipped before it is tried again.
const BACKOFF: Duration = Duration::from_secs(3);

/// The two kinds of source, also the `source` label of the fetch metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Peer,
    Registry,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Peer => "peer",
            SourceKind::Registry => "registry",
        }
    }
}

pub struct HttpSource {
    pub kind: SourceKind,
    repo: Repository,
    timeout: Duration,
    started: Instant,
    /// Milliseconds since `started` until which the source is considered down.
    down_until: AtomicU64,
}

impl HttpSource {
    /// The peer's mirror endpoint for `repo` of registry `host`.
    pub fn peer(peer: &str, host: &str, repo: &str, timeout: Duration) -> Result<Self> {
        let client = client(timeout, Vec::new())?;
        let repo = Repository::through_mirror(client, peer, host, repo);
        Ok(Self::new(SourceKind::Peer, repo, timeout))
    }

    /// The registry itself (`http` when `insecure`), with the user's credentials from the
    /// environment if set.
    pub fn registry(host: &str, repo: &str, insecure: bool, timeout: Duration) -> Result<Self> {
        let insecure = if insecure {
            vec![host.to_owned()]
        } else {
            Vec::new()
        };
        let auth = match credentials_from_env() {
            Some((u, p)) => Auth::basic(&u, &p).map_err(client_error)?,
            None => Auth::Anonymous,
        };
        let repo = Repository::new(client(timeout, insecure)?, host, repo, auth);
        Ok(Self::new(SourceKind::Registry, repo, timeout))
    }

    fn new(kind: SourceKind, repo: Repository, timeout: Duration) -> Self {
        HttpSource {
            kind,
            repo,
            timeout,
            started: Instant::now(),
            down_until: AtomicU64::new(0),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} ({}blobs/)", self.kind.label(), self.repo.describe())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the source failed recently and should be skipped.
    pub fn is_down(&self) -> bool {
        self.now_ms() < self.down_until.load(Ordering::Relaxed)
    }

    pub fn mark_down(&self) {
        let until = self.now_ms() + BACKOFF.as_millis() as u64;
        self.down_until.store(until, Ordering::Relaxed);
    }

    pub fn mark_up(&self) {
        self.down_until.store(0, Ordering::Relaxed);
    }

    /// Exactly `len` bytes at `offset` of blob `digest`, within the timeout.
    pub async fn range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        let what = format!("{digest} bytes {offset}+{len}");
        match tokio::time::timeout(self.timeout, self.repo.blob_range(digest, offset, len)).await {
            Ok(r) => r.map_err(|e| self.fetch_error(e, &what)),
            Err(_) => Err(Error::Timeout {
                what,
                from: self.describe(),
                after: self.timeout,
            }),
        }
    }

    /// Connection failures stay HTTP errors (the fetcher marks the source down); a refusal
    /// or a body cut short is this fetch's failure.
    fn fetch_error(&self, e: shoal_registry::Error, what: &str) -> Error {
        let fail = |reason: String, retryable: bool| Error::Fetch {
            what: what.to_string(),
            from: self.describe(),
            reason,
            retryable,
        };
        match e {
            shoal_registry::Error::Transport { source, .. }
                if source.is_body() || source.is_decode() =>
            {
                fail(with_causes(&source), true)
            }
            shoal_registry::Error::Status { status, .. } => {
                let retryable = status >= 500 || status == 429;
                let s = StatusCode::from_u16(status).map_or(status.to_string(), |s| s.to_string());
                fail(format!("HTTP {s}"), retryable)
            }
            shoal_registry::Error::Short { got, want, .. } => {
                fail(format!("short body: {got} of {want} bytes"), true)
            }
            e @ shoal_registry::Error::Transport { .. } => client_error(e),
            e => {
                let retryable = e.retryable();
                fail(e.to_string(), retryable)
            }
        }
    }
}

/// A client for one source: its own connection pool, the mount's timeout to connect, no
/// proxy (the peer is local), no retries of its own.
fn client(timeout: Duration, insecure: Vec<String>) -> Result<Arc<Client>> {
    Client::new(ClientOptions {
        connect_timeout: timeout,
        read_timeout: None,
        timeout: None,
        user_agent: concat!("shoal-lazyfs/", env!("CARGO_PKG_VERSION")).to_owned(),
        no_proxy: true,
        insecure,
        retry: RetryPolicy::none(),
    })
    .map(Arc::new)
    .map_err(client_error)
}
