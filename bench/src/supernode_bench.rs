//! `shoal-bench supernode`: many simulated peers on one hot task against one supernode.
//!
//! Every simulated peer announces itself and registers on the task; then, for the measured
//! phase, each alternates a schedule request (`capacity` pieces, `wait_ms` 0) with a report
//! of the pieces it was just assigned, as if every transfer had succeeded at once. A peer
//! that completes the task leaves it and registers again, so the load never runs dry. Piece
//! digests are `sha256(piece index as 4 little-endian bytes)` for everyone, so whichever peer
//! records a piece first, every later report agrees. A fixed number of workers keep that
//! many requests in flight; each worker drives its share of the peers round-robin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_common::api::{
    codes, ErrorBody, FailReason, PeerAnnounce, PieceDone, PieceFailed, PieceReport, RegisterTask,
    ReportReply, ScheduleReply, ScheduleRequest,
};
use shoal_common::{Digest, PieceLayout, TaskId};

use crate::cli::SupernodeArgs;
use crate::processes::{self, Daemon, Daemons};
use crate::report::{Latency, SupernodeReport};
use crate::stats;

const TARGET_P99_MS: f64 = 50.0;
const MAX_ERROR_SAMPLES: usize = 5;

pub async fn main(args: SupernodeArgs) -> Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn run(args: &SupernodeArgs) -> Result<SupernodeReport> {
    let work = tempfile::Builder::new()
        .prefix("shoal-bench-sn-")
        .tempdir()?;
    let logs = args
        .keep_logs
        .clone()
        .unwrap_or_else(|| work.path().to_owned());
    std::fs::create_dir_all(&logs)?;
    let mut daemons = Daemons::default();
    let base = match &args.supernode_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-supernode")?;
            let port = shoal_testkit::free_port();
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .args(&args.supernode_args)
                // Quiet by default (a flag in --supernode-arg wins over the environment).
                .env("SHOAL_LOG_LEVEL", "warn");
            daemons.push(Daemon::spawn(
                "shoal-supernode",
                cmd,
                &logs.join("supernode.log"),
            )?);
            format!("http://127.0.0.1:{port}")
        }
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency as usize)
        .timeout(Duration::from_secs(30))
        .build()?;
    let ready = format!("{base}/readyz");
    processes::wait_until(
        "shoal-supernode",
        Duration::from_secs(30),
        &mut daemons,
        || {
            let req = client.get(&ready).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        },
    )
    .await?;

    let task = TaskId::Content(Digest::of(b"shoal-bench supernode hot task"));
    let layout = PieceLayout::new(u64::from(args.pieces) * args.piece_size, args.piece_size)
        .context("task layout")?;
    let sim = Arc::new(Sim {
        client,
        base: base.clone(),
        task_url: format!("{base}/api/v1/tasks/{task}"),
        layout,
        capacity: args.capacity,
        digests: (0..args.pieces)
            .map(|p| Digest::of(&p.to_le_bytes()))
            .collect(),
    });

    eprintln!("announcing and registering {} peers on {base}", args.peers);
    let setup_start = Instant::now();
    let joined: Vec<Result<()>> = futures::stream::iter(0..args.peers)
        .map(|i| {
            let sim = sim.clone();
            async move { sim.join(&peer_id(i), i).await }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    if let Some(Err(e)) = joined.into_iter().find(Result::is_err) {
        return Err(e.context("setting up the simulated peers"));
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    eprintln!("measuring for {} s", args.duration);
    let cpu_before = daemons.0.first().and_then(Daemon::cpu_time);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let workers = args.concurrency.min(args.peers);
    let mut handles = Vec::new();
    for w in 0..workers {
        let peers: Vec<SimPeer> = (w..args.peers)
            .step_by(workers as usize)
            .map(SimPeer::new)
            .collect();
        handles.push(tokio::spawn(sim.clone().worker(peers, deadline)));
    }
    let mut total = WorkerStats::default();
    for h in handles {
        total.merge(h.await.context("a worker panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = daemons.0.first().and_then(Daemon::cpu_time);
    let rss = daemons.0.first().and_then(Daemon::rss_bytes);
    daemons.check_alive()?;

    let mut lat = total.schedule_latency_ms;
    lat.sort_by(f64::total_cmp);
    let latency = Latency {
        p50: stats::percentile(&lat, 50.0).unwrap_or(0.0),
        p99: stats::percentile(&lat, 99.0).unwrap_or(0.0),
        max: lat.last().copied().unwrap_or(0.0),
        mean: if lat.is_empty() {
            0.0
        } else {
            lat.iter().sum::<f64>() / lat.len() as f64
        },
    };
    let requests = total.schedules + total.reports + total.other;
    Ok(SupernodeReport {
        peers: args.peers,
        pieces: args.pieces,
        piece_size: args.piece_size,
        concurrency: args.concurrency,
        capacity: args.capacity,
        setup_s,
        setup_requests_per_s: 2.0 * f64::from(args.peers) / setup_s.max(1e-9),
        duration_s: elapsed,
        requests,
        requests_per_s: requests as f64 / elapsed.max(1e-9),
        schedule_requests: total.schedules,
        report_requests: total.reports,
        other_requests: total.other,
        errors: total.errors,
        error_samples: total.error_samples,
        schedule_latency_ms: latency,
        pieces_assigned: total.assigned,
        origin_assignments: total.origin_assigned,
        pieces_accepted: total.accepted,
        pieces_rejected: total.rejected,
        empty_schedules: total.empty,
        peers_completed: total.completed,
        supernode_cpu_cores: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / elapsed.max(1e-9)),
            _ => None,
        },
        supernode_rss_bytes: rss,
        target_p99_ms: TARGET_P99_MS,
    })
}

fn peer_id(i: u32) -> String {
    format!("sim-{i:06}")
}

struct Sim {
    client: reqwest::Client,
    base: String,
    task_url: String,
    layout: PieceLayout,
    capacity: u32,
    digests: Vec<Digest>,
}

struct SimPeer {
    index: u32,
    id: String,
    /// Assigned and not reported yet: piece and where it "came from" (`None`: origin).
    pending: Vec<(u32, Result<Option<String>, ()>)>,
}

impl SimPeer {
    fn new(index: u32) -> Self {
        SimPeer {
            index,
            id: peer_id(index),
            pending: Vec::new(),
        }
    }
}

#[derive(Default)]
struct WorkerStats {
    schedules: u64,
    reports: u64,
    other: u64,
    errors: u64,
    error_samples: Vec<String>,
    schedule_latency_ms: Vec<f64>,
    assigned: u64,
    origin_assigned: u64,
    accepted: u64,
    rejected: u64,
    empty: u64,
    completed: u64,
}

impl WorkerStats {
    fn merge(&mut self, o: WorkerStats) {
        self.schedules += o.schedules;
        self.reports += o.reports;
        self.other += o.other;
        self.errors += o.errors;
        for e in o.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(e);
            }
        }
        self.schedule_latency_ms.extend(o.schedule_latency_ms);
        self.assigned += o.assigned;
        self.origin_assigned += o.origin_assigned;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.empty += o.empty;
        self.completed += o.completed;
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(e.to_string());
        }
    }
}

