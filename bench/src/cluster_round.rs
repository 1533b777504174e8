//! One timed round of `shoal-bench cluster` (see `cluster`): every node's client released at
//! once (see `start_gate`), each awaited until the timeout, while the switch's port counters
//! are sampled into a link-rate timeline. Every round (P2P, direct pulls, TCP split) shares
//! it; only the client's arguments differ. Kept apart so that the measuring lives in one
//! place, away from process setup.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;
use tokio::process::Child;

use crate::cluster::{Hosts, Setup};
use crate::netns::{self, HostBytes, Namespace, HOST_IFACE};
use crate::processes;
use crate::report::{NodeResult, RoundReport, TimelinePoint};
use crate::start_gate::{self, Gate};

/// Starts `shoal-bench internal --gate ARGS` with `args(output)` on every node, releases
/// them all at once through the [`Gate`] and waits for each (until the timeout). A node counts
/// as done when its command exits 0: every client only writes the output once it is complete
/// and matches the digest. Meanwhile every link's counters are sampled from the switch.
pub(crate) async fn timed_round<F>(
    setup: &Setup,
    hosts: &Hosts<'_>,
    round: &str,
    mut args: F,
) -> Result<RoundReport>
where
    F: FnMut(&Path) -> Result<Vec<OsString>>,
{
    let exe = processes::self_exe()?;
    let mut started = Vec::new();
    for (i, host) in hosts.nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let dir = setup.work.join(&name);
        std::fs::create_dir_all(&dir)?;
        let out_path = dir.join(format!("{round}.blob"));
        let log = setup.logs.join(format!("{round}-{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = start_gate::spawn(host.ns.command(&exe), &args(&out_path)?, log_file)
            .with_context(|| format!("starting the {round} client on {name}"));
        started.push((name, host.ip, child, log, out_path));
    }
    let mut children: Vec<&mut Child> = started
        .iter_mut()
        .filter_map(|(_, _, child, _, _)| child.as_mut().ok())
        .collect();
    let gate = Gate::ready(&mut children).await;

    let egress_before = hosts.origin.ns.counter(HOST_IFACE, "tx_bytes")?;
    let tcp_before = hosts.origin.ns.tcp_stats()?;
    let ports_before = netns::port_counters(hosts.switch).await?;
    let cpu_before = CpuTimes::now();
    let t0 = Instant::now();
    gate.open().await;
    let deadline = tokio::time::Instant::from_std(t0 + setup.timeout);
    let mut waits = Vec::new();
    for (name, ip, child, log, out_path) in started {
        waits.push(async move {
            let outcome = processes::wait_client(child, deadline).await;
            let seconds = t0.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(&out_path); // the copy itself is not needed any more
            NodeResult {
                node: name,
                ip: ip.to_string(),
                ok: outcome.is_ok(),
                seconds,
                error: outcome.err().map(|e| {
                    format!(
                        "{e}; last lines of {}: {}",
                        log.display(),
                        processes::log_tail(&log, 5).replace('\n', " | ")
                    )
                }),
                sent_bytes: 0,
                received_bytes: 0,
            }
        });
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let all_done = async move {
        let results = join_all(waits).await;
        let _ = stop.send(true);
        results
    };
    let (mut node_results, samples) =
        tokio::join!(all_done, sample_links(hosts.switch, t0, stopped));
    let (cpu_busy, cpu_steal) = CpuTimes::shares_until_now(cpu_before);
    let egress_after = hosts.origin.ns.counter(HOST_IFACE, "tx_bytes")?;
    let tcp = hosts.origin.ns.tcp_stats()?.since(tcp_before);
    let ports_after = netns::port_counters(hosts.switch).await?;
    for (result, host) in node_results.iter_mut().zip(&hosts.nodes) {
        let d = netns::port_delta(&ports_before, &ports_after, &host.switch_port);
        result.sent_bytes = d.sent;
        result.received_bytes = d.received;
    }
    Ok(RoundReport {
        completed: 0,
        failed: 0,
        last_s: None,
        ratio_to_bound: None,
        p50_s: None,
        p99_s: None,
        origin_egress_bytes: egress_after.saturating_sub(egress_before),
        origin_egress_ratio: 0.0,
        origin_retransmitted_segments: tcp.retransmitted_segments,
        origin_tcp_timeouts: tcp.timeouts,
        origin_uplink_busy: 0.0,
        node_uplink_busy: 0.0,
        node_downlink_busy: 0.0,
        cpu_busy,
        cpu_steal,
        peers: None,
        timeline: timeline(&samples, hosts),
        node_results,
    })
}

/// The machine's CPU time counters (`/proc/stat`, all cores), in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    idle: u64,
    /// Time the hypervisor ran something else while this machine's cores wanted to run.
    steal: u64,
    total: u64,
}

impl CpuTimes {
    pub(crate) fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice, already in user].
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        let steal = v.get(7).copied().unwrap_or(0);
        let total = v.iter().take(8).sum();
        Some(CpuTimes { idle, steal, total })
    }

    /// [`CpuTimes::shares_since`] from `before` until now; zeros when a reading failed.
    pub(crate) fn shares_until_now(before: Option<CpuTimes>) -> (f64, f64) {
        match (before, CpuTimes::now()) {
            (Some(a), Some(b)) => b.shares_since(a),
            _ => (0.0, 0.0),
        }
    }

    /// Shares of all cores' time since `before` that were busy (steal included) and stolen.
    pub(crate) fn shares_since(self, before: CpuTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total);
        let idle = self.idle.saturating_sub(before.idle);
        let steal = self.steal.saturating_sub(before.steal);
        if total == 0 {
            return (0.0, 0.0);
        }
        (
            total.saturating_sub(idle) as f64 / total as f64,
            steal as f64 / total as f64,
        )
    }
}

