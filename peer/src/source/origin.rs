//! The origin: the registry (or any HTTP server) the blob really comes from. Only peers the
//! supernode lets back to source use it, one piece at a time, with HTTP Range requests.
//!
//! A download can outlive the registry token it started with: a piece refused with `401`
//! asks the download's [`OriginAuth`] (the credentials of everyone sharing the download,
//! [`super::AuthPool`], each handed in by its requester; the engine knows nothing of
//! registries) for a new `Authorization` once, and is asked again with it.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE,
};
use reqwest::StatusCode;
use shoal_common::Digest;
use shoal_registry::RetryPolicy;
use url::Url;

use super::http::{error_chain, FetchFailure, HttpFetcher};
use super::PieceSource;
use crate::error::{Error, Result};
use crate::storage::RelayWriter;

/// Renews the origin's credentials when the origin refuses them (an expired bearer token).
pub trait OriginAuth: Send + Sync + Debug {
    /// A new `Authorization` for the origin, or `None` when there is none to be had (then the
    /// refusal stands). `refused` is the one the origin just turned down.
    fn renew<'a>(&'a self, refused: Option<&'a HeaderValue>) -> BoxFuture<'a, Option<HeaderValue>>;

    /// What tells these credentials from another requester's (a hash, never the secret):
    /// requesters with the same identity add nothing to a shared download ([`AuthPool`]).
    /// `None`: never taken for another's.
    ///
    /// [`AuthPool`]: super::AuthPool
    fn identity(&self) -> Option<Digest>;
}

#[derive(Clone)]
pub struct Origin {
    url: Url,
    /// Sent with every request (e.g. registry credentials); shared by the download's pieces,
    /// so one renewal serves them all.
    headers: Arc<RwLock<HeaderMap>>,
    /// One renewal at a time: pieces refused together wait for it instead of each asking.
    renewing: Arc<tokio::sync::Mutex<()>>,
    auth: Option<Arc<dyn OriginAuth>>,
    http: HttpFetcher,
    length: Option<u64>,
}

impl Origin {
    pub fn new(url: Url, headers: HeaderMap, http: HttpFetcher) -> Self {
        Origin {
            url,
            headers: Arc::new(RwLock::new(headers)),
            renewing: Arc::new(tokio::sync::Mutex::new(())),
            auth: None,
            http,
            length: None,
        }
    }

    /// Credentials the origin refuses are renewed through `auth`.
    pub fn with_auth(mut self, auth: Option<Arc<dyn OriginAuth>>) -> Self {
        self.auth = auth;
        self
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn with_length(mut self, length: u64) -> Self {
        self.length = Some(length);
        self
    }

    /// An error about this origin (`status`, when it answered).
    pub(crate) fn err(&self, message: String, status: Option<u16>) -> Error {
        Error::Origin {
            url: self.url.to_string(),
            message,
            status,
            retry_after: None,
        }
    }

    /// The origin answered `status`, perhaps asking to be left alone for a while.
    fn refused(&self, message: String, status: u16, retry_after: Option<Duration>) -> Error {
        Error::Origin {
            url: self.url.to_string(),
            message,
            status: Some(status),
            retry_after,
        }
    }

    /// The blob's length: `HEAD`, or when the server does not say, a one-byte range request;
    /// asked again under the registry client's [`RetryPolicy`] on 5xx, 429 and transport
    /// errors, as every other upstream request is.
    pub async fn probe_length(&self) -> Result<u64> {
        RetryPolicy::default()
            .run(
                || self.probe_once(),
                |outcome| match outcome {
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(url = %self.url, error = %e, "blob length: asking again");
                        Some(match e {
                            Error::Origin { retry_after, .. } => *retry_after,
                            _ => None,
                        })
                    }
                    _ => None,
                },
            )
            .await
    }

    async fn probe_once(&self) -> Result<u64> {
        let client = self.http.client();
        let headers = self.headers.read().clone();
        let resp = client
            .head(self.url.clone())
            .headers(headers.clone())
            .send()
            .await
            .map_err(|e| self.err(error_chain(&e), None))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(self.refused(
                format!("HEAD answered HTTP {status}"),
                status,
                shoal_registry::retry::retry_after(resp.headers()),
            ));
        }
        if let Some(len) = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Ok(len);
        }
        let resp = client
            .get(self.url.clone())
            .headers(headers)
            .header(RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(|e| self.err(error_chain(&e), None))?;
        let status = resp.status();
        let total = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok());
        match (status, total) {
            (StatusCode::PARTIAL_CONTENT, Some(total)) => Ok(total),
            _ => Err(self.err(
                format!("cannot tell the blob's length (HTTP {status}, no Content-Length)"),
                Some(status.as_u16()),
            )),
        }
    }

    /// Fetches `range`, passing the bytes on to `relay` as they arrive.
    pub async fn fetch_relaying(&self, range: Range<u64>, relay: &RelayWriter) -> Result<Bytes> {
        self.get(range, Some(relay)).await
    }

    async fn get(&self, range: Range<u64>, relay: Option<&RelayWriter>) -> Result<Bytes> {
        let sent = self.headers.read().clone();
        let first = self
            .http
            .get_range(self.url.as_str(), &sent, range.clone(), self.length, relay)
            .await;
        let failure = match first {
            Err(FetchFailure::Status(401, m, wait)) => match self.renewed(&sent).await {
                // Nothing was relayed: a refusal has no body to pass on.
                Some(headers) => {
                    self.http
                        .get_range(self.url.as_str(), &headers, range, self.length, relay)
                        .await
                }
                None => Err(FetchFailure::Status(401, m, wait)),
            },
            other => other,
        };
        failure.map_err(|f| match f {
            FetchFailure::Status(s, m, wait) => self.refused(format!("HTTP {s}: {m}"), s, wait),
            other => self.err(other.to_string(), None),
        })
    }

    /// The headers to ask again with after `sent` was refused: another piece's renewal if
    /// one happened meanwhile, else a new `Authorization` from the download's [`OriginAuth`].
    async fn renewed(&self, sent: &HeaderMap) -> Option<HeaderMap> {
        let auth = self.auth.as_ref()?;
        let _one = self.renewing.lock().await;
        let current = self.headers.read().clone();
        if current.get(AUTHORIZATION) != sent.get(AUTHORIZATION) {
            return Some(current);
        }
        let value = auth.renew(sent.get(AUTHORIZATION)).await?;
        tracing::debug!(url = %self.url, "origin refused the credentials; renewed them");
        let mut headers = self.headers.write();
        headers.insert(AUTHORIZATION, value);
        Some(headers.clone())
    }
}

impl PieceSource for Origin {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(self.get(range, None))
    }
}
