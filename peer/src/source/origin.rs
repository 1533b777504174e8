//! The origin: the registry (or any HTTP server) the blob really comes from. Only peers the
//! supernode lets back to source use it, one piece at a time, with HTTP Range requests.

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use url::Url;

use super::http::{error_chain, FetchFailure, HttpFetcher};
use super::PieceSource;
use crate::error::{Error, Result};
use crate::storage::RelayWriter;

#[derive(Clone)]
pub struct Origin {
    url: Url,
    /// Sent with every request (e.g. registry credentials).
    headers: HeaderMap,
    http: HttpFetcher,
    length: Option<u64>,
}

impl Origin {
    pub fn new(url: Url, headers: HeaderMap, http: HttpFetcher) -> Self {
        Origin {
            url,
            headers,
            http,
            length: None,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn with_length(mut self, length: u64) -> Self {
        self.length = Some(length);
        self
    }

    fn err(&self, message: String, status: Option<u16>) -> Error {
        Error::Origin {
            url: self.url.to_string(),
            message,
            status,
        }
    }

    /// The blob's length: `HEAD`, or when the server does not say, a one-byte range request.
    pub async fn probe_length(&self) -> Result<u64> {
        let client = self.http.client();
        let resp = client
            .head(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| self.err(error_chain(&e), None))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(self.err(format!("HEAD answered HTTP {status}"), Some(status)));
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
            .headers(self.headers.clone())
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
        self.http
            .get_range(self.url.as_str(), &self.headers, range, self.length, relay)
            .await
            .map_err(|f| match f {
                FetchFailure::Status(s, m) => self.err(format!("HTTP {s}: {m}"), Some(s)),
                other => self.err(other.to_string(), None),
            })
    }
}

impl PieceSource for Origin {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(self.get(range, None))
    }
}