const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Port counters every [`SAMPLE_EVERY`] until `stop` turns true: (seconds since t0, counters).
async fn sample_links(
    switch: &Namespace,
    t0: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(f64, HashMap<String, HostBytes>)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Stamp the sample halfway through reading it: `ip` takes a few ms to start.
        let before = t0.elapsed().as_secs_f64();
        if let Ok(c) = netns::port_counters(switch).await {
            samples.push(((before + t0.elapsed().as_secs_f64()) / 2.0, c));
        }
    }
    samples
}

/// Link rates between consecutive samples, in Mbit/s.
fn timeline(
    samples: &[(f64, HashMap<String, HostBytes>)],
    hosts: &Hosts<'_>,
) -> Vec<TimelinePoint> {
    let origin_port = &hosts.origin.switch_port;
    let n = hosts.nodes.len().max(1) as f64;
    samples
        .windows(2)
        .map(|w| {
            let ((t1, a), (t2, b)) = (&w[0], &w[1]);
            let dt = (t2 - t1).max(1e-6);
            let mbit = |bytes: u64| bytes as f64 * 8.0 / dt / 1e6;
            let (mut up, mut down) = (0, 0);
            for h in &hosts.nodes {
                let d = netns::port_delta(a, b, &h.switch_port);
                up += d.sent;
                down += d.received;
            }
            TimelinePoint {
                t_s: *t2,
                origin_up_mbit: mbit(netns::port_delta(a, b, origin_port).sent),
                node_down_mbit: mbit(down) / n,
                node_up_mbit: mbit(up) / n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_share_from_proc_stat() {
        let a = CpuTimes::parse("cpu  100 0 50 800 50 0 0 10 0 0\ncpu0 1 2 3\n").unwrap();
        let b = CpuTimes::parse("cpu  250 0 100 850 50 0 0 35 0 0\n").unwrap();
        // 225 busy ticks (25 of them stolen) out of 275.
        let (busy, steal) = b.shares_since(a);
        assert!((busy - 225.0 / 275.0).abs() < 1e-9, "{busy}");
        assert!((steal - 25.0 / 275.0).abs() < 1e-9, "{steal}");
        assert!(CpuTimes::parse("intr 1 2\n").is_none());
    }
}
