//! The peer's Prometheus metrics, registered into the registry the daemon passes in. Names are
//! catalogued in `docs/metrics.md`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Where a piece came from, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchedFrom {
    Peer,
    Origin,
}

impl FetchedFrom {
    pub fn label(self) -> &'static str {
        match self {
            FetchedFrom::Peer => "peer",
            FetchedFrom::Origin => "origin",
        }
    }
}

#[derive(Clone)]
pub struct PeerMetrics {
    pub download_bytes: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub relayed_bytes: IntCounter,
    pub pieces_verified: IntCounterVec,
    pub pieces_rejected: IntCounterVec,
    pub piece_failures: IntCounterVec,
    pub endgame_duplicates: IntCounter,
    pub piece_duration: HistogramVec,
    pub tasks_active: IntGauge,
    pub downloads: IntCounterVec,
    pub uploads_active: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_quota_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub supernode_errors: IntCounter,
    pub supernode_reachable: IntGauge,
    pub local_bytes_served: IntCounter,
    pub range_bytes: IntCounterVec,
    pub download_duration: Histogram,
    pub mirror_requests: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub blob_access_checks: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl PeerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let piece_buckets = prometheus::exponential_buckets(0.005, 2.0, 14)?;
        Ok(PeerMetrics {
            download_bytes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_download_bytes_total",
                        "Verified piece bytes downloaded, by source (peer or origin).",
                    ),
                    &["source"],
                )?,
            )?,
            upload_bytes: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_upload_bytes_total",
                    "Bytes served to other peers.",
                )?,
            )?,
            relayed_bytes: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_relayed_bytes_total",
                    "Bytes served to other peers from pieces still arriving (cut-through).",
                )?,
            )?,
            pieces_verified: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_pieces_verified_total",
                        "Pieces whose sha256 matched, by source.",
                    ),
                    &["source"],
                )?,
            )?,
            pieces_rejected: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_pieces_rejected_total",
                        "Pieces thrown away because their sha256 did not match, by source.",
                    ),
                    &["source"],
                )?,
            )?,
            piece_failures: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_piece_fetch_failures_total",
                        "Piece transfers that failed, by source and reason.",
                    ),
                    &["source", "reason"],
                )?,
            )?,
            endgame_duplicates: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_endgame_duplicates_total",
                    "Second fetches of a straggling piece from another parent, at the end of a download.",
                )?,
            )?,
            piece_duration: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "shoal_peer_piece_duration_seconds",
                        "Time to fetch and verify one piece, by source.",
                    )
                    .buckets(piece_buckets),
                    &["source"],
                )?,
            )?,
            tasks_active: reg(
                registry,
                IntGauge::new("shoal_peer_tasks_active", "Downloads in progress.")?,
            )?,
            downloads: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_downloads_total",
                        "Finished downloads (whole blobs), by result (ok, failed, disk_full).",
                    ),
                    &["result"],
                )?,
            )?,
            uploads_active: reg(
                registry,
                IntGauge::new(
                    "shoal_peer_uploads_active",
                    "Range requests from other peers being served.",
                )?,
            )?,
            cache_bytes: reg(
                registry,
                IntGauge::new(
                    "shoal_peer_cache_bytes",
                    "Bytes reserved by cached blobs on disk.",
                )?,
            )?,
            cache_quota_bytes: reg(
                registry,
                IntGauge::new("shoal_peer_cache_quota_bytes", "Configured cache quota.")?,
            )?,
            cache_evictions: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_cache_evictions_total",
                    "Blobs evicted from the cache to stay under the quota or make room on a full disk.",
                )?,
            )?,
            supernode_errors: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_supernode_errors_total",
                    "Failed requests to a supernode.",
                )?,
            )?,
            supernode_reachable: reg(
                registry,
                IntGauge::new(
                    "shoal_peer_supernode_reachable",
                    "1 when the last announce or heartbeat reached a supernode, else 0.",
                )?,
            )?,
            local_bytes_served: reg(
                registry,
                IntCounter::new(
                    "shoal_peer_client_bytes_total",
                    "Blob bytes streamed to local clients (shoal-peer get, containerd).",
                )?,
            )?,
            range_bytes: {
                let c = reg(
                    registry,
                    IntCounterVec::new(
                        Opts::new(
                            "shoal_peer_range_bytes_total",
                            "Piece bytes that range requests (lazy reads) needed, by where they came from: already in the cache, fetched from a peer, or from the origin.",
                        ),
                        &["source"],
                    )?,
                )?;
                for source in ["cache", "peer", "origin"] {
                    c.with_label_values(&[source]);
                }
                c
            },
            download_duration: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shoal_peer_download_duration_seconds",
                        "Time to complete a whole blob download.",
                    )
                    .buckets(prometheus::exponential_buckets(0.05, 2.0, 14)?),
                )?,
            )?,
            mirror_requests: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_mirror_requests_total",
                        "Registry mirror requests, by kind (base, manifest, blob, other) and \
                         HTTP status.",
                    ),
                    &["kind", "status"],
                )?,
            )?,
            upstream_requests: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_upstream_requests_total",
                        "Requests the mirror sent to upstream registries, by kind.",
                    ),
                    &["kind"],
                )?,
            )?,
            upstream_failures: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_peer_upstream_failures_total",
                        "Mirror requests to upstream registries that failed (unreachable, 5xx, \
                         bad body), by kind.",
                    ),
                    &["kind"],
                )?,
            )?,
            blob_access_checks: {
                let v = reg(
                    registry,
                    IntCounterVec::new(
                        Opts::new(
                            "shoal_peer_blob_access_checks_total",
                            "Access checks before serving a cached blob through the mirror, by \
                             result (cache_hit, allowed, denied, failed).",
                        ),
                        &["result"],
                    )?,
                )?;
                // Every result shown from the start (zero until used).
                for r in ["cache_hit", "allowed", "denied", "failed"] {
                    v.with_label_values(&[r]);
                }
                v
            },
        })
    }
}
