//! Results of `shoal-bench memory`: JSON (the stable form, parsed by the smoke test) and a
//! table for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::processes::ProcMemory;

/// Issue 3's targets.
pub const IDLE_TARGET_BYTES: u64 = 64 << 20;
pub const SERVING_TARGET_BYTES: u64 = 256 << 20;
/// The number of concurrent downloads the serving target is stated for.
pub const SERVING_TARGET_DOWNLOADS: u32 = 100;

/// How the numbers are taken, for the reader of the JSON.
pub const METHOD: &str = "VmRSS / RssAnon / RssFile / RssShmem / VmHWM of the shoal-peer \
     daemon from /proc/PID/status (the `shoal-peer get` clients are separate processes and not \
     counted). Idle: 2 s after /readyz answered, and again 12 s after the last round. Each round starts every download at once and \
     samples the daemon's status every sample_interval_ms until the last client exits; its peak \
     is the largest VmRSS sampled (plus one sample before and one after). VmHWM is \
     cumulative over the daemon's life, so it bounds the cold round's peak from above (up to \
     the slack of the kernel's per-CPU RSS counters) and catches spikes between samples.";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    pub downloads: u32,
    pub blobs: u32,
    pub size_mib: u64,
    pub size_bytes: u64,
    /// Extra `shoal-peer run` arguments.
    pub peer_args: Vec<String>,
    pub sample_interval_ms: u64,
    /// The daemon 2 s after it became ready, before any download.
    pub idle: ProcMemory,
    /// First round: every blob comes from the registry through the peer.
    pub cold: MemoryRound,
    /// Second round: the same downloads again, served from the peer's cache.
    pub warm: MemoryRound,
    /// The daemon 12 s after the last round, idle again.
    pub idle_again: ProcMemory,
    /// Largest sampled VmRSS of both rounds.
    pub peak_rss_bytes: u64,
    /// VmHWM at the end of the run (includes spikes between samples).
    pub hwm_bytes: u64,
    pub idle_target_bytes: u64,
    pub serving_target_bytes: u64,
    pub idle_ok: bool,
    /// `peak_rss_bytes` ≤ the serving target.
    pub serving_ok: bool,
    pub method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRound {
    pub completed: u32,
    pub failed: u32,
    /// From starting the first client until the last one exited.
    pub total_s: f64,
    pub p50_s: Option<f64>,
    /// Bytes delivered to the clients ÷ `total_s`, MiB/s.
    pub mib_per_s: f64,
    /// The sample with the largest VmRSS.
    pub peak: ProcMemory,
    pub peak_rss_bytes: u64,
    /// Status read after the last client exited.
    pub end: ProcMemory,
    pub samples: u32,
    /// CPU time the daemon used during the round, seconds.
    pub peer_cpu_s: Option<f64>,
    /// Verified bytes the daemon fetched from the registry during the round (its metrics).
    pub origin_bytes: Option<u64>,
    /// The first few failures, with the end of the client's log.
    pub errors: Vec<String>,
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "MISS"
    }
}

