//! Prometheus metrics, all prefixed `shoal_supernode_`, registered into the registry the
//! embedding program passes in.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::error::Error;

const PREFIX: &str = "shoal_supernode_";

pub(crate) struct Metrics {
    registry: Registry,
    pub peers: IntGauge,
    pub tasks: IntGauge,
    /// `result`: `assigned`, `empty`, `done`.
    pub schedule_requests: IntCounterVec,
    /// Compute time of one schedule pass (long-poll waiting excluded).
    pub schedule_duration: Histogram,
    /// `source`: `peer`, `origin`.
    pub assignments: IntCounterVec,
    /// `result`: `accepted`, `rejected`.
    pub pieces_reported: IntCounterVec,
    /// `reason`: a `FailReason` in snake case, or `digest_mismatch`.
    pub piece_failures: IntCounterVec,
    pub peers_expired: IntCounter,
    pub parents_down: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, Error> {
        let name = |n: &str| format!("{PREFIX}{n}");
        let peers = IntGauge::with_opts(Opts::new(name("peers"), "Live peers."))?;
        let tasks = IntGauge::with_opts(Opts::new(name("tasks"), "Tasks known."))?;
        let schedule_requests = IntCounterVec::new(
            Opts::new(
                name("schedule_requests_total"),
                "Schedule replies, by result (assigned, empty, done).",
            ),
            &["result"],
        )?;
        let schedule_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("schedule_duration_seconds"),
                "Time to compute one schedule, excluding long-poll waiting.",
            )
            .buckets(vec![
                0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
            ]),
        )?;
        let assignments = IntCounterVec::new(
            Opts::new(
                name("assignments_total"),
                "Pieces assigned, by source (peer, origin).",
            ),
            &["source"],
        )?;
        let pieces_reported = IntCounterVec::new(
            Opts::new(
                name("pieces_reported_total"),
                "Finished pieces reported, by result (accepted, rejected).",
            ),
            &["result"],
        )?;
        let piece_failures = IntCounterVec::new(
            Opts::new(
                name("piece_failures_total"),
                "Failed piece transfers reported, by reason.",
            ),
            &["reason"],
        )?;
        let peers_expired = IntCounter::with_opts(Opts::new(
            name("peers_expired_total"),
            "Peers forgotten for missing their heartbeats.",
        ))?;
        let parents_down = IntCounter::with_opts(Opts::new(
            name("parents_down_total"),
            "Parents taken out of a task's scheduling because their children could not reach them (refused connections, or stalls reported by several children).",
        ))?;
        registry.register(Box::new(parents_down.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(schedule_requests.clone()))?;
        registry.register(Box::new(schedule_duration.clone()))?;
        registry.register(Box::new(assignments.clone()))?;
        registry.register(Box::new(pieces_reported.clone()))?;
        registry.register(Box::new(piece_failures.clone()))?;
        registry.register(Box::new(peers_expired.clone()))?;
        Ok(Metrics {
            registry: registry.clone(),
            peers,
            tasks,
            schedule_requests,
            schedule_duration,
            assignments,
            pieces_reported,
            piece_failures,
            peers_expired,
            parents_down,
        })
    }

    /// Everything in the registry (including metrics others registered) in the text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}
