//! `shoal-bench memory`: the resident memory of one `shoal-peer run` idle and while serving
//! many concurrent downloads (issue 3: ≤ 64 MiB idle, ≤ 256 MiB serving 100 downloads).
//!
//! Everything runs on loopback at free ports: Debian's `docker-registry` holding K random
//! blobs, one peer daemon with an embedded supernode, and D `shoal-peer get` clients started
//! at once, each fetching blob `i mod K` through the daemon's local API. Two rounds: cold
//! (the daemon fetches every blob from the registry) and warm (the same downloads again,
//! served from its cache). The daemon's `/proc/PID/status` is sampled every
//! [`SAMPLE_EVERY`] during each round; see [`crate::memory_report::METHOD`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use shoal_common::Digest;

use crate::cli::MemoryArgs;
use crate::cluster::default_work_parent;
use crate::memory_report::{
    MemoryReport, MemoryRound, IDLE_TARGET_BYTES, METHOD, SERVING_TARGET_BYTES,
};
use crate::netns::WORK_DIR_PREFIX;
use crate::processes::{self, Daemon, Daemons, ProcMemory};
use crate::{internal, registry, stats};

/// How long the peer is left alone after the last round before reading its RSS again.
const IDLE_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(12);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_SETTLE: Duration = Duration::from_secs(2);
const MAX_ERRORS: usize = 5;

pub async fn main(args: MemoryArgs) -> Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let failed = report.cold.failed + report.warm.failed;
    if failed > 0 {
        bail!("{failed} download(s) failed (see above)");
    }
    Ok(())
}

fn note(start: Instant, msg: impl std::fmt::Display) {
    eprintln!("[{:>7.2}s] {msg}", start.elapsed().as_secs_f64());
}

/// What every round needs.
struct Round<'a> {
    peer_bin: &'a Path,
    /// `--peer` of the clients: the daemon's local API.
    api: String,
    metrics_url: String,
    client: reqwest::Client,
    /// (URL, digest) of every download, in order.
    downloads: Vec<(String, Digest)>,
    size: u64,
    out_dir: PathBuf,
    logs: &'a Path,
    timeout: Duration,
}

