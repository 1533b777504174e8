//! Results of `shoal-bench lazyfs` (see `lazyfs_bench`): a table for people and, with
//! `--json`, the same numbers as JSON. Kept apart from the measuring so that the phases only
//! collect numbers and the output format lives in one place.

use std::time::Duration;

use serde_json::{json, Value};

/// One timed transfer and the bytes the origin sent over the shaped link meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Transfer {
    pub(crate) time: Duration,
    pub(crate) link_bytes: u64,
}

/// A [`Transfer`] made either straight from the registry ("direct") or through a peer
/// ("peer").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) mode: &'static str,
    pub(crate) transfer: Transfer,
}

/// c. The cold startup set: the same files read once per mode.
#[derive(Debug, Clone, Default)]
pub(crate) struct Startup {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    pub(crate) runs: Vec<Run>,
}

/// d. Medians over the warm rounds; the link bytes are summed over them (they should be 0).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Warm {
    pub(crate) lazyfs: Duration,
    pub(crate) lazyfs_hot: Duration,
    pub(crate) squashfuse: Duration,
    pub(crate) squashfuse_hot: Duration,
    pub(crate) link_bytes: u64,
}

/// What building the images cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Build {
    pub(crate) oci_build: Duration,
    pub(crate) gzip_layer_bytes: u64,
    pub(crate) convert_time: Duration,
    pub(crate) registry_bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct LazyfsReport {
    pub(crate) files: usize,
    pub(crate) tree_bytes: u64,
    pub(crate) rate_mbit: u32,
    /// Runs per mode in `first_reads` (numbers the rows of the table).
    pub(crate) repeat: u32,
    pub(crate) build: Build,
    pub(crate) first_reads: Vec<Run>,
    pub(crate) baseline: Option<Transfer>,
    pub(crate) startup: Startup,
    pub(crate) cold_rest: Transfer,
    pub(crate) warm: Warm,
    pub(crate) native: Duration,
    pub(crate) many_files: usize,
    pub(crate) many_times: Vec<Duration>,
}

