//! Results of `shoal-bench lazy-cluster` (see `lazy_cluster`): JSON (the stable form, which the
//! smoke test parses) or a table for people. The ratios the issue sets targets for are
//! computed here, in one place, from the raw counts the rounds collect, so the JSON keeps both.

use std::fmt::Write as _;

use serde::Serialize;

use crate::lazy_index::SetNeeds;
use crate::lazyfs_report::met;
use crate::report::seconds;
use crate::stats;

/// Issue 17's targets.
const TARGET_EGRESS: f64 = 1.2;
const TARGET_LAST_OVER_ALONE: f64 = 1.5;
const TARGET_FIRST_READ_S: f64 = 1.0;
const TARGET_FIRST_READ_BYTES: u64 = 3 << 19; // 1.5 MiB

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LazyClusterReport {
    /// The namespaces were named `shb-RUN-*`.
    pub(crate) run: String,
    pub(crate) nodes: u32,
    pub(crate) rate_mbit: u32,
    /// Whether the startup set's files lie first in the data blob (`--startup-first`).
    pub(crate) startup_first: bool,
    /// The qdisc on both ends of every link.
    pub(crate) tbf: String,
    pub(crate) host_sysctls: Vec<String>,
    pub(crate) files: usize,
    pub(crate) tree_bytes: u64,
    pub(crate) convert_s: f64,
    /// The startup set (every 20th file) and what it needs from the image.
    pub(crate) set: SetNeeds,
    /// Round 0: mount → first small file, one node, fresh each time.
    pub(crate) first_reads: Vec<FirstRead>,
    /// Round 1: one node mounts and reads the startup set alone.
    pub(crate) alone: ReadRound,
    /// Round 2: every node mounts and reads it at once.
    pub(crate) together: ReadRound,
    pub(crate) summary: Summary,
}

/// One cold mount → first small file read.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct FirstRead {
    pub(crate) seconds: f64,
    /// What the node's link delivered to it meanwhile (its switch port), index included.
    pub(crate) node_link_bytes: u64,
    pub(crate) origin_egress_bytes: u64,
}

/// One round of nodes mounting and reading the startup set, released together.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReadRound {
    pub(crate) completed: u32,
    pub(crate) failed: u32,
    /// From the release until the last node's reader exited (all its bytes verified).
    pub(crate) last_s: Option<f64>,
    pub(crate) p50_s: Option<f64>,
    /// What the origin's link carried from the release to the end (frames and headers
    /// included; the origin runs only the registry).
    pub(crate) origin_egress_bytes: u64,
    /// Share of the origin's uplink capacity that carried it, from the release until the last
    /// node was done: well under 1 means the nodes waited on round trips, not on the origin.
    pub(crate) origin_uplink_busy: f64,
    /// Share of the machine's CPU time (all cores) busy during the round, and the part the
    /// hypervisor stole.
    pub(crate) cpu_busy: f64,
    pub(crate) cpu_steal: f64,
    pub(crate) node_results: Vec<NodeRun>,
}

/// One node's part of a round.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct NodeRun {
    pub(crate) node: String,
    pub(crate) ok: bool,
    /// From the release until its reader exited.
    pub(crate) seconds: f64,
    /// The reader's own clock (from its release): the mount's first file visible, and the
    /// whole set read and compared.
    pub(crate) mounted_s: Option<f64>,
    pub(crate) read_s: Option<f64>,
    /// The node's link, from the switch port.
    pub(crate) received_bytes: u64,
    pub(crate) sent_bytes: u64,
    /// The mount's `/metrics`: compressed chunk bytes and range requests it fetched (all
    /// through the peer: the mount runs with `--no-fallback`), failed attempts, EIO reads.
    pub(crate) mount_fetch_bytes: u64,
    pub(crate) mount_fetch_requests: u64,
    pub(crate) mount_fetch_errors: u64,
    pub(crate) mount_read_errors: u64,
    /// The peer's `/metrics`: bytes it downloaded by source and uploaded to other peers.
    pub(crate) peer_from_origin_bytes: u64,
    pub(crate) peer_from_peers_bytes: u64,
    pub(crate) peer_uploaded_bytes: u64,
    pub(crate) error: Option<String>,
}

