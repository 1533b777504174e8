//! Prometheus metrics of a mount, registered into a caller-supplied registry, and the tiny
//! `/metrics` HTTP server that exposes them (`--metrics-listen`).
//!
//! The names are catalogued in `docs/metrics.md` (section "lazyfs"); the mount test scrapes a
//! live mount and checks the catalogue both ways.

use std::net::SocketAddr;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::{Error, Result};

/// Where a chunk was found without fetching it.
#[derive(Clone, Copy, Debug)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    /// Bytes returned to applications by `read`.
    pub read_bytes: IntCounter,
    /// `read` calls answered with an error (EIO).
    pub read_errors: IntCounter,
    /// Latency of `read` calls, cache hits included.
    pub read_duration: Histogram,
    /// Compressed bytes received, by source (`peer`, `registry`).
    pub fetch_bytes: IntCounterVec,
    /// Range requests sent, by source.
    pub fetch_requests: IntCounterVec,
    /// Failed fetch attempts, by source and reason.
    pub fetch_errors: IntCounterVec,
    /// Chunk lookups satisfied by a cache tier (`memory`, `disk`).
    pub cache_hits: IntCounterVec,
    /// Chunk lookups that had to fetch.
    pub cache_misses: IntCounter,
    /// Bytes held by the disk cache.
    pub disk_cache_bytes: IntGauge,
    /// Chunks evicted from the disk cache to stay under its quota.
    pub disk_cache_evictions: IntCounter,
    /// Chunks fetched by the background prefetcher.
    pub prefetch_chunks: IntCounter,
}

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> Result<T> {
    r.register(Box::new(c.clone()))
        .map_err(|e| Error::Invalid(format!("registering metrics: {e}")))?;
    Ok(c)
}

pub(crate) fn metric_err(e: prometheus::Error) -> Error {
    Error::Invalid(format!("creating metrics: {e}"))
}

impl Metrics {
    pub fn new(r: &Registry) -> Result<Self> {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).map_err(metric_err);
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).map_err(metric_err)
        };
        Ok(Metrics {
            read_bytes: reg(
                r,
                counter(
                    "shoal_lazyfs_read_bytes_total",
                    "Bytes returned to applications by read.",
                )?,
            )?,
            read_errors: reg(
                r,
                counter(
                    "shoal_lazyfs_read_errors_total",
                    "Reads answered with EIO because no source delivered verified chunks.",
                )?,
            )?,
            read_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shoal_lazyfs_read_duration_seconds",
                        "Latency of read calls, cache hits included.",
                    )
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                    ]),
                )
                .map_err(metric_err)?,
            )?,
            fetch_bytes: reg(
                r,
                vec(
                    "shoal_lazyfs_fetch_bytes_total",
                    "Compressed chunk bytes received, by source.",
                    &["source"],
                )?,
            )?,
            fetch_requests: reg(
                r,
                vec(
                    "shoal_lazyfs_fetch_requests_total",
                    "Range requests sent, by source.",
                    &["source"],
                )?,
            )?,
            fetch_errors: reg(
                r,
                vec(
                    "shoal_lazyfs_fetch_errors_total",
                    "Failed fetch attempts, by source and reason.",
                    &["source", "reason"],
                )?,
            )?,
            cache_hits: reg(
                r,
                vec(
                    "shoal_lazyfs_cache_hits_total",
                    "Chunk lookups answered by a cache tier.",
                    &["tier"],
                )?,
            )?,
            cache_misses: reg(
                r,
                counter(
                    "shoal_lazyfs_cache_misses_total",
                    "Chunk lookups that had to fetch.",
                )?,
            )?,
            disk_cache_bytes: reg(
                r,
                IntGauge::new(
                    "shoal_lazyfs_disk_cache_bytes",
                    "Bytes of chunks held by the disk cache.",
                )
                .map_err(metric_err)?,
            )?,
            disk_cache_evictions: reg(
                r,
                counter(
                    "shoal_lazyfs_disk_cache_evictions_total",
                    "Chunks evicted from the disk cache to stay under its quota.",
                )?,
            )?,
            prefetch_chunks: reg(
                r,
                counter(
                    "shoal_lazyfs_prefetch_chunks_total",
                    "Chunks fetched by the background prefetcher.",
                )?,
            )?,
        })
    }

    pub fn hit(&self, tier: Tier) {
        self.cache_hits.with_label_values(&[tier.label()]).inc();
    }

    pub fn fetch_error(&self, source: &str, reason: &str) {
        self.fetch_errors.with_label_values(&[source, reason]).inc();
    }
}

/// Text exposition of a registry (empty, with a warning, if it cannot be encoded: a scrape
/// or a test then sees missing metrics rather than a failed mount).
pub fn render(r: &Registry) -> String {
    shoal_runtime::metrics::encode(r).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "encoding metrics");
        String::new()
    })
}

/// Bind `addr` and serve `GET /metrics` until the runtime shuts down.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding --metrics-listen {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics listener address", e))?;
    let app = shoal_runtime::metrics::router(registry);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
