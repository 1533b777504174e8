//! `shoal-bench cluster`: one blob from a registry to N simulated hosts, through Shoal, by
//! direct pulls, and (with `--tcp-split`) by plain TCP on a static split.
//!
//! Hosts (network namespaces on one bridge, every link shaped RATE up and RATE down):
//! - `origin` (10.77.0.1): docker-registry only, so its interface counters are the origin's
//!   egress and nothing else;
//! - `ctl` (10.77.0.2): the supernode(s), whose small control traffic stays off the origin;
//! - `n1`…`nN` (10.77.1.x): one `shoal-peer run` each, on default ports.
//!
//! This module sets the hosts up and runs the rounds; `cluster_p2p` holds the P2P round's
//! daemons, `cluster_round` the timing and link sampling both rounds share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::ClusterArgs;
use crate::cluster_p2p::p2p_round;
use crate::cluster_round::timed_round;
use crate::host_tcp::AllowedCongestionControl;
use crate::netns::{self, Host, Namespace, Network, ORIGIN_IP};
use crate::processes::{self, Daemons};
use crate::registry;
use crate::report::{seconds, ClusterReport};
use crate::shaping;
use crate::stats;
use crate::tcp_split::tcp_split_round;

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
    let failed: u32 = report.rounds().iter().map(|(_, r)| r.failed).sum();
    if failed > 0 {
        bail!("{failed} node download(s) failed (see above)");
    }
    Ok(())
}

pub(crate) fn note(start: Instant, msg: impl std::fmt::Display) {
    eprintln!("[{:>7.2}s] {msg}", start.elapsed().as_secs_f64());
}

/// Everything one benchmark run needs to know, resolved up front.
pub(crate) struct Setup {
    pub(crate) peer_bin: PathBuf,
    pub(crate) supernode_bin: PathBuf,
    pub(crate) piece_size_flag: bool,
    pub(crate) timeout: Duration,
    pub(crate) logs: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) started: Instant,
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

    let (host_tcp, host_sysctls) = args.network.host_tcp()?;
    // Dropped after the hosts, whose sockets may pick the congestion control until the end.
    let _allowed = AllowedCongestionControl::ensure(&host_tcp)?;

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
    netns::remove_leftovers(&run_id)?;
    note(
        started,
        format!(
            "creating {} hosts on a bridge, links shaped to {} Mbit/s",
            args.nodes + 2,
            args.rate_mbit
        ),
    );
    let net = Network::cluster(&run_id, args.nodes)?;
    let tbf = args.network.tbf(args.rate_mbit);
    shaping::shape_hosts(&net, &tbf, &host_sysctls)?;

    // Declared after `net`, so dropped before it.
    let mut origin_daemons = Daemons::default();
    note(
        started,
        "starting docker-registry and pushing the blob (over the origin's loopback)",
    );
    registry::start_with_blob(
        &net.origin().ns,
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
        origin: net.origin(),
        ctl: net.ctl(),
        nodes: (0..args.nodes as usize).map(|i| net.node(i)).collect(),
    };

    let mut p2p = p2p_round(args, &setup, &digest, &url, &hosts).await?;
    p2p.finish(bound, size, rate);
    note(
        started,
        format!("p2p done: last node at {}", seconds(p2p.last_s)),
    );
    let tcp_split = if args.tcp_split {
        note(
            started,
            "tcp split: plain TCP, each node forwards its 1/N from the origin to the others",
        );
        let mut round = tcp_split_round(args, &setup, &hosts).await?;
        round.finish(bound, size, rate);
        note(
            started,
            format!("tcp split done: last node at {}", seconds(round.last_s)),
        );
        Some(round)
    } else {
        None
    };
    let baseline = if args.run_baseline() {
        note(
            started,
            "baseline: every node pulls straight from the registry",
        );
        let mut round = timed_round(&setup, &hosts, "baseline", |out| {
            Ok(vec![
                "fetch".into(),
                url.clone().into(),
                "--digest".into(),
                digest.to_string().into(),
                "-o".into(),
                out.into(),
            ])
        })
        .await?;
        round.finish(bound, size, rate);
        note(
            started,
            format!("baseline done: last node at {}", seconds(round.last_s)),
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
        client: Some(args.client),
        digest: digest.to_string(),
        tbf: tbf.tc_args().join(" "),
        host_sysctls,
        lower_bound_s: bound,
        p2p,
        tcp_split,
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
pub(crate) struct Hosts<'a> {
    pub(crate) switch: &'a Namespace,
    pub(crate) origin: &'a Host,
    pub(crate) ctl: &'a Host,
    pub(crate) nodes: Vec<&'a Host>,
}
