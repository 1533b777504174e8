//! Results of both benchmarks, as JSON (the stable form, parsed by the smoke tests) and as a
//! table for people, and the summary a cluster round's node results boil down to.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterReport {
    /// Run id: the namespaces were named `shb-RUN-*`.
    pub run: String,
    pub nodes: u32,
    pub rate_mbit: u32,
    pub size_mib: u64,
    pub size_bytes: u64,
    /// Requested piece size; `None`: the supernode's default for the length.
    pub piece_size: Option<u64>,
    /// Whether the peers accepted `--piece-size` (false when unsupported or not asked).
    pub piece_size_applied: bool,
    pub supernodes: u32,
    /// How the nodes fetched from their peers in the P2P round.
    #[serde(default)]
    pub client: Option<crate::cli::P2pClient>,
    pub digest: String,
    /// The qdisc on both ends of every link.
    pub tbf: String,
    /// Sysctls set in every simulated host (`--congestion-control`, `--min-tso-segs`,
    /// `--host-sysctl`).
    #[serde(default)]
    pub host_sysctls: Vec<String>,
    /// `max(F/u_s, F/d, N·F/(u_s + N·u))` in seconds.
    pub lower_bound_s: f64,
    pub p2p: RoundReport,
    /// Plain TCP on a static split (`--tcp-split`): the network and TCP with no application.
    #[serde(default)]
    pub tcp_split: Option<RoundReport>,
    pub baseline: Option<RoundReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub completed: u32,
    pub failed: u32,
    /// Time from the common start until the last node held a verified copy.
    pub last_s: Option<f64>,
    pub ratio_to_bound: Option<f64>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// Bytes the origin host's interface sent during the round (frames, headers included).
    pub origin_egress_bytes: u64,
    /// `origin_egress_bytes` ÷ blob size.
    pub origin_egress_ratio: f64,
    /// TCP segments the origin host retransmitted during the round (losses at the shaped
    /// links), and its retransmission timeouts (stalls of at least 200 ms each).
    #[serde(default)]
    pub origin_retransmitted_segments: u64,
    #[serde(default)]
    pub origin_tcp_timeouts: u64,
    /// Share of the origin's uplink capacity used over the round (until the last node).
    pub origin_uplink_busy: f64,
    /// The same for the nodes' uplinks and downlinks, averaged over the nodes.
    pub node_uplink_busy: f64,
    pub node_downlink_busy: f64,
    /// Share of the machine's CPU time (all cores) that was busy during the round: near 100 %
    /// means the simulated hosts were waiting for CPU, not for their links.
    #[serde(default)]
    pub cpu_busy: f64,
    /// The part of it the hypervisor gave to others (`steal` in `/proc/stat`): a run with
    /// much of it was slowed down by the host, not by what it simulates.
    #[serde(default)]
    pub cpu_steal: f64,
    /// Link rates sampled every 0.5 s from the switch.
    pub timeline: Vec<TimelinePoint>,
    /// Totals from the peers' `/metrics` (P2P round only).
    pub peers: Option<PeerTotals>,
    pub node_results: Vec<NodeResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerTotals {
    pub from_peers_bytes: u64,
    pub from_origin_bytes: u64,
    pub uploaded_bytes: u64,
    /// from_peers ÷ (from_peers + from_origin).
    pub p2p_share: f64,
    /// CPU time the peer daemons used during the round (user + system, summed): the cost of
    /// distribution itself, steadier from run to run than the times on this shared machine.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Largest resident set of any peer daemon at the end of the round.
    pub max_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResult {
    pub node: String,
    pub ip: String,
    pub ok: bool,
    /// Seconds from the common start to a verified copy (or to the failure).
    pub seconds: f64,
    pub error: Option<String>,
    /// Bytes the node's link carried up and down during the round (frames, from the switch).
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the common start.
    pub t_s: f64,
    pub origin_up_mbit: f64,
    /// Mean over the nodes.
    pub node_down_mbit: f64,
    pub node_up_mbit: f64,
}

impl RoundReport {
    /// Fills the summary fields from the node results.
    pub fn finish(&mut self, bound: f64, size: u64, rate_bit: f64) {
        let done = stats::Completion::of(self.node_results.iter().map(|n| (n.ok, n.seconds)));
        (self.completed, self.failed, self.last_s) = (done.completed, done.failed, done.last_s);
        self.ratio_to_bound = self.last_s.map(|t| t / bound);
        self.p50_s = stats::percentile(&done.times, 50.0);
        self.p99_s = stats::percentile(&done.times, 99.0);
        self.origin_egress_ratio = self.origin_egress_bytes as f64 / size.max(1) as f64;
        // Link use over the whole round (until the last node finished or gave up).
        let span = self
            .node_results
            .iter()
            .map(|n| n.seconds)
            .fold(0.0, f64::max)
            .max(1e-6);
        let capacity = rate_bit * span / 8.0; // bytes one link can carry in the span
        let n = self.node_results.len().max(1) as f64;
        self.origin_uplink_busy = self.origin_egress_bytes as f64 / capacity;
        self.node_uplink_busy = self
            .node_results
            .iter()
            .map(|r| r.sent_bytes as f64)
            .sum::<f64>()
            / (n * capacity);
        self.node_downlink_busy = self
            .node_results
            .iter()
            .map(|r| r.received_bytes as f64)
            .sum::<f64>()
            / (n * capacity);
    }
}

/// `1.23 s`, or `-` for none.
pub(crate) fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2} s"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.3}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl ClusterReport {
    /// The rounds that ran, named as in the table.
    pub fn rounds(&self) -> Vec<(&'static str, &RoundReport)> {
        let mut rounds = vec![("shoal p2p", &self.p2p)];
        rounds.extend(self.tcp_split.as_ref().map(|r| ("tcp split", r)));
        rounds.extend(self.baseline.as_ref().map(|r| ("direct pulls", r)));
        rounds
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let piece = match (self.piece_size, self.piece_size_applied) {
            (None, _) => "supernode default".to_owned(),
            (Some(p), true) => format!("{p} bytes"),
            (Some(p), false) => {
                format!("{p} bytes requested, NOT applied (peer lacks --piece-size)")
            }
        };
        let _ = writeln!(
            s,
            "shoal-bench cluster: {} nodes, {} Mbit/s links up and down ({}), {} MiB blob, \
             piece size: {piece}, {} supernode(s), p2p client: {}",
            self.nodes,
            self.rate_mbit,
            self.tbf,
            self.size_mib,
            self.supernodes,
            match self.client {
                Some(crate::cli::P2pClient::Mirror) => "registry mirror (as containerd)",
                Some(crate::cli::P2pClient::Get) | None => "shoal-peer get",
            }
        );
        if !self.host_sysctls.is_empty() {
            let _ = writeln!(s, "host sysctls: {}", self.host_sysctls.join(" "));
        }
        let _ = writeln!(
            s,
            "lower bound max(F/u_s, F/d, N·F/(u_s+N·u)) = {:.2} s\n",
            self.lower_bound_s
        );
        let rounds = self.rounds();
        let row = |s: &mut String, name: &str, cell: &dyn Fn(&RoundReport) -> String| {
            let _ = write!(s, "{name:<30}");
            for (_, r) in &rounds {
                let _ = write!(s, "{:>16}", cell(r));
            }
            let _ = writeln!(s);
        };
        let _ = write!(s, "{:<30}", "");
        for (name, _) in &rounds {
            let _ = write!(s, "{name:>16}");
        }
        let _ = writeln!(s);
        let n = self.nodes;
        row(&mut s, "nodes with a verified copy", &|r| {
            format!("{}/{n}", r.completed)
        });
        row(&mut s, "last node (s)", &|r| secs(r.last_s));
        row(&mut s, "  ÷ lower bound", &|r| ratio(r.ratio_to_bound));
        row(&mut s, "p50 node (s)", &|r| secs(r.p50_s));
        row(&mut s, "p99 node (s)", &|r| secs(r.p99_s));
        row(&mut s, "origin egress ÷ blob", &|r| {
            format!("{:.3}", r.origin_egress_ratio)
        });
        row(&mut s, "origin TCP retransmits / RTOs", &|r| {
            format!(
                "{} / {}",
                r.origin_retransmitted_segments, r.origin_tcp_timeouts
            )
        });
        let pct = |v: f64| format!("{:.0}%", v * 100.0);
        row(&mut s, "origin uplink busy", &|r| pct(r.origin_uplink_busy));
        row(&mut s, "node downlinks busy (mean)", &|r| {
            pct(r.node_downlink_busy)
        });
        row(&mut s, "node uplinks busy (mean)", &|r| {
            pct(r.node_uplink_busy)
        });
        row(&mut s, "machine CPU busy", &|r| pct(r.cpu_busy));
        row(&mut s, "  of it stolen by the host", &|r| {
            format!("{:.1}%", r.cpu_steal * 100.0)
        });
        if let Some(p) = &self.p2p.peers {
            let _ = writeln!(
                s,
                "shoal p2p: {:.1}% of the bytes from peers, {} from the origin, peers' CPU \
                 {:.2} s, max peer RSS {} at the end",
                p.p2p_share * 100.0,
                mib(p.from_origin_bytes),
                p.cpu_seconds,
                mib(p.max_rss_bytes)
            );
        }
        for (name, round) in &rounds {
            for n in round.node_results.iter().filter(|n| !n.ok) {
                let _ = writeln!(
                    s,
                    "{name}: {} ({}) failed after {:.1} s: {}",
                    n.node,
                    n.ip,
                    n.seconds,
                    n.error.as_deref().unwrap_or("?")
                );
            }
        }
        s
    }
}