impl ReadRound {
    /// Fills in the counts and times from the node results; `rate_mbit` is every link's rate.
    pub(crate) fn finish(&mut self, rate_mbit: u32) {
        let done = stats::Completion::of(self.node_results.iter().map(|n| (n.ok, n.seconds)));
        (self.completed, self.failed, self.last_s) = (done.completed, done.failed, done.last_s);
        self.p50_s = stats::percentile(&done.times, 50.0);
        if let Some(last) = done.times.last().filter(|&&t| t > 0.0) {
            let capacity = f64::from(rate_mbit) * 1e6 / 8.0 * last;
            self.origin_uplink_busy = self.origin_egress_bytes as f64 / capacity;
        }
    }
}

/// The figures and whether each target is met.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    /// Round 2's last node ÷ round 1's node (target ≤ 1.5).
    pub(crate) last_over_alone: Option<f64>,
    pub(crate) last_over_alone_ok: Option<bool>,
    /// The ratio the egress target (≤ 1.2) is checked on: round 2's origin egress ÷
    /// (the index blob + the set's compressed chunks), the least any node must fetch.
    pub(crate) egress_over_set: f64,
    pub(crate) egress_over_set_ok: bool,
    /// The same egress ÷ (index + the pieces covering the set's chunks): the least a peer
    /// fetching whole pieces from the origin must cause.
    pub(crate) egress_over_set_pieces: f64,
    /// The same egress ÷ the set's file bytes (uncompressed).
    pub(crate) egress_over_set_files: f64,
    /// The same egress ÷ round 1's: copies of what one node alone made the origin send.
    pub(crate) egress_over_alone: f64,
    /// Round 0's medians and their targets (≤ 1 s, ≤ 1.5 MiB over the node's link).
    pub(crate) first_read_median_s: Option<f64>,
    pub(crate) first_read_median_node_bytes: Option<u64>,
    pub(crate) first_read_ok: Option<bool>,
}

impl LazyClusterReport {
    pub(crate) fn summarize(&mut self) {
        let egress = self.together.origin_egress_bytes as f64;
        let per = |d: u64| egress / (d.max(1)) as f64;
        let s = &self.set;
        let last_over_alone = match (self.together.last_s, self.alone.last_s) {
            (Some(n), Some(one)) if one > 0.0 => Some(n / one),
            _ => None,
        };
        let egress_over_set = per(s.index_bytes + s.chunk_bytes);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let first_s = median(self.first_reads.iter().map(|r| r.seconds).collect());
        let first_b = median(
            self.first_reads
                .iter()
                .map(|r| r.node_link_bytes as f64)
                .collect(),
        )
        .map(|b| b as u64);
        self.summary = Summary {
            last_over_alone,
            last_over_alone_ok: last_over_alone.map(|r| r <= TARGET_LAST_OVER_ALONE),
            egress_over_set,
            egress_over_set_ok: egress_over_set <= TARGET_EGRESS,
            egress_over_set_pieces: per(s.index_bytes + s.piece_bytes),
            egress_over_set_files: per(s.file_bytes),
            egress_over_alone: per(self.alone.origin_egress_bytes),
            first_read_median_s: first_s,
            first_read_median_node_bytes: first_b,
            first_read_ok: first_s
                .zip(first_b)
                .map(|(t, b)| t <= TARGET_FIRST_READ_S && b <= TARGET_FIRST_READ_BYTES),
        };
    }

