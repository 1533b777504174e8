//! One run from the sources in turn (the peer mirror, then the registry unless
//! `--no-fallback`): one range request per attempt, bounded retries with backoff for
//! retryable failures, a source marked down after a transport failure, and every chunk
//! verified ([`crate::check::verify_chunk`]) before it counts as fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{ChunkResult, Fetcher};
use crate::check::verify_chunk;
use crate::error::{Error, Result};
use crate::index::{BlobRun, FileChunk};
use crate::mount::source::HttpSource;

impl Fetcher {
    /// Every chunk of `run`, from the first source that delivers it intact; for the others,
    /// the last failure.
    pub(super) async fn fetch_from_sources(&self, run: BlobRun) -> Vec<ChunkResult> {
        let mut results = Vec::new();
        let mut pending: Vec<FileChunk> = run.chunks;
        let mut last_err: Option<Error> = None;
        let blob = self.index.blobs.get(run.blob as usize).map(|b| b.digest);
        if let Some(blob) = blob {
            let n = self.sources.len();
            for (si, src) in self.sources.iter().enumerate() {
                if pending.is_empty() {
                    break;
                }
                if src.is_down() && si + 1 < n {
                    continue;
                }
                pending = self
                    .try_source(src, &blob, pending, &mut results, &mut last_err)
                    .await;
            }
        }
        let err =
            Arc::new(last_err.unwrap_or_else(|| Error::Invalid("no source to fetch from".into())));
        for fc in pending {
            tracing::warn!(chunk = fc.chunk, error = %err, "every source failed");
            results.push((fc.chunk, Err(err.clone())));
        }
        results
    }

    /// One source, with retries. Returns the chunks still missing afterwards.
    async fn try_source(
        &self,
        src: &HttpSource,
        blob: &shoal_common::Digest,
        pending: Vec<FileChunk>,
        results: &mut Vec<ChunkResult>,
        last_err: &mut Option<Error>,
    ) -> Vec<FileChunk> {
        let label = src.kind.label();
        // The pending chunks are part of one contiguous run: fetch their span.
        let spans: Vec<(u64, u64)> = pending
            .iter()
            .filter_map(|fc| self.chunk(fc.chunk).ok().map(|c| (c.offset, c.end())))
            .collect();
        let (Some(start), Some(end)) = (
            spans.iter().map(|s| s.0).min(),
            spans.iter().map(|s| s.1).max(),
        ) else {
            return pending;
        };
        // The registry client's backoff (exponential, jittered), with this mount's own count:
        // the loop stays here because a failing source is marked down and the next one tried.
        let policy = shoal_registry::RetryPolicy {
            attempts: self.opts.retries + 1,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(3200),
            budget: Duration::from_secs(24 * 3600),
        };
        let started = std::time::Instant::now();
        for attempt in 0..=self.opts.retries {
            self.metrics
                .fetch_requests
                .with_label_values(&[label])
                .inc();
            match src.range(blob, start, end - start).await {
                Ok(bytes) => {
                    src.mark_up();
                    self.metrics
                        .fetch_bytes
                        .with_label_values(&[label])
                        .inc_by(bytes.len() as u64);
                    return self
                        .verify_all(label, bytes, start, pending, results, last_err)
                        .await;
                }
                Err(e) => {
                    self.metrics.fetch_error(label, reason(&e));
                    tracing::warn!(source = label, attempt, error = %e, "fetch failed");
                    let delay = e
                        .is_retryable()
                        .then(|| policy.delay(attempt + 1, started, None))
                        .flatten();
                    let transport = matches!(e, Error::Timeout { .. } | Error::Http { .. });
                    *last_err = Some(e);
                    let Some(delay) = delay else {
                        if transport {
                            src.mark_down();
                        }
                        break;
                    };
                    tokio::time::sleep(delay).await;
                }
            }
        }
        pending
    }

    /// Verify each pending chunk's slice of `bytes` (which start at blob offset `start`).
    async fn verify_all(
        &self,
        label: &str,
        bytes: Bytes,
        start: u64,
        pending: Vec<FileChunk>,
        results: &mut Vec<ChunkResult>,
        last_err: &mut Option<Error>,
    ) -> Vec<FileChunk> {
        let ids: Vec<u32> = pending.iter().map(|fc| fc.chunk).collect();
        let index = self.index.clone();
        let mut verified: HashMap<u32, Result<Vec<u8>>> = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| (id, verify_chunk(&index, id, &bytes, start)))
                .collect()
        })
        .await
        .unwrap_or_default();
        let mut still = Vec::new();
        for fc in pending {
            match verified.remove(&fc.chunk) {
                Some(Ok(data)) => results.push((fc.chunk, Ok(Arc::new(data)))),
                Some(Err(e)) => {
                    self.metrics.fetch_error(label, "verify");
                    tracing::warn!(source = label, error = %e, "chunk failed verification");
                    *last_err = Some(e);
                    still.push(fc);
                }
                None => still.push(fc),
            }
        }
        still
    }
}

/// The `reason` label of a failed fetch attempt.
fn reason(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "timeout",
        Error::Http { source, .. } if source.is_connect() => "connect",
        Error::Http { source, .. } if source.is_timeout() => "timeout",
        Error::Http { .. } => "transfer",
        Error::Fetch { reason, .. } if reason.starts_with("HTTP") => "status",
        Error::Fetch { .. } => "transfer",
        _ => "other",
    }
}
