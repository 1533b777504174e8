//! `shoal-bench cluster`: one blob from a registry to N simulated hosts, through Shoal and by
//! direct pulls.
//!
//! Hosts (network namespaces on one bridge, every link shaped RATE up and RATE down):
//! - `origin` (10.77.0.1): docker-registry only, so its interface counters are the origin's
//!   egress and nothing else;
//! - `ctl` (10.77.0.2): the supernode(s), whose small control traffic stays off the origin;
//! - `n1`…`nN` (10.77.1.x): one `shoal-peer run` each, on default ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use shoal_common::Digest;

use crate::cli::ClusterArgs;
use crate::internal::{http_ok_in, http_text_in};
use crate::netns::{self, Host, HostBytes, Namespace, Network, CONTROL_IP, HOST_IFACE, ORIGIN_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::registry;
use crate::report::{ClusterReport, NodeResult, PeerTotals, RoundReport, TimelinePoint};
use crate::shaping::{self, Tbf};
use crate::stats;

const SUPERNODE_BASE_PORT: u16 = 8002;
const PEER_METRICS: &str = "http://127.0.0.1:65003";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn main(args: ClusterArgs) -> Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        if args.timeline {
            print!("{}", report.timelines());
        }
    }
    let failed = report.p2p.failed + report.baseline.as_ref().map_or(0, |b| b.failed);
    if failed > 0 {
        bail!("{failed} node download(s) failed (see above)");
    }
    Ok(())
}

fn note(start: Instant, msg: impl std::fmt::Display) {
    eprintln!("[{:>7.2}s] {msg}", start.elapsed().as_secs_f64());
}

/// Everything one benchmark run needs to know, resolved up front.
struct Setup {
    peer_bin: PathBuf,
    supernode_bin: PathBuf,
    piece_size_flag: bool,
    timeout: Duration,
    logs: PathBuf,
    work: PathBuf,
    started: Instant,
}

