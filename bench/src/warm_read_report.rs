//! The report of `shoal-bench warm-read`: times, medians, ratios to native, CPU and FUSE
//! requests, as text and JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::lazyfs_report::{mbps, median, met};
use crate::warm_read::{Timed, Variant, READ_CMD, TARGET_RATIO};

pub(crate) struct Report {
    pub(crate) tree: PathBuf,
    pub(crate) repeat: u32,
    pub(crate) convert: Duration,
    pub(crate) cold: Timed,
    /// Tar bytes per variant.
    pub(crate) bytes: BTreeMap<&'static str, u64>,
    pub(crate) times: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU time of the reading commands, per variant.
    pub(crate) cpu: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU time of the mount's daemon during each pass through it.
    pub(crate) daemon_cpu: BTreeMap<&'static str, Vec<Duration>>,
    /// FUSE requests of one warm pass, per variant, by opcode.
    pub(crate) requests: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl Report {
    fn median(&self, v: Variant) -> Option<Duration> {
        self.times.get(v.name()).map(|t| median(t))
    }

    /// Median of `v` ÷ median of `base`.
    fn ratio(&self, v: Variant, base: Variant) -> Option<f64> {
        let (a, b) = (self.median(v)?, self.median(base)?);
        Some(a.as_secs_f64() / b.as_secs_f64().max(1e-9))
    }

    pub(crate) fn print(&self) {
        let native_bytes = self.bytes.get("native").copied().unwrap_or(0);
        println!(
            "warm reads of {} ({} B of tar), `{READ_CMD}`, median of {}",
            self.tree.display(),
            native_bytes,
            self.repeat
        );
        println!(
            "  convert {:.1} s; cold read through the mount {:.2} s ({:.0} MB/s)",
            self.convert.as_secs_f64(),
            self.cold.time.as_secs_f64(),
            mbps(self.cold.bytes, self.cold.time)
        );
        for v in [
            Variant::Native,
            Variant::Mount,
            Variant::OverlayNative,
            Variant::OverlayMount,
        ] {
            let (Some(times), Some(m)) = (self.times.get(v.name()), self.median(v)) else {
                continue;
            };
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.3}", t.as_secs_f64()))
                .collect();
            println!(
                "  {:<22} median {:.3} s ({:.0} MB/s)  [{}]",
                v.describe(),
                m.as_secs_f64(),
                mbps(native_bytes, m),
                all.join(" ")
            );
            let cpu = self.cpu.get(v.name()).map_or(Duration::ZERO, |c| median(c));
            let daemon = match self.daemon_cpu.get(v.name()) {
                Some(d) => format!(", daemon {:.3} s", median(d).as_secs_f64()),
                None => String::new(),
            };
            println!(
                "  {:<22} CPU per pass: tar + wc {:.3} s{daemon}",
                "",
                cpu.as_secs_f64()
            );
        }
        if let Some(r) = self.ratio(Variant::Mount, Variant::Native) {
            println!(
                "  lazyfs ÷ native: {r:.2} × (target ≤ {TARGET_RATIO}: {})",
                met(r <= TARGET_RATIO)
            );
        }
        if let Some(r) = self.ratio(Variant::OverlayMount, Variant::Native) {
            println!("  overlay over lazyfs ÷ native: {r:.2} ×");
        }
        if let Some(r) = self.ratio(Variant::OverlayMount, Variant::OverlayNative) {
            println!("  overlay over lazyfs ÷ overlay over native: {r:.2} ×");
        }
        for (v, counts) in &self.requests {
            let total: u64 = counts.values().sum();
            let list: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
            println!(
                "  FUSE requests of a warm {v} pass: {total}{}{}",
                if list.is_empty() { "" } else { ": " },
                list.join(", ")
            );
        }
    }

    pub(crate) fn json(&self) -> Value {
        let secs = |d: Duration| d.as_secs_f64();
        let mut variants = serde_json::Map::new();
        for (name, times) in &self.times {
            variants.insert(
                (*name).to_owned(),
                json!({
                    "seconds": times.iter().map(|t| secs(*t)).collect::<Vec<_>>(),
                    "median_seconds": secs(median(times)),
                    "median_cpu_seconds": self.cpu.get(name).map(|c| secs(median(c))),
                    "median_daemon_cpu_seconds":
                        self.daemon_cpu.get(name).map(|c| secs(median(c))),
                    "tar_bytes": self.bytes.get(name),
                }),
            );
        }
        json!({
            "tree": self.tree.display().to_string(),
            "command": READ_CMD,
            "repeat": self.repeat,
            "convert_seconds": secs(self.convert),
            "cold": { "seconds": secs(self.cold.time), "tar_bytes": self.cold.bytes },
            "warm": variants,
            "ratio_lazyfs_native": self.ratio(Variant::Mount, Variant::Native),
            "ratio_overlay_lazyfs_native": self.ratio(Variant::OverlayMount, Variant::Native),
            "ratio_overlay_lazyfs_overlay_native":
                self.ratio(Variant::OverlayMount, Variant::OverlayNative),
            "target_ratio": TARGET_RATIO,
            "fuse_requests": self.requests,
        })
    }
}