impl MemoryReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let blobs = if self.blobs == self.downloads {
            "every download a different blob".to_owned()
        } else {
            format!("{} distinct blobs", self.blobs)
        };
        let _ = writeln!(
            s,
            "shoal-bench memory: one shoal-peer (embedded supernode), {} concurrent downloads of \
             {} MiB ({blobs}), RSS sampled every {} ms",
            self.downloads, self.size_mib, self.sample_interval_ms
        );
        if !self.peer_args.is_empty() {
            let _ = writeln!(s, "peer arguments: {}", self.peer_args.join(" "));
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<34}{:>12}{:>12}{:>12}{:>12}{:>17}",
            "", "RSS", "anon", "file", "shmem", "target"
        );
        let serving_target = format!(
            "≤ {:.0} MiB",
            self.serving_target_bytes as f64 / f64::from(1 << 20)
        );
        let row = |s: &mut String, name: &str, m: &ProcMemory, target: String| {
            let _ = writeln!(
                s,
                "{name:<34}{:>12}{:>12}{:>12}{:>12}{target:>17}",
                mib(m.rss_bytes),
                mib(m.anon_bytes),
                mib(m.file_bytes),
                mib(m.shmem_bytes)
            );
        };
        row(
            &mut s,
            "idle",
            &self.idle,
            format!(
                "≤ {:.0} MiB {}",
                self.idle_target_bytes as f64 / f64::from(1 << 20),
                verdict(self.idle_ok)
            ),
        );
        for (name, r) in [("cold", &self.cold), ("warm", &self.warm)] {
            let ok = r.peak_rss_bytes <= self.serving_target_bytes;
            row(
                &mut s,
                &format!("peak, {name} round"),
                &r.peak,
                format!("{serving_target} {}", verdict(ok)),
            );
            row(
                &mut s,
                &format!("  after the {name} round"),
                &r.end,
                String::new(),
            );
        }
        row(
            &mut s,
            "idle again, 12 s later",
            &self.idle_again,
            String::new(),
        );
        let _ = writeln!(
            s,
            "VmHWM at the end: {} (includes spikes between samples)",
            mib(self.hwm_bytes)
        );
        if self.downloads != SERVING_TARGET_DOWNLOADS {
            let _ = writeln!(
                s,
                "note: the serving target is stated for {SERVING_TARGET_DOWNLOADS} concurrent \
                 downloads; this run had {}",
                self.downloads
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<8}{:>10}{:>10}{:>10}{:>10}{:>12}{:>16}{:>9}",
            "round", "done", "total s", "p50 s", "MiB/s", "peer CPU s", "from registry", "samples"
        );
        for (name, r) in [("cold", &self.cold), ("warm", &self.warm)] {
            let _ = writeln!(
                s,
                "{name:<8}{:>10}{:>10.2}{:>10}{:>10.0}{:>12}{:>16}{:>9}",
                format!("{}/{}", r.completed, self.downloads),
                r.total_s,
                r.p50_s.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                r.mib_per_s,
                r.peer_cpu_s
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                r.origin_bytes.map_or_else(|| "-".into(), mib),
                r.samples
            );
        }
        let _ = writeln!(
            s,
            "\nidle {}; serving {}",
            verdict(self.idle_ok),
            verdict(self.serving_ok)
        );
        for (name, r) in [("cold", &self.cold), ("warm", &self.warm)] {
            for e in &r.errors {
                let _ = writeln!(s, "{name}: {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(rss_mib: u64) -> ProcMemory {
        ProcMemory {
            rss_bytes: rss_mib << 20,
            anon_bytes: (rss_mib << 20) / 2,
            file_bytes: (rss_mib << 20) / 2,
            shmem_bytes: 0,
            hwm_bytes: rss_mib << 20,
        }
    }

    fn round(peak_mib: u64) -> MemoryRound {
        MemoryRound {
            completed: 4,
            failed: 0,
            total_s: 1.5,
            p50_s: Some(1.0),
            mib_per_s: 10.0,
            peak: mem(peak_mib),
            peak_rss_bytes: peak_mib << 20,
            end: mem(peak_mib - 1),
            samples: 30,
            peer_cpu_s: Some(0.5),
            origin_bytes: Some(8 << 20),
            errors: vec![],
        }
    }

    #[test]
    fn table_shows_verdicts() {
        let r = MemoryReport {
            downloads: 4,
            blobs: 2,
            size_mib: 2,
            size_bytes: 2 << 20,
            peer_args: vec![],
            sample_interval_ms: 50,
            idle: mem(20),
            cold: round(300),
            warm: round(40),
            idle_again: mem(20),
            peak_rss_bytes: 300 << 20,
            hwm_bytes: 301 << 20,
            idle_target_bytes: IDLE_TARGET_BYTES,
            serving_target_bytes: SERVING_TARGET_BYTES,
            idle_ok: true,
            serving_ok: false,
            method: METHOD.into(),
        };
        let t = r.table();
        assert!(t.contains("2 distinct blobs"), "{t}");
        assert!(t.contains("300.0 MiB"), "{t}");
        assert!(t.contains("≤ 64 MiB pass"), "{t}");
        assert!(t.contains("≤ 256 MiB MISS"), "{t}");
        assert!(t.contains("stated for 100"), "{t}");
        assert!(t.contains("idle pass; serving MISS"), "{t}");
    }
}