async fn run(args: &ClusterArgs) -> Result<ClusterReport> {
    let started = Instant::now();
    processes::require_root()?;
    processes::require_program("ip", "iproute2")?;
    processes::require_program("tc", "iproute2")?;
    processes::require_program("docker-registry", "docker-registry")?;
    let peer_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-peer")?;
    let supernode_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-supernode")?;
    let piece_size_flag = match args.piece_size {
        Some(_) => {
            let ok = peer_supports(&peer_bin, "--piece-size").await?;
            if !ok {
                eprintln!(
                    "note: `shoal-peer run` has no --piece-size flag: the supernode's default \
                     piece size is used"
                );
            }
            ok
        }
        None => false,
    };

    // Dropped last (declared first): the work directory outlives every process using it.
    let needed = args.size_mib.saturating_mul(2 * u64::from(args.nodes) + 4) << 20;
    let work_parent = args
        .work_dir
        .clone()
        .unwrap_or_else(|| default_work_parent(needed));
    std::fs::create_dir_all(&work_parent)?;
    let work = tempfile::Builder::new()
        .prefix(netns::WORK_DIR_PREFIX)
        .tempdir_in(&work_parent)
        .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
    let logs = args
        .keep_logs
        .clone()
        .unwrap_or_else(|| work.path().join("logs"));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let size = args.size_mib << 20;
    let rate = f64::from(args.rate_mbit) * 1e6;
    let bound = stats::lower_bound_secs(size, args.nodes, rate, rate, rate);
    let direct_ideal = f64::from(args.nodes) * size as f64 * 8.0 / rate;
    let timeout = Duration::from_secs(
        args.timeout
            .unwrap_or((3.0 * direct_ideal + 60.0).ceil() as u64),
    );
    let setup = Setup {
        peer_bin,
        supernode_bin,
        piece_size_flag,
        timeout,
        logs: logs.clone(),
        work: work.path().to_owned(),
        started,
    };

    note(
        started,
        format!("generating a {} MiB random blob", args.size_mib),
    );
    let blob = work.path().join("blob");
    let digest = {
        let blob = blob.clone();
        // Off the main thread, so that a signal is handled at once.
        tokio::task::spawn_blocking(move || registry::generate_blob(&blob, size))
            .await
            .context("generating the blob")??
    };

    let run_id = std::process::id().to_string();
    // A namespace with this run's name can only be a leftover of a killed run that had our pid.
    for stale in netns::list_namespaces(&format!("{}{run_id}-", netns::PREFIX))? {
        eprintln!("removing stale namespace {stale}");
        drop(netns::Namespace::adopt(&stale));
    }
    note(
        started,
        format!(
            "creating {} hosts on a bridge, links shaped to {} Mbit/s",
            args.nodes + 2,
            args.rate_mbit
        ),
    );
    let mut net = Network::new(&run_id)?;
    let origin = net.add_host("origin", ORIGIN_IP)?;
    let ctl = net.add_host("ctl", CONTROL_IP)?;
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(net.add_host(&format!("n{}", i + 1), netns::node_ip(i))?);
    }
    let tbf = Tbf::for_rate_mbit(args.rate_mbit);
    shaping::shape_all(&net, &tbf)?;

    // Declared after `net`, so dropped before it.
    let mut origin_daemons = Daemons::default();
    note(
        started,
        "starting docker-registry and pushing the blob (over the origin's loopback)",
    );
    registry::start_with_blob(
        &net.host(origin).ns,
        work.path(),
        &logs,
        &blob,
        &digest,
        &mut origin_daemons,
    )
    .await?;
    let url = registry::blob_url(ORIGIN_IP, &digest);
    let hosts = Hosts {
        switch: net.switch(),
        origin: net.host(origin),
        ctl: net.host(ctl),
        nodes: nodes.iter().map(|&i| net.host(i)).collect(),
    };

    let mut p2p = p2p_round(args, &setup, &digest, &url, &hosts).await?;
    p2p.finish(bound, size, rate);
    note(
        started,
        format!("p2p done: last node at {}", fmt_opt(p2p.last_s)),
    );
    let baseline = if args.run_baseline() {
        note(
            started,
            "baseline: every node pulls straight from the registry",
        );
        let mut round = timed_round(&setup, &hosts, "baseline", |host, out| {
            let mut cmd = host.ns.command(processes::self_exe()?);
            cmd.args([
                "internal",
                "fetch",
                &url,
                "--digest",
                &digest.to_string(),
                "-o",
            ])
            .arg(out);
            Ok(cmd)
        })
        .await?;
        round.finish(bound, size, rate);
        note(
            started,
            format!("baseline done: last node at {}", fmt_opt(round.last_s)),
        );
        Some(round)
    } else {
        None
    };

    let report = ClusterReport {
        run: run_id.clone(),
        nodes: args.nodes,
        rate_mbit: args.rate_mbit,
        size_mib: args.size_mib,
        size_bytes: size,
        piece_size: args.piece_size,
        piece_size_applied: setup.piece_size_flag,
        supernodes: args.supernodes,
        digest: digest.to_string(),
        tbf: tbf.tc_args().join(" "),
        lower_bound_s: bound,
        p2p,
        baseline,
    };
    if args.keep_logs.is_some() {
        std::fs::write(
            logs.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        note(started, format!("logs kept in {}", logs.display()));
    }
    note(started, "tearing down");
    Ok(report)
}

/// `/dev/shm` when it has room for everything (blob, registry, every node's cache and copy):
/// the simulated hosts share this machine's one disk, and a RAM disk keeps their writes and
/// fsyncs from becoming a bottleneck no real cluster has. Else the temp dir.
pub(crate) fn default_work_parent(needed_bytes: u64) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).is_some_and(|free| free > needed_bytes + (1 << 30)) {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2} s"))
}