    pub(crate) fn table(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let s = &self.set;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\nlazyfs on {} nodes: {} files, {:.1} MB ({:.2} GiB); every link {} Mbit/s ({})",
            self.nodes,
            self.files,
            mb(self.tree_bytes),
            self.tree_bytes as f64 / f64::from(1u32 << 30),
            self.rate_mbit,
            self.tbf
        );
        let _ = writeln!(
            t,
            "image: index {:.2} MB, data blob {:.1} MB (converted in {:.1} s); startup set's \
             files {}",
            mb(s.index_bytes),
            mb(s.data_blob_bytes),
            self.convert_s,
            if self.startup_first {
                "laid out first (--startup-first)"
            } else {
                "spread over the blob"
            }
        );
        let _ = writeln!(
            t,
            "startup set: {} files, {:.1} MB of file data; {} chunks, {:.1} MB compressed; \
             {} pieces of {} KiB cover them: {:.1} MB",
            s.files,
            mb(s.file_bytes),
            s.chunks,
            mb(s.chunk_bytes),
            s.pieces,
            s.piece_size >> 10,
            mb(s.piece_bytes)
        );
        let covers: Vec<String> = s
            .by_piece_size
            .iter()
            .map(|c| format!("{} KiB {:.1} MB", c.piece_size >> 10, mb(c.bytes)))
            .collect();
        let _ = writeln!(t, "  covered by pieces of {}", covers.join(", "));
        for (i, r) in self.first_reads.iter().enumerate() {
            let _ = writeln!(
                t,
                "round 0.{}: mount → first small file [peer]: {:.3} s, {:.2} MB over the node's \
                 link, origin sent {:.2} MB",
                i + 1,
                r.seconds,
                mb(r.node_link_bytes),
                mb(r.origin_egress_bytes)
            );
        }
        if let (Some(ts), Some(b), Some(ok)) = (
            self.summary.first_read_median_s,
            self.summary.first_read_median_node_bytes,
            self.summary.first_read_ok,
        ) {
            let _ = writeln!(
                t,
                "  median {ts:.3} s, {:.2} MB (targets ≤ 1 s, ≤ 1.5 MiB: {})",
                mb(b),
                met(ok)
            );
        }
        for (name, r) in [
            ("1 (one node alone)", &self.alone),
            ("2 (all at once)", &self.together),
        ] {
            let _ = writeln!(
                t,
                "round {name}: last node {}, p50 {}, {} of {} done; origin sent {:.1} MB \
                 (uplink {:.0} % busy); CPU {:.0} % busy",
                seconds(r.last_s),
                seconds(r.p50_s),
                r.completed,
                r.node_results.len(),
                mb(r.origin_egress_bytes),
                r.origin_uplink_busy * 100.0,
                r.cpu_busy * 100.0
            );
        }
        let _ = writeln!(
            t,
            "{:<6} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}",
            "node",
            "done",
            "mounted",
            "read",
            "link in",
            "link out",
            "mount got",
            "ranges",
            "peer←orig",
            "peer←peers"
        );
        for n in self
            .alone
            .node_results
            .iter()
            .chain(&self.together.node_results)
        {
            let _ = writeln!(
                t,
                "{:<6} {:>8} {:>8} {:>8} {:>7.1} MB {:>7.1} MB {:>7.1} MB {:>9} {:>7.1} MB {:>7.1} MB{}",
                n.node,
                seconds(Some(n.seconds)),
                seconds(n.mounted_s),
                seconds(n.read_s),
                mb(n.received_bytes),
                mb(n.sent_bytes),
                mb(n.mount_fetch_bytes),
                n.mount_fetch_requests,
                mb(n.peer_from_origin_bytes),
                mb(n.peer_from_peers_bytes),
                n.error
                    .as_deref()
                    .map_or_else(String::new, |e| format!("  FAILED: {e}"))
            );
        }
        let m = &self.summary;
        if let Some(r) = m.last_over_alone {
            let _ = writeln!(
                t,
                "last node ÷ one node alone: {r:.2} (target ≤ {TARGET_LAST_OVER_ALONE}: {})",
                met(r <= TARGET_LAST_OVER_ALONE)
            );
        }
        let _ = writeln!(
            t,
            "origin egress ÷ (index + the set's compressed chunks): {:.2} (target ≤ \
             {TARGET_EGRESS}: {}); ÷ (index + covering pieces) {:.2}; ÷ file bytes {:.2}; \
             ÷ one node alone's {:.2}",
            m.egress_over_set,
            met(m.egress_over_set_ok),
            m.egress_over_set_pieces,
            m.egress_over_set_files,
            m.egress_over_alone
        );
        t
    }
}
