//! The snapshotter's metrics, and one `/metrics` for the node: its own families followed by
//! those of every lazy mount it made (each mount process serves its own on a loopback port;
//! here each sample gains an `image` label), so Prometheus scrapes one fixed address however
//! many images are mounted. Names are catalogued in `docs/metrics.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use tokio_util::sync::CancellationToken;

use super::store::{Kind, Lazy, Store};
use super::Snapshotter;
use crate::error::Result;
use crate::mount::metrics::{metric_err, reg};

#[derive(Clone)]
pub struct Metrics {
    /// Operations containerd called, by operation and result (`ok`, `exists`, `error`).
    pub operations: IntCounterVec,
    /// Latency of operations, by operation.
    pub operation_seconds: HistogramVec,
    /// Time to start a lazy mount (inside `Prepare` of an index layer).
    pub mount_seconds: Histogram,
    /// Lazy mounts that failed to start.
    pub mount_failures: IntCounter,
    /// Snapshots held, by kind (`active`, `view`, `committed`, `lazy`).
    pub snapshots: IntGaugeVec,
    /// Lazy mounts held (one per lazy image on the node).
    pub lazy_mounts: IntGauge,
}

impl Metrics {
    pub fn new(r: &Registry) -> Result<Self> {
        let buckets = vec![0.001, 0.005, 0.02, 0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];
        Ok(Metrics {
            operations: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "shoal_snapshotter_operations_total",
                        "Snapshotter operations called by containerd, by operation and result.",
                    ),
                    &["op", "result"],
                )
                .map_err(metric_err)?,
            )?,
            operation_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "shoal_snapshotter_operation_seconds",
                        "Latency of snapshotter operations, by operation.",
                    )
                    .buckets(buckets.clone()),
                    &["op"],
                )
                .map_err(metric_err)?,
            )?,
            mount_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shoal_snapshotter_mount_seconds",
                        "Time to start the lazy mount of an image.",
                    )
                    .buckets(buckets),
                )
                .map_err(metric_err)?,
            )?,
            mount_failures: reg(
                r,
                IntCounter::new(
                    "shoal_snapshotter_mount_failures_total",
                    "Lazy mounts that failed to start.",
                )
                .map_err(metric_err)?,
            )?,
            snapshots: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "shoal_snapshotter_snapshots",
                        "Snapshots held, by kind (lazy: layers of lazy images).",
                    ),
                    &["kind"],
                )
                .map_err(metric_err)?,
            )?,
            lazy_mounts: reg(
                r,
                IntGauge::new(
                    "shoal_snapshotter_lazy_mounts",
                    "Lazy mounts held: one per lazy image on the node.",
                )
                .map_err(metric_err)?,
            )?,
        })
    }

    pub fn record(&self, op: &str, result: &str, took: Duration) {
        self.operations.with_label_values(&[op, result]).inc();
        self.operation_seconds
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Re-counts the snapshots by kind.
    pub fn observe(&self, store: &Store) {
        let mut counts =
            BTreeMap::from([("active", 0), ("view", 0), ("committed", 0), ("lazy", 0)]);
        let mut mounts = 0;
        for (_, r) in store.iter() {
            let kind = match (r.kind, &r.lazy) {
                (_, Some(_)) => "lazy",
                (Kind::Active, None) => "active",
                (Kind::View, None) => "view",
                (Kind::Committed, None) => "committed",
            };
            *counts.entry(kind).or_default() += 1;
            mounts += i64::from(matches!(r.lazy, Some(Lazy::Index { .. })));
        }
        self.lazy_mounts.set(mounts);
        for (kind, n) in counts {
            self.snapshots.with_label_values(&[kind]).set(n);
        }
    }
}

/// Serves `/metrics` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    snapshotter: Arc<Snapshotter>,
    cancel: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (registry, snapshotter, client) =
                (registry.clone(), snapshotter.clone(), client.clone());
            async move {
                let own = shoal_runtime::metrics::encode(&registry);
                let mounts = mounts_text(&snapshotter, &client).await;
                shoal_runtime::metrics::response(own.map(|text| text + &mounts))
            }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
    if let Err(e) = served.await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

/// The lazy mounts' metrics, merged family by family.
async fn mounts_text(s: &Snapshotter, client: &reqwest::Client) -> String {
    let targets: Vec<(String, std::net::SocketAddr)> = s.mounts_serving_metrics();
    let mut families = Families::default();
    for (image, addr) in targets {
        let url = format!("http://{addr}/metrics");
        match client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(resp) => match resp.text().await {
                Ok(text) => families.add(&text, &image),
                Err(e) => tracing::debug!(%image, error = %e, "reading a mount's metrics"),
            },
            Err(e) => tracing::debug!(%image, error = %e, "scraping a mount's metrics"),
        }
    }
    families.render()
}

impl Snapshotter {
    fn mounts_serving_metrics(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.lazy_layers()
            .into_iter()
            .filter_map(|lazy| match lazy {
                Lazy::Index {
                    image,
                    metrics: Some(addr),
                } => Some((image, addr)),
                _ => None,
            })
            .collect()
    }
}

/// Text-format families gathered from several scrapes: each family's `# HELP`/`# TYPE`
/// once, then its samples from every scrape (a family must be contiguous in the format).
#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Families {
    fn add(&mut self, text: &str, image: &str) {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if what != "HELP" && what != "TYPE" {
                    continue;
                }
                current = name.to_string();
                let entry = self.entry(&current);
                if !entry.0.iter().any(|l| l == line) {
                    entry.0.push(line.to_string());
                }
            } else if !line.trim().is_empty() && !current.is_empty() {
                let labelled = with_label(line, "image", image);
                let current = current.clone();
                self.entry(&current).1.push(labelled);
            }
        }
    }

    fn entry(&mut self, name: &str) -> &mut (Vec<String>, Vec<String>) {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.by_name.entry(name.to_string()).or_default()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            if let Some((head, samples)) = self.by_name.get(name) {
                for l in head.iter().chain(samples) {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// `name{a="1"} 2` → `name{image="…",a="1"} 2`; `name 2` → `name{image="…"} 2`.
fn with_label(sample: &str, key: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('"', "\\\"");
    match sample.find(['{', ' ']) {
        Some(i) if sample.as_bytes()[i] == b'{' => {
            let rest = &sample[i + 1..];
            let sep = if rest.starts_with('}') { "" } else { "," };
            format!("{}{{{key}=\"{value}\"{sep}{rest}", &sample[..i])
        }
        Some(i) => format!("{}{{{key}=\"{value}\"}}{}", &sample[..i], &sample[i..]),
        None => sample.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_merge_into_contiguous_families() {
        let a = "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0.5\nh_count 1\n";
        let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total 4\n";
        let mut f = Families::default();
        f.add(a, "r/a@sha256:1");
        f.add(b, "r/b@sha256:2");
        let text = f.render();
        assert_eq!(
            text,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{image=\"r/a@sha256:1\"} 3\nx_total{image=\"r/b@sha256:2\"} 4\n\
             # HELP h H.\n# TYPE h histogram\nh_bucket{image=\"r/a@sha256:1\",le=\"1\"} 1\nh_sum{image=\"r/a@sha256:1\"} 0.5\nh_count{image=\"r/a@sha256:1\"} 1\n"
        );
    }

    #[test]
    fn labels_are_added_to_any_sample_shape() {
        assert_eq!(with_label("m{} 1", "k", "v"), "m{k=\"v\"} 1");
        assert_eq!(with_label("m 1", "k", "a\"b"), "m{k=\"a\\\"b\"} 1");
    }
}
