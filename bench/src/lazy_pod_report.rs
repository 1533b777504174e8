//! Results of `shoal-bench lazy-pod` (see `lazy_pod`): a table, the ratio lines the issue's
//! target is read from, and optionally the same as JSON. Ratios are of the medians over the
//! runs, computed here from the raw times, so the JSON keeps both.

use std::fmt::Write as _;

use serde::Serialize;

use crate::lazy_pod_image::ImageMeta;
use crate::lazy_pod_node::PodTimes;
use crate::lazyfs_report::met;

/// The target: a lazy cold pod within 10 % of the full pull's time.
pub(crate) const TARGET_COLD_OVER_FULL: f64 = 0.10;

/// One pod from PullImage to its container's exit, with what moved meanwhile.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PodRun {
    pub(crate) times: PodTimes,
    /// What the origin's link sent, from PullImage until the link fell silent after the
    /// exit (the origin runs only the registry).
    pub(crate) origin_egress_bytes: u64,
    /// What the node's link delivered to it in the same window.
    pub(crate) node_link_bytes: u64,
    /// The node's peer, in the same window (until the counters were read, just after):
    /// bytes it got from the origin and from other peers, and uploaded.
    pub(crate) peer_from_origin_bytes: u64,
    pub(crate) peer_from_peers_bytes: u64,
    pub(crate) peer_uploaded_bytes: u64,
    /// Lazy runs: compressed chunk bytes and range requests of the node's lazy mounts.
    pub(crate) mount_fetch_bytes: Option<u64>,
    pub(crate) mount_fetch_requests: Option<u64>,
    /// Share of the machine's CPU time busy during the pod (both cores), and stolen.
    pub(crate) cpu_busy: f64,
    pub(crate) cpu_steal: f64,
}

/// One run: the full image on node 1, the lazy image cold on node 2, warm on node 3.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunResult {
    pub(crate) run: u32,
    pub(crate) full: PodRun,
    pub(crate) lazy_cold: PodRun,
    pub(crate) lazy_warm: PodRun,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LazyPodReport {
    /// The namespaces were named `shb-RUN-*` (one suffix per run).
    pub(crate) run: String,
    pub(crate) rate_mbit: u32,
    pub(crate) tbf: String,
    pub(crate) host_sysctls: Vec<String>,
    pub(crate) image: ImageMeta,
    /// Whether the images came from the cache (`--work-dir`) rather than this invocation.
    pub(crate) image_cached: bool,
    pub(crate) runs: Vec<RunResult>,
    pub(crate) median_full_s: f64,
    pub(crate) median_lazy_cold_s: f64,
    pub(crate) median_lazy_warm_s: f64,
    pub(crate) lazy_cold_over_full: f64,
    pub(crate) lazy_warm_over_full: f64,
    pub(crate) target_met: bool,
}

impl LazyPodReport {
    /// Fills in the medians and ratios from the runs.
    pub(crate) fn summarize(&mut self) {
        let med = |f: fn(&RunResult) -> &PodRun| {
            median(self.runs.iter().map(|r| f(r).times.exited_s).collect())
        };
        self.median_full_s = med(|r| &r.full);
        self.median_lazy_cold_s = med(|r| &r.lazy_cold);
        self.median_lazy_warm_s = med(|r| &r.lazy_warm);
        let ratio = |x: f64| {
            if self.median_full_s > 0.0 {
                x / self.median_full_s
            } else {
                f64::NAN
            }
        };
        self.lazy_cold_over_full = ratio(self.median_lazy_cold_s);
        self.lazy_warm_over_full = ratio(self.median_lazy_warm_s);
        self.target_met = self.lazy_cold_over_full <= TARGET_COLD_OVER_FULL;
    }

    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.image;
        let _ = writeln!(
            s,
            "image: {} files of {} KiB ({}); blobs: full {}, lazy {}; startup set {} files, {}",
            m.files,
            m.params.file_kib,
            mb(m.data_bytes),
            mb(m.full_blob_bytes),
            mb(m.lazy_blob_bytes),
            m.set_files,
            mb(m.set_bytes)
        );
        let _ = writeln!(
            s,
            "links: {} Mbit/s ({}); {}",
            self.rate_mbit,
            self.tbf,
            if self.image.params.startup_first {
                "startup set laid out first (--startup-first)"
            } else {
                "startup set spread over the image"
            }
        );
        let _ = writeln!(
            s,
            "\nPullImage → container exit [s]; origin egress; phases: PullImage returned / \
             CreateContainer / StartContainer / exit"
        );
        for r in &self.runs {
            for (name, p) in [
                ("full", &r.full),
                ("lazy cold", &r.lazy_cold),
                ("lazy warm", &r.lazy_warm),
            ] {
                let mut line = format!(
                    "run {} {name:<9} {:>8.2} s  origin {:>10}  node link {:>10}  \
                     phases {:.2} / {:.2} / {:.2} / {:.2} s  CPU {:.0} %",
                    r.run,
                    p.times.exited_s,
                    mb(p.origin_egress_bytes),
                    mb(p.node_link_bytes),
                    p.times.pull_s,
                    p.times.created_s,
                    p.times.started_s,
                    p.times.exited_s,
                    p.cpu_busy * 100.0
                );
                if let (Some(b), Some(n)) = (p.mount_fetch_bytes, p.mount_fetch_requests) {
                    let _ = write!(line, "  mount fetched {} in {n} requests", mb(b));
                }
                if p.peer_from_peers_bytes > 0 {
                    let _ = write!(line, "  peer: {} from peers", mb(p.peer_from_peers_bytes));
                }
                let _ = writeln!(s, "{line}");
            }
        }
        let _ = writeln!(
            s,
            "\nmedian of {} run(s): full {:.2} s, lazy cold {:.2} s, lazy warm {:.2} s",
            self.runs.len(),
            self.median_full_s,
            self.median_lazy_cold_s,
            self.median_lazy_warm_s
        );
        let _ = writeln!(
            s,
            "lazy_cold/full = {:.3} (target ≤ {TARGET_COLD_OVER_FULL:.2}: {})",
            self.lazy_cold_over_full,
            met(self.target_met)
        );
        let _ = writeln!(s, "lazy_warm/full = {:.3}", self.lazy_warm_over_full);
        s
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bytes as MB (10^6), one decimal.
fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
