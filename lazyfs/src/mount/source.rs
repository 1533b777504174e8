//! Where a mount fetches chunk bytes from: HTTP range requests to the local peer's registry
//! mirror (`PEER/v2/<repo>/blobs/<digest>?ns=<host>`) or to the registry itself. Every
//! request has a deadline; a source that just failed is skipped for a short while so a dead
//! peer costs one timeout, not one per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use shoal_common::Digest;

use crate::error::{Error, Result};
use crate::registry::{basic, parse_challenge, token_of, Challenge};

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
    client: reqwest::Client,
    /// `BASE/v2/REPO/blobs/`
    blobs_url: String,
    /// `?ns=` for the peer mirror.
    ns: Option<String>,
    timeout: Duration,
    auth: tokio::sync::Mutex<Option<String>>,
    creds: Option<(String, String)>,
    started: Instant,
    /// Milliseconds since `started` until which the source is considered down.
    down_until: AtomicU64,
}

impl HttpSource {
    /// The peer's mirror endpoint for `repo` of registry `host`.
    pub fn peer(peer: &str, host: &str, repo: &str, timeout: Duration) -> Result<Self> {
        let base = peer.trim_end_matches('/');
        Self::new(
            SourceKind::Peer,
            format!("{base}/v2/{repo}/blobs/"),
            Some(host.to_string()),
            timeout,
        )
    }

    /// The registry itself (`http` when `insecure`; `docker.io` is `registry-1.docker.io`).
    pub fn registry(host: &str, repo: &str, insecure: bool, timeout: Duration) -> Result<Self> {
        let api_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let scheme = if insecure { "http" } else { "https" };
        Self::new(
            SourceKind::Registry,
            format!("{scheme}://{api_host}/v2/{repo}/blobs/"),
            None,
            timeout,
        )
    }

    fn new(
        kind: SourceKind,
        blobs_url: String,
        ns: Option<String>,
        timeout: Duration,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            // The whole request (headers and body) runs under `range`'s deadline.
            .connect_timeout(timeout)
            .user_agent(concat!("shoal-lazyfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http {
                url: blobs_url.clone(),
                source: e,
            })?;
        let creds = match (
            std::env::var("SHOAL_REGISTRY_USERNAME"),
            std::env::var("SHOAL_REGISTRY_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) => Some((u, p)),
            _ => None,
        };
        Ok(HttpSource {
            kind,
            client,
            blobs_url,
            ns,
            timeout,
            auth: tokio::sync::Mutex::new(None),
            creds,
            started: Instant::now(),
            down_until: AtomicU64::new(0),
        })
    }

    pub fn describe(&self) -> String {
        format!("{} ({})", self.kind.label(), self.blobs_url)
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
        match tokio::time::timeout(self.timeout, self.range_inner(digest, offset, len, &what)).await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what,
                from: self.describe(),
                after: self.timeout,
            }),
        }
    }

    async fn range_inner(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<Bytes> {
        let fail = |reason: String, retryable: bool| Error::Fetch {
            what: what.to_string(),
            from: self.describe(),
            reason,
            retryable,
        };
        if len == 0 {
            return Ok(Bytes::new());
        }
        let url = format!("{}{digest}", self.blobs_url);
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let mut resp = self.send(&url, &range).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && self.kind == SourceKind::Registry {
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if let Some(a) = self.answer(&challenge).await? {
                *self.auth.lock().await = Some(a);
                resp = self.send(&url, &range).await?;
            }
        }
        let status = resp.status();
        let whole = match status {
            StatusCode::PARTIAL_CONTENT => false,
            StatusCode::OK => true,
            s => {
                let retryable = s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS;
                return Err(fail(format!("HTTP {s}"), retryable));
            }
        };
        let body = resp.bytes().await.map_err(|e| fail(e.to_string(), true))?;
        let body = if whole {
            // The server ignored the range (allowed by HTTP): cut it out ourselves.
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            body.slice(start.min(body.len())..)
        } else {
            body
        };
        if (body.len() as u64) < len {
            return Err(fail(
                format!("short body: {} of {len} bytes", body.len()),
                true,
            ));
        }
        Ok(body.slice(..len as usize))
    }

    async fn send(&self, url: &str, range: &str) -> Result<reqwest::Response> {
        let mut req = self.client.get(url).header(RANGE, range);
        if let Some(ns) = &self.ns {
            req = req.query(&[("ns", ns)]);
        }
        if let Some(a) = self.auth.lock().await.clone() {
            req = req.header(AUTHORIZATION, a);
        }
        req.send().await.map_err(|e| Error::Http {
            url: url.to_string(),
            source: e,
        })
    }

    /// Answer a `WWW-Authenticate` challenge (bearer token or basic credentials).
    async fn answer(&self, challenge: &str) -> Result<Option<String>> {
        let (realm, query) = match parse_challenge(challenge) {
            Challenge::Basic => return Ok(self.creds.as_ref().map(|(u, p)| basic(u, p))),
            Challenge::Unsupported => return Ok(None),
            Challenge::Bearer { realm, query } => (realm, query),
        };
        let mut req = self.client.get(&realm).query(&query);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let http = |e| Error::Http {
            url: realm.clone(),
            source: e,
        };
        let body: serde_json::Value = req
            .send()
            .await
            .map_err(http)?
            .error_for_status()
            .map_err(http)?
            .json()
            .await
            .map_err(http)?;
        Ok(token_of(&body).map(|t| format!("Bearer {t}")))
    }
}