impl ClusterReport {
    pub fn timelines(&self) -> String {
        let mut s = String::new();
        for (name, round) in self.rounds() {
            let _ = writeln!(
                s,
                "\n{name}: link rates (Mbit/s; nodes: mean per node)\n{:>7} {:>10} {:>11} {:>9} {:>6}",
                "t (s)", "origin up", "nodes down", "nodes up", "done"
            );
            for p in &round.timeline {
                let done = round
                    .node_results
                    .iter()
                    .filter(|n| n.ok && n.seconds <= p.t_s)
                    .count();
                let _ = writeln!(
                    s,
                    "{:>7.1} {:>10.1} {:>11.1} {:>9.1} {:>6}",
                    p.t_s, p.origin_up_mbit, p.node_down_mbit, p.node_up_mbit, done
                );
            }
        }
        s
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupernodeReport {
    pub peers: u32,
    pub pieces: u32,
    pub piece_size: u64,
    pub concurrency: u32,
    pub capacity: u32,
    /// Announcing and registering every peer.
    pub setup_s: f64,
    pub setup_requests_per_s: f64,
    pub duration_s: f64,
    /// Requests completed in the measured phase (all kinds).
    pub requests: u64,
    pub requests_per_s: f64,
    pub schedule_requests: u64,
    pub report_requests: u64,
    /// Re-announces and re-registrations (peers that finished the task join again).
    pub other_requests: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Client-side latency of schedule requests, milliseconds.
    pub schedule_latency_ms: Latency,
    pub pieces_assigned: u64,
    pub origin_assignments: u64,
    pub pieces_accepted: u64,
    pub pieces_rejected: u64,
    pub empty_schedules: u64,
    pub peers_completed: u64,
    /// CPU cores the supernode used on average in the measured phase (when started here).
    pub supernode_cpu_cores: Option<f64>,
    pub supernode_rss_bytes: Option<u64>,
    pub target_p99_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl SupernodeReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "shoal-bench supernode: {} simulated peers on one task of {} pieces, {} requests in \
             flight, capacity {}",
            self.peers, self.pieces, self.concurrency, self.capacity
        );
        let _ = writeln!(
            s,
            "setup (announce + register)   {:.2} s ({:.0} req/s)",
            self.setup_s, self.setup_requests_per_s
        );
        let _ = writeln!(
            s,
            "measured phase                {:.1} s: {} requests = {:.0} req/s \
             ({} schedule, {} report, {} other), {} errors",
            self.duration_s,
            self.requests,
            self.requests_per_s,
            self.schedule_requests,
            self.report_requests,
            self.other_requests,
            self.errors
        );
        let l = &self.schedule_latency_ms;
        let verdict = if l.p99 <= self.target_p99_ms {
            "within"
        } else {
            "OVER"
        };
        let _ = writeln!(
            s,
            "schedule latency (ms)         p50 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}  \
             ({verdict} the {} ms p99 target)",
            l.p50, l.p99, l.max, l.mean, self.target_p99_ms
        );
        let _ = writeln!(
            s,
            "pieces                        {} assigned ({} from origin), {} accepted, {} \
             rejected, {} empty schedules, {} peers completed",
            self.pieces_assigned,
            self.origin_assignments,
            self.pieces_accepted,
            self.pieces_rejected,
            self.empty_schedules,
            self.peers_completed
        );
        if let (Some(cpu), Some(rss)) = (self.supernode_cpu_cores, self.supernode_rss_bytes) {
            let _ = writeln!(
                s,
                "supernode process             {cpu:.2} cores busy on average, RSS {}",
                mib(rss)
            );
        }
        for e in &self.error_samples {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}