impl LazyfsReport {
    fn first_median(&self, mode: &str) -> Duration {
        let v: Vec<Duration> = self
            .first_reads
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.transfer.time)
            .collect();
        median(&v)
    }

    pub(crate) fn print(&self) {
        let mb = |b: u64| b as f64 / 1e6;
        let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
        println!();
        println!(
            "lazyfs mount benchmark: {} files, {:.1} MB ({:.2} GiB); link {} Mbit/s",
            self.files,
            mb(self.tree_bytes),
            self.tree_bytes as f64 / (1u64 << 30) as f64,
            self.rate_mbit
        );
        println!(
            "  regular image: gzip layer {:.1} MB; registry storage (all images): {:.1} MB; \
             umoci build+push {:.1} s, lazyfs convert {:.1} s",
            mb(self.build.gzip_layer_bytes),
            mb(self.build.registry_bytes),
            self.build.oci_build.as_secs_f64(),
            self.build.convert_time.as_secs_f64()
        );
        println!(
            "{:<58} {:>12} {:>14}",
            "measurement", "time", "over the link"
        );
        for (i, r) in self.first_reads.iter().enumerate() {
            println!(
                "{:<58} {:>12} {:>11.2} MB",
                format!(
                    "a. mount → first small file read [{}] (run {})",
                    r.mode,
                    i as u32 % self.repeat.max(1) + 1
                ),
                secs(r.transfer.time),
                mb(r.transfer.link_bytes)
            );
        }
        for m in ["direct", "peer"] {
            let d = self.first_median(m);
            println!(
                "{:<58} {:>12}   (target ≤ 1 s: {})",
                format!("a. median [{m}]"),
                secs(d),
                met(d <= Duration::from_secs(1))
            );
        }
        if let Some(t) = self.baseline {
            println!(
                "{:<58} {:>12} {:>11.2} MB",
                "b. containerd pull + unpack (first file exists)",
                secs(t.time),
                mb(t.link_bytes)
            );
        }
        for r in &self.startup.runs {
            println!(
                "{:<58} {:>12} {:>11.2} MB",
                format!(
                    "c. startup set [{}], cold: {} files, {:.1} MB",
                    r.mode,
                    self.startup.files,
                    mb(self.startup.bytes)
                ),
                secs(r.transfer.time),
                mb(r.transfer.link_bytes)
            );
        }
        println!(
            "{:<58} {:>12} {:>11.2} MB",
            "   rest of the tree [peer], cold",
            secs(self.cold_rest.time),
            mb(self.cold_rest.link_bytes)
        );
        self.print_warm();
        if !self.many_times.is_empty() {
            let mm = median(&self.many_times);
            for (i, d) in self.many_times.iter().enumerate() {
                println!(
                    "{:<58} {:>12}",
                    format!(
                        "e. {}-file image: mount → stat (run {})",
                        self.many_files,
                        i + 1
                    ),
                    secs(*d)
                );
            }
            println!(
                "{:<58} {:>12}   (target ≤ 1 s: {})",
                "e. median",
                secs(mm),
                met(mm <= Duration::from_secs(1))
            );
        }
    }

    fn print_warm(&self) {
        let w = &self.warm;
        println!("{:<58} {:>12}", "d. warm sequential read", "MB/s");
        let rows = [
            ("   lazyfs, remounted, warm disk cache (median)", w.lazyfs),
            (
                "   lazyfs, same mount again (kernel page cache)",
                w.lazyfs_hot,
            ),
            (
                "   squashfuse (zstd, image in RAM), fresh mount (median)",
                w.squashfuse,
            ),
            ("   squashfuse, same mount again", w.squashfuse_hot),
            ("   native directory (tmpfs/page cache)", self.native),
        ];
        for (name, d) in rows {
            println!("{:<58} {:>12.0}", name, mbps(self.tree_bytes, d));
        }
        println!(
            "{:<58} {:>12}",
            "   lazyfs warm ≥ squashfuse fresh mount?",
            met(w.lazyfs <= w.squashfuse)
        );
    }

    pub(crate) fn json(&self) -> Value {
        let runs = |runs: &[Run]| {
            runs.iter()
                .map(|r| json!({"mode": r.mode, "seconds": r.transfer.time.as_secs_f64(), "link_bytes": r.transfer.link_bytes}))
                .collect::<Vec<_>>()
        };
        let rate = |d: Duration| mbps(self.tree_bytes, d);
        json!({
            "files": self.files,
            "tree_bytes": self.tree_bytes,
            "rate_mbit": self.rate_mbit,
            "gzip_layer_bytes": self.build.gzip_layer_bytes,
            "convert_seconds": self.build.convert_time.as_secs_f64(),
            "first_read": runs(&self.first_reads),
            "first_read_median_seconds": {
                "direct": self.first_median("direct").as_secs_f64(),
                "peer": self.first_median("peer").as_secs_f64(),
            },
            "baseline": self.baseline.map(|t| json!({"tool": "containerd 1.6 ctr images pull (unpack, overlayfs), direct from the registry", "seconds": t.time.as_secs_f64(), "link_bytes": t.link_bytes})),
            "startup_set": {"files": self.startup.files, "bytes": self.startup.bytes, "runs": runs(&self.startup.runs)},
            "cold_rest_peer": {"seconds": self.cold_rest.time.as_secs_f64(), "link_bytes": self.cold_rest.link_bytes},
            "warm_link_bytes": self.warm.link_bytes,
            "warm_mb_per_s": {
                "lazyfs_remount": rate(self.warm.lazyfs),
                "lazyfs_hot": rate(self.warm.lazyfs_hot),
                "squashfuse": rate(self.warm.squashfuse),
                "squashfuse_hot": rate(self.warm.squashfuse_hot),
                "native": rate(self.native),
            },
            "many_files": self.many_files,
            "many_mount_seconds": self.many_times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        })
    }
}

/// A target's verdict, as the tables print it.
pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Decimal MB per second; a zero duration is clamped so an empty phase prints a finite number.
pub(crate) fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// The upper median; zero for no samples, so a skipped phase still reports.
pub(crate) fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}