async fn run(args: &MemoryArgs) -> Result<MemoryReport> {
    let started = Instant::now();
    processes::require_program("docker-registry", "docker-registry")?;
    let peer_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-peer")?;
    let (downloads, blobs) = (args.downloads, args.blob_count());
    if blobs > downloads {
        bail!("--blobs ({blobs}) cannot exceed --downloads ({downloads})");
    }
    let size = args.size_mib << 20;

    // Dropped last (declared first): the work directory outlives every process using it.
    // Registry storage + the peer's cache + one copy per client in flight.
    let needed = size.saturating_mul(2 * u64::from(blobs) + u64::from(downloads));
    let work_parent = args
        .work_dir
        .clone()
        .unwrap_or_else(|| default_work_parent(needed));
    std::fs::create_dir_all(&work_parent)?;
    let work = tempfile::Builder::new()
        .prefix(WORK_DIR_PREFIX)
        .tempdir_in(&work_parent)
        .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
    let logs = args
        .keep_logs
        .clone()
        .unwrap_or_else(|| work.path().join("logs"));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let out_dir = work.path().join("out");
    std::fs::create_dir_all(&out_dir)?;

    let [registry_port, mirror_port, p2p_port, metrics_port] = processes::free_ports::<4>()?;
    // Stopped after the peer (declared before it).
    let mut registry_daemons = Daemons::default();
    note(
        started,
        format!("starting docker-registry on 127.0.0.1:{registry_port}"),
    );
    let registry_base =
        registry::start_local(work.path(), &logs, registry_port, &mut registry_daemons).await?;
    note(
        started,
        format!("pushing {blobs} random blob(s) of {} MiB", args.size_mib),
    );
    let digests = registry::push_random_blobs(&registry_base, blobs, size).await?;
    let registry_host = format!("127.0.0.1:{registry_port}");

    let data = work.path().join("peer-data");
    std::fs::create_dir_all(&data)?;
    // Every blob fits, with room to spare for the daemon's bookkeeping.
    let cache_mib = (args.size_mib * u64::from(blobs) * 2 + 256).max(1024);
    let mut cmd = std::process::Command::new(&peer_bin);
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&data)
        .arg("--cache-size")
        .arg(format!("{cache_mib}MiB"))
        .arg("--mirror-listen")
        .arg(format!("127.0.0.1:{mirror_port}"))
        .arg("--p2p-listen")
        .arg(format!("127.0.0.1:{p2p_port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--advertise-addr")
        .arg("127.0.0.1")
        .arg("--peer-id")
        .arg("shb-memory")
        .arg("--insecure-registry")
        .arg(&registry_host)
        .args(&args.peer_args);
    let mut peer = Daemons::default();
    let pid = peer
        .push(Daemon::spawn("shoal-peer", cmd, &logs.join("peer.log"))?)
        .pid();
    let client = internal::client()?;
    let metrics_base = format!("http://127.0.0.1:{metrics_port}");
    let ready_url = format!("{metrics_base}/readyz");
    processes::wait_until("shoal-peer", READY_TIMEOUT, &mut peer, || {
        let req = client
            .get(&ready_url)
            .timeout(Duration::from_secs(2))
            .send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    peer.check_alive()?;
    let idle = ProcMemory::of_pid(pid).context("reading the idle peer's /proc status")?;
    note(
        started,
        format!(
            "peer ready (pid {pid}); idle RSS {}",
            crate::memory_report::mib(idle.rss_bytes)
        ),
    );

    let round = Round {
        peer_bin: &peer_bin,
        api: format!("http://127.0.0.1:{mirror_port}"),
        metrics_url: format!("{metrics_base}/metrics"),
        client,
        downloads: (0..downloads as usize)
            .map(|i| {
                let d = &digests[i % digests.len()];
                (registry::blob_url_at(&registry_host, d), *d)
            })
            .collect(),
        size,
        out_dir,
        logs: &logs,
        timeout: Duration::from_secs(args.timeout),
    };
    let mut rounds = Vec::new();
    for name in ["cold", "warm"] {
        note(
            started,
            format!("{name} round: {downloads} concurrent `shoal-peer get`"),
        );
        let r = run_round(&round, name, &mut peer).await?;
        note(
            started,
            format!(
                "{name} round: {}/{downloads} ok in {:.2} s, peak RSS {}",
                r.completed,
                r.total_s,
                crate::memory_report::mib(r.peak_rss_bytes)
            ),
        );
        rounds.push(r);
    }
    let hwm_bytes = ProcMemory::of_pid(pid).map_or(0, |m| m.hwm_bytes);
    // The peer hands freed memory back once it has been quiet for a few seconds (peer/src/trim.rs):
    // what a node sees between bursts.
    tokio::time::sleep(IDLE_AGAIN_AFTER).await;
    let idle_again =
        ProcMemory::of_pid(pid).context("reading the peer's /proc status after the rounds")?;
    let (Some(warm), Some(cold)) = (rounds.pop(), rounds.pop()) else {
        bail!("internal error: two rounds expected");
    };
    let peak_rss_bytes = cold.peak_rss_bytes.max(warm.peak_rss_bytes);
    let report = MemoryReport {
        downloads,
        blobs,
        size_mib: args.size_mib,
        size_bytes: size,
        peer_args: args.peer_args.clone(),
        sample_interval_ms: SAMPLE_EVERY.as_millis() as u64,
        idle,
        cold,
        warm,
        idle_again,
        peak_rss_bytes,
        hwm_bytes,
        idle_target_bytes: IDLE_TARGET_BYTES,
        serving_target_bytes: SERVING_TARGET_BYTES,
        idle_ok: idle.rss_bytes.max(idle_again.rss_bytes) <= IDLE_TARGET_BYTES,
        serving_ok: peak_rss_bytes <= SERVING_TARGET_BYTES,
        method: METHOD.into(),
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

/// One result per client: Ok(seconds) or the error (with the end of its log).
type ClientResult = std::result::Result<f64, String>;

/// Starts every download at once, samples the daemon until the last client exits.
async fn run_round(r: &Round<'_>, name: &str, peer: &mut Daemons) -> Result<MemoryRound> {
    let pid = peer.0.first().context("no peer daemon")?.pid();
    let mut prepared = Vec::new();
    for (i, (url, digest)) in r.downloads.iter().enumerate() {
        let out_path = r.out_dir.join(format!("{name}-{i}.blob"));
        let log = r.logs.join(format!("get-{name}-{i}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = std::process::Command::new(r.peer_bin);
        cmd.arg("get")
            .arg(url)
            .arg("--digest")
            .arg(digest.to_string())
            .arg("-q")
            .arg("--peer")
            .arg(&r.api)
            .arg("-o")
            .arg(&out_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        processes::die_with_parent(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        prepared.push((cmd, log, out_path));
    }

    let origin_before = origin_bytes(r).await;
    let cpu_before = peer.0.first().and_then(Daemon::cpu_time);
    let first = ProcMemory::of_pid(pid).context("the peer is gone")?;
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0 + r.timeout);
    let mut waits = Vec::new();
    // Spawned here, on the main thread (see `processes::die_with_parent`).
    for (mut cmd, log, out_path) in prepared {
        let child = cmd.spawn().context("starting `shoal-peer get`");
        waits.push(async move {
            let outcome = crate::processes::wait_client(child, deadline).await;
            let seconds = t0.elapsed().as_secs_f64();
            // The copy itself is not needed: `get` verified it against the digest.
            let _ = tokio::fs::remove_file(&out_path).await;
            outcome.map(|()| seconds).map_err(|e| {
                format!(
                    "{e} after {seconds:.1} s; last lines of {}: {}",
                    log.display(),
                    processes::log_tail(&log, 5).replace('\n', " | ")
                )
            })
        });
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let all_done = async move {
        let results: Vec<ClientResult> = join_all(waits).await;
        let total = t0.elapsed().as_secs_f64();
        let _ = stop.send(true);
        (results, total)
    };
    let ((results, total_s), (mut peak, mut samples)) =
        tokio::join!(all_done, sample(pid, stopped));
    let end = ProcMemory::of_pid(pid).unwrap_or_default();
    for m in [first, end] {
        samples += 1;
        if m.rss_bytes > peak.rss_bytes {
            peak = m;
        }
    }
    peer.check_alive()
        .with_context(|| format!("the peer died during the {name} round"))?;
    let cpu_after = peer.0.first().and_then(Daemon::cpu_time);
    let origin_after = origin_bytes(r).await;

    let mut times: Vec<f64> = results
        .iter()
        .filter_map(|t| t.as_ref().ok())
        .copied()
        .collect();
    times.sort_by(f64::total_cmp);
    let completed = times.len() as u32;
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(std::result::Result::err)
        .collect();
    let delivered = r.size * u64::from(completed);
    Ok(MemoryRound {
        completed,
        failed: errors.len() as u32,
        total_s,
        p50_s: stats::percentile(&times, 50.0),
        mib_per_s: delivered as f64 / f64::from(1 << 20) / total_s.max(1e-6),
        peak,
        peak_rss_bytes: peak.rss_bytes,
        end,
        samples,
        peer_cpu_s: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
        origin_bytes: origin_before
            .zip(origin_after)
            .map(|(a, b)| b.saturating_sub(a)),
        errors: errors.into_iter().take(MAX_ERRORS).collect(),
    })
}

/// The daemon's memory every [`SAMPLE_EVERY`] until `stop` turns true: the sample with the
/// largest VmRSS, and how many samples were taken.
async fn sample(pid: u32, mut stop: tokio::sync::watch::Receiver<bool>) -> (ProcMemory, u32) {
    let mut peak = ProcMemory::default();
    let mut count = 0;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Some(m) = ProcMemory::of_pid(pid) {
            count += 1;
            if m.rss_bytes > peak.rss_bytes {
                peak = m;
            }
        }
    }
    (peak, count)
}

/// `shoal_peer_download_bytes_total{source="origin"}` of the daemon, when it answers.
async fn origin_bytes(r: &Round<'_>) -> Option<u64> {
    let resp = r
        .client
        .get(&r.metrics_url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let text = resp.error_for_status().ok()?.text().await.ok()?;
    let v = stats::prom_sum(
        &text,
        "shoal_peer_download_bytes_total",
        &[("source", "origin")],
    );
    Some(v as u64)
}