/// A failed API call: the supernode's error code when it sent one.
struct CallError {
    code: Option<String>,
    message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Sim {
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<R, CallError> {
        let mut req = self.client.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let fail = |message: String| CallError {
            code: None,
            message,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| fail(format!("{method} {url}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("{method} {url}: {e}")))?;
        if !status.is_success() {
            let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            return Err(CallError {
                code: parsed.as_ref().map(|b| b.code.clone()),
                message: format!(
                    "{method} {url}: HTTP {status}: {}",
                    parsed.map_or_else(
                        || String::from_utf8_lossy(&bytes).into_owned(),
                        |b| b.message
                    )
                ),
            });
        }
        if bytes.is_empty() {
            // Endpoints that answer with no body (DELETE) deserialize from `null`.
            return serde_json::from_slice(b"null").map_err(|e| fail(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("{method} {url}: bad reply: {e}")))
    }

    /// Announce + register.
    async fn join(&self, id: &str, index: u32) -> Result<()> {
        let announce = PeerAnnounce {
            peer_id: id.to_owned(),
            addr: std::net::SocketAddr::from((
                [
                    10,
                    128 + (index >> 16) as u8,
                    (index >> 8) as u8,
                    index as u8,
                ],
                65002,
            )),
            upload_capacity: 12_500_000,
            labels: Default::default(),
            instance: 0,
        };
        let url = format!("{}/api/v1/peers", self.base);
        self.call::<_, serde_json::Value>(reqwest::Method::POST, &url, Some(&announce))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.register(id).await.map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn register(&self, id: &str) -> Result<(), CallError> {
        let reg = RegisterTask {
            peer_id: id.to_owned(),
            url: "http://origin.invalid/v2/bench/blobs/hot".into(),
            layout: Some(self.layout),
            have: None,
            digests: Vec::new(),
        };
        let url = format!("{}/peers", self.task_url);
        self.call::<_, serde_json::Value>(reqwest::Method::POST, &url, Some(&reg))
            .await
            .map(drop)
    }

    async fn worker(self: Arc<Self>, mut peers: Vec<SimPeer>, deadline: Instant) -> WorkerStats {
        let mut st = WorkerStats::default();
        'outer: loop {
            for p in peers.iter_mut() {
                if Instant::now() >= deadline {
                    break 'outer;
                }
                let result = if p.pending.is_empty() {
                    self.schedule(p, &mut st).await
                } else {
                    self.report(p, &mut st).await
                };
                if let Err(e) = result {
                    if e.code.as_deref() == Some(codes::PEER_UNKNOWN) {
                        // Forgotten (e.g. expired): join again, as a real peer would.
                        st.other += 2;
                        p.pending.clear();
                        if let Err(e) = self.join(&p.id, p.index).await {
                            st.error(e);
                        }
                    }
                    st.error(e);
                }
            }
        }
        st
    }

    async fn schedule(&self, p: &mut SimPeer, st: &mut WorkerStats) -> Result<(), CallError> {
        let req = ScheduleRequest {
            peer_id: p.id.clone(),
            capacity: self.capacity,
            wait_ms: 0,
            avoid: Vec::new(),
            ..Default::default()
        };
        let url = format!("{}/schedule", self.task_url);
        let t = Instant::now();
        let reply: ScheduleReply = self.call(reqwest::Method::POST, &url, Some(&req)).await?;
        st.schedule_latency_ms
            .push(t.elapsed().as_secs_f64() * 1000.0);
        st.schedules += 1;
        if reply.done {
            st.completed += 1;
            st.other += 2;
            let leave = format!("{}/peers/{}", self.task_url, p.id);
            self.call::<(), serde_json::Value>(reqwest::Method::DELETE, &leave, None)
                .await?;
            return self.register(&p.id).await;
        }
        if reply.assignments.is_empty() {
            st.empty += 1;
        }
        for a in reply.assignments {
            st.assigned += 1;
            let expected = self.digests.get(a.piece as usize);
            if let (Some(got), Some(want)) = (a.sha256, expected) {
                if got != *want {
                    st.error(format!(
                        "piece {} assigned with digest {got}, expected {want}",
                        a.piece
                    ));
                }
            }
            let source = match (a.parents.first(), a.origin) {
                (Some(parent), _) => Ok(Some(parent.peer_id.clone())),
                (None, true) => {
                    st.origin_assigned += 1;
                    Ok(None)
                }
                (None, false) => Err(()),
            };
            p.pending.push((a.piece, source));
        }
        Ok(())
    }

    async fn report(&self, p: &mut SimPeer, st: &mut WorkerStats) -> Result<(), CallError> {
        let mut report = PieceReport {
            peer_id: p.id.clone(),
            done: Vec::new(),
            failed: Vec::new(),
            uploads_cut: Vec::new(),
        };
        for (piece, source) in p.pending.drain(..) {
            match (source, self.digests.get(piece as usize)) {
                (Ok(from), Some(d)) => report.done.push(PieceDone {
                    piece,
                    sha256: *d,
                    from,
                    millis: 50,
                }),
                _ => report.failed.push(PieceFailed {
                    piece,
                    parent: None,
                    reason: FailReason::Abandoned,
                    refused: false,
                }),
            }
        }
        let url = format!("{}/reports", self.task_url);
        let reply: ReportReply = self
            .call(reqwest::Method::POST, &url, Some(&report))
            .await?;
        st.reports += 1;
        st.accepted += u64::from(reply.accepted);
        st.rejected += reply.rejected.len() as u64;
        if !reply.rejected.is_empty() {
            st.error(format!("{} rejected pieces {:?}", p.id, reply.rejected));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_are_valid_and_distinct() {
        for i in [0, 1, 4999, 999_999] {
            shoal_common::api::validate_peer_id(&peer_id(i)).unwrap();
        }
        assert_ne!(peer_id(1), peer_id(10));
    }
}
