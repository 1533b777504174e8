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

use super::liveness::{Liveness, Progress};
use crate::ratelimit::RateLimit;
use crate::storage::RelayWriter;

/// Why a range request failed, before the caller attaches who it was talking to.
#[derive(Debug)]
pub enum FetchFailure {
    /// No connection, reset, timed out mid-body.
    Transport(String),
    /// The connection could not be made; `refused` when the host answered that nothing
    /// listens there.
    Connect { message: String, refused: bool },
    /// The server stopped sending, or sends too slowly (see [`Liveness`]); `relayed` when it
    /// was passing on a piece still arriving from its own source (which may be the one that
    /// stalled).
    Stalled { message: String, relayed: bool },
    /// The server answered with this status (and, for 429/503, perhaps a `Retry-After`).
    Status(u16, String, Option<Duration>),
    /// The server answered 2xx with the wrong bytes count or range.
    Protocol(String),
    /// The body broke off after the server had answered.
    Interrupted(String),
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailure::Transport(m) => write!(f, "transfer failed: {m}"),
            FetchFailure::Connect { message, .. } => write!(f, "cannot connect: {message}"),
            FetchFailure::Stalled { message, relayed } => {
                let what = if *relayed { " (relaying)" } else { "" };
                write!(f, "stalled{what}: {message}")
            }
            FetchFailure::Status(s, m, _) => write!(f, "HTTP {s}: {m}"),
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
    liveness: Option<Liveness>,
    /// Sent with every request, before the caller's headers.
    extra: HeaderMap,
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
            liveness: None,
            extra: HeaderMap::new(),
        }
    }

    /// Sends `name: value` with every request (a peer names itself to its parents, which
    /// then tell the supernode when an upload to it breaks off).
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(value) {
            self.extra.insert(name, v);
        }
        self
    }

    /// Abandons transfers that stall or crawl (see [`Liveness`]), long before `piece_timeout`.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
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
        let mut progress = Progress::new(self.liveness);
        let work = async {
            let send = self
                .client
                .get(url)
                .headers(self.extra.clone())
                .headers(headers.clone())
                .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1))
                .send();
            let resp = progress
                .wait(|| "waiting for the response".into(), send)
                .await?
                .map_err(|e| send_failure(&e))?;
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
                                    None,
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
                    let wait = shoal_registry::retry::retry_after(resp.headers());
                    let body = resp.text().await.unwrap_or_default();
                    let snippet: String = body.chars().take(200).collect();
                    return Err(FetchFailure::Status(s.as_u16(), snippet, wait));
                }
            }
            let relayed = resp.headers().contains_key(shoal_common::RELAY_HEADER);
            if relayed {
                progress.relaying();
            }
            let stalled = |f| mark_relayed(f, relayed);
            // Relayed bytes go to the relay's buffer only, so the piece is held once.
            let mut buf = BytesMut::with_capacity(if relay.is_some() { 0 } else { want as usize });
            let mut got = 0u64;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = progress
                .wait(|| format!("after {got} of {want} bytes"), stream.next())
                .await
                .map_err(stalled)?
            {
                let chunk = chunk.map_err(|e| FetchFailure::Interrupted(error_chain(&e)))?;
                got += chunk.len() as u64;
                if got > want {
                    return Err(FetchFailure::Protocol(format!(
                        "body longer than the {want} bytes asked for"
                    )));
                }
                progress.check_rate(got).map_err(stalled)?;
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

/// A stall of a server that said it relays a piece still arriving from its own source.
fn mark_relayed(f: FetchFailure, relayed: bool) -> FetchFailure {
    match f {
        FetchFailure::Stalled { message, .. } => FetchFailure::Stalled { message, relayed },
        other => other,
    }
}

/// Why a request got no response: a failed connect (refused or not) or a broken transfer.
fn send_failure(e: &reqwest::Error) -> FetchFailure {
    let message = error_chain(e);
    if !e.is_connect() {
        return FetchFailure::Transport(message);
    }
    let mut refused = false;
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    FetchFailure::Connect { message, refused }
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