async fn peer_supports(peer_bin: &Path, flag: &str) -> Result<bool> {
    let out = tokio::process::Command::new(peer_bin)
        .args(["run", "--help"])
        .output()
        .await
        .with_context(|| format!("running {} run --help", peer_bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(help
        .split_whitespace()
        .any(|w| w.trim_end_matches(',') == flag || w.starts_with(&format!("{flag}="))))
}

/// The simulated hosts, by role.
struct Hosts<'a> {
    switch: &'a Namespace,
    origin: &'a Host,
    ctl: &'a Host,
    nodes: Vec<&'a Host>,
}

async fn p2p_round(
    args: &ClusterArgs,
    setup: &Setup,
    digest: &Digest,
    url: &str,
    hosts: &Hosts<'_>,
) -> Result<RoundReport> {
    let (ctl, nodes) = (hosts.ctl, &hosts.nodes);
    let started = setup.started;
    // Peers are stopped before supernodes (declaration order reversed on drop).
    let mut supernodes = Daemons::default();
    let mut sn_urls = Vec::new();
    for k in 0..args.supernodes {
        let port = SUPERNODE_BASE_PORT + k as u16;
        let mut cmd = ctl.ns.command(&setup.supernode_bin);
        cmd.arg("--listen")
            .arg(format!("{CONTROL_IP}:{port}"))
            .args(&args.supernode_args);
        supernodes.push(Daemon::spawn(
            &format!("supernode-{k}"),
            cmd,
            &setup.logs.join(format!("supernode-{k}.log")),
        )?);
        sn_urls.push(format!("http://{CONTROL_IP}:{port}"));
    }
    for sn in &sn_urls {
        let ready = format!("{sn}/readyz");
        processes::wait_until("shoal-supernode", READY_TIMEOUT, &mut supernodes, || {
            http_ok_in(&ctl.ns, &ready)
        })
        .await?;
    }
    note(
        started,
        format!(
            "{} supernode(s) ready; starting {} peers",
            sn_urls.len(),
            nodes.len()
        ),
    );

    let cache_mib = (args.size_mib * 2 + 64).max(256);
    let mut peers = Daemons::default();
    for (i, host) in nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let data = setup.work.join(&name).join("data");
        std::fs::create_dir_all(&data)?;
        let mut cmd = host.ns.command(&setup.peer_bin);
        cmd.arg("run");
        for sn in &sn_urls {
            cmd.arg("--supernode").arg(sn);
        }
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--cache-size")
            .arg(format!("{cache_mib}MiB"))
            .arg("--advertise-addr")
            .arg(host.ip.to_string())
            .arg("--peer-id")
            .arg(format!("shb-{name}"))
            .arg("--insecure-registry")
            .arg(format!("{ORIGIN_IP}:{}", registry::PORT));
        if let (true, Some(p)) = (setup.piece_size_flag, args.piece_size) {
            cmd.arg("--piece-size").arg(p.to_string());
        }
        if let Some(c) = args.concurrent_pieces {
            cmd.arg("--concurrent-pieces").arg(c.to_string());
        }
        cmd.args(&args.peer_args);
        peers.push(Daemon::spawn(
            &format!("shoal-peer on {name}"),
            cmd,
            &setup.logs.join(format!("peer-{name}.log")),
        )?);
    }
    wait_peers_ready(nodes, &mut peers, &mut supernodes).await?;
    note(started, "peers ready; every node runs `shoal-peer get` now");

    let peer_bin = setup.peer_bin.clone();
    let mut round = timed_round(setup, hosts, "p2p", |host, out| {
        let mut cmd = host.ns.command(&peer_bin);
        cmd.args(["get", url, "--digest", &digest.to_string(), "-q", "-o"])
            .arg(out);
        Ok(cmd)
    })
    .await?;

    // Diagnostics while everything still runs.
    let mut totals = PeerTotals {
        from_peers_bytes: 0,
        from_origin_bytes: 0,
        uploaded_bytes: 0,
        p2p_share: 0.0,
        max_rss_bytes: peers
            .0
            .iter()
            .filter_map(Daemon::rss_bytes)
            .max()
            .unwrap_or(0),
    };
    let metrics_url = format!("{PEER_METRICS}/metrics");
    let texts = join_all(nodes.iter().map(|h| http_text_in(&h.ns, &metrics_url))).await;
    for (i, text) in texts.into_iter().enumerate() {
        match text {
            Ok(text) => {
                let _ = std::fs::write(setup.logs.join(format!("metrics-n{}.txt", i + 1)), &text);
                let m = "shoal_peer_download_bytes_total";
                totals.from_peers_bytes += stats::prom_sum(&text, m, &[("source", "peer")]) as u64;
                totals.from_origin_bytes +=
                    stats::prom_sum(&text, m, &[("source", "origin")]) as u64;
                totals.uploaded_bytes +=
                    stats::prom_sum(&text, "shoal_peer_upload_bytes_total", &[]) as u64;
            }
            Err(e) => eprintln!("warning: metrics of n{}: {e:#}", i + 1),
        }
    }
    let fetched = totals.from_peers_bytes + totals.from_origin_bytes;
    if fetched > 0 {
        totals.p2p_share = totals.from_peers_bytes as f64 / fetched as f64;
    }
    round.peers = Some(totals);
    for (k, sn) in sn_urls.iter().enumerate() {
        for what in ["tasks", "peers"] {
            if let Ok(text) = http_text_in(&ctl.ns, &format!("{sn}/api/v1/{what}")).await {
                let _ = std::fs::write(setup.logs.join(format!("supernode-{k}-{what}.json")), text);
            }
        }
    }
    drop(peers);
    drop(supernodes);
    Ok(round)
}

