//! The HTTP range client shared by the origin and parent sources: one connection pool, the
//! download rate limit, timeouts, and strict length checks (a short body is an error, never a
//! short piece).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::ratelimit::RateLimit;
use crate::storage::RelayWriter;

/// Why a range request failed, before the caller attaches who it was talking to.
#[derive(Debug)]
pub enum FetchFailure {
    /// No connection, reset, timed out mid-body.
    Transport(String),
    /// The server answered with this status.
    Status(u16, String),
    /// The server answered 2xx with the wrong bytes count or range.
    Protocol(String),
    /// The body broke off after the server had answered.
    Interrupted(String),
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailure::Transport(m) => write!(f, "transfer failed: {m}"),
            FetchFailure::Status(s, m) => write!(f, "HTTP {s}: {m}"),
            FetchFailure::Protocol(m) => write!(f, "bad response: {m}"),
            FetchFailure::Interrupted(m) => write!(f, "transfer cut off: {m}"),
        }
    }
}

#[derive(Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    limit: Arc<RateLimit>,
    timeout: Duration,
}

impl HttpFetcher {
    pub fn new(connect_timeout: Duration, piece_timeout: Duration, limit: Arc<RateLimit>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .user_agent(concat!("shoal-peer/", env!("CARGO_PKG_VERSION")))
            .build()
            // Building only fails when the TLS backend cannot initialise, which is a broken
            // installation rather than a runtime condition.
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpFetcher {
            client,
            limit,
            timeout: piece_timeout,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GETs `range` of `url`, insisting on exactly those bytes; each chunk also goes to
    /// `relay` as it arrives.
    pub async fn get_range(
        &self,
        url: &str,
        headers: &HeaderMap,
        range: Range<u64>,
        total_len: Option<u64>,
        relay: Option<&RelayWriter>,
    ) -> Result<Bytes, FetchFailure> {
        let want = range.end - range.start;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let work = async {
            let resp = self
                .client
                .get(url)
                .headers(headers.clone())
                .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
                .map_err(|e| FetchFailure::Transport(error_chain(&e)))?;
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT => {
                    if let Some(cr) = resp.headers().get(CONTENT_RANGE) {
                        let expect = format!("bytes {}-{}/", range.start, range.end - 1);
                        let ok = cr.to_str().map(|s| s.starts_with(&expect)).unwrap_or(false);
                        if !ok {
                            return Err(FetchFailure::Protocol(format!(
                                "asked for {expect}…, got Content-Range {cr:?}"
                            )));
                        }
                        // A blob of another length than the layout's (a registry whose HEAD
                        // misreported it): no piece of this layout can be trusted to exist.
                        // Final, like a 416, so the download fails at once with the reason.
                        let total = cr
                            .to_str()
                            .ok()
                            .and_then(|s| s.rsplit_once('/'))
                            .and_then(|(_, t)| t.parse::<u64>().ok());
                        if let (Some(total), Some(expected)) = (total, total_len) {
                            if total != expected {
                                return Err(FetchFailure::Status(
                                    416,
                                    format!("the blob has {total} bytes, not the {expected} it was said to have"),
                                ));
                            }
                        }
                    }
                }
                // A server that ignores Range sends the whole blob: acceptable only when the
                // whole blob is what we asked for.
                StatusCode::OK if range.start == 0 && total_len == Some(range.end) => {}
                StatusCode::OK => {
                    return Err(FetchFailure::Protocol(
                        "server ignored the Range header".into(),
                    ))
                }
                s => {
                    let body = resp.text().await.unwrap_or_default();
                    let snippet: String = body.chars().take(200).collect();
                    return Err(FetchFailure::Status(s.as_u16(), snippet));
                }
            }
            // Relayed bytes go to the relay's buffer only, so the piece is held once.
            let mut buf = BytesMut::with_capacity(if relay.is_some() { 0 } else { want as usize });
            let mut got = 0u64;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| FetchFailure::Interrupted(error_chain(&e)))?;
                got += chunk.len() as u64;
                if got > want {
                    return Err(FetchFailure::Protocol(format!(
                        "body longer than the {want} bytes asked for"
                    )));
                }
                self.limit.consume(chunk.len()).await;
                match relay {
                    Some(r) => r.push(&chunk),
                    None => buf.extend_from_slice(&chunk),
                }
            }
            if got != want {
                return Err(FetchFailure::Interrupted(format!(
                    "body ended after {got} of {want} bytes"
                )));
            }
            Ok(relay.map_or_else(|| buf.freeze(), RelayWriter::finish))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(FetchFailure::Transport(format!(
                "timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); include the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