async fn wait_peers_ready(
    nodes: &[&Host],
    peers: &mut Daemons,
    supernodes: &mut Daemons,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let ready_url = format!("{PEER_METRICS}/readyz");
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    loop {
        let checks = join_all(
            pending
                .iter()
                .map(|&i| http_ok_in(&nodes[i].ns, &ready_url)),
        )
        .await;
        pending = pending
            .into_iter()
            .zip(checks)
            .filter(|(_, ok)| !ok)
            .map(|(i, _)| i)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        peers.check_alive()?;
        supernodes.check_alive()?;
        if Instant::now() >= deadline {
            let names: Vec<String> = pending.iter().map(|i| format!("n{}", i + 1)).collect();
            let first = &peers.0[pending[0]];
            bail!(
                "peers not ready after {READY_TIMEOUT:?} (GET {ready_url} failed): {}; last \
                 lines of {}:\n{}",
                names.join(", "),
                first.log.display(),
                processes::log_tail(&first.log, 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `command(host, output)` on every node at once and waits for each (until the
/// timeout). A node counts as done when its command exits 0: both clients only write the
/// output once it is complete and matches the digest. Meanwhile every link's counters are
/// sampled from the switch.
async fn timed_round<F>(
    setup: &Setup,
    hosts: &Hosts<'_>,
    round: &str,
    mut command: F,
) -> Result<RoundReport>
where
    F: FnMut(&Host, &Path) -> Result<std::process::Command>,
{
    let mut prepared = Vec::new();
    for (i, host) in hosts.nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let dir = setup.work.join(&name);
        std::fs::create_dir_all(&dir)?;
        let out_path = dir.join(format!("{round}.blob"));
        let log = setup.logs.join(format!("{round}-{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = command(host, &out_path)?;
        cmd.stdout(log_file.try_clone()?).stderr(log_file);
        processes::die_with_parent(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        prepared.push((name, host.ip, cmd, log, out_path));
    }

    let egress_before = hosts.origin.ns.counter(HOST_IFACE, "tx_bytes")?;
    let ports_before = netns::port_counters(hosts.switch).await?;
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + setup.timeout);
    let mut waits = Vec::new();
    for (name, ip, mut cmd, log, out_path) in prepared {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {round} client on {name}"));
        waits.push(async move {
            let outcome = crate::processes::wait_client(child, deadline).await;
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
    let egress_after = hosts.origin.ns.counter(HOST_IFACE, "tx_bytes")?;
    let ports_after = netns::port_counters(hosts.switch).await?;
    let delta = |port: &str| {
        let a = ports_after.get(port).copied().unwrap_or_default();
        let b = ports_before.get(port).copied().unwrap_or_default();
        HostBytes {
            sent: a.sent.saturating_sub(b.sent),
            received: a.received.saturating_sub(b.received),
        }
    };
    for (result, host) in node_results.iter_mut().zip(&hosts.nodes) {
        let d = delta(&host.switch_port);
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
        origin_uplink_busy: 0.0,
        node_uplink_busy: 0.0,
        node_downlink_busy: 0.0,
        peers: None,
        timeline: timeline(&samples, hosts),
        node_results,
    })
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
            let diff = |port: &str| {
                let (x, y) = (
                    a.get(port).copied().unwrap_or_default(),
                    b.get(port).copied().unwrap_or_default(),
                );
                (
                    y.sent.saturating_sub(x.sent),
                    y.received.saturating_sub(x.received),
                )
            };
            let (mut up, mut down) = (0, 0);
            for h in &hosts.nodes {
                let (s, r) = diff(&h.switch_port);
                up += s;
                down += r;
            }
            TimelinePoint {
                t_s: *t2,
                origin_up_mbit: mbit(diff(origin_port).0),
                node_down_mbit: mbit(down) / n,
                node_up_mbit: mbit(up) / n,
            }
        })
        .collect()
}

impl RoundReport {
    /// Fills the summary fields from the node results.
    fn finish(&mut self, bound: f64, size: u64, rate_bit: f64) {
        let mut times: Vec<f64> = self
            .node_results
            .iter()
            .filter(|n| n.ok)
            .map(|n| n.seconds)
            .collect();
        times.sort_by(f64::total_cmp);
        self.completed = times.len() as u32;
        self.failed = (self.node_results.len() - times.len()) as u32;
        self.last_s = (self.failed == 0).then(|| times.last().copied()).flatten();
        self.ratio_to_bound = self.last_s.map(|t| t / bound);
        self.p50_s = stats::percentile(&times, 50.0);
        self.p99_s = stats::percentile(&times, 99.0);
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
