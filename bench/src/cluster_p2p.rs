//! The P2P round of `shoal-bench cluster` (see `cluster`): the supernodes on `ctl`, one
//! `shoal-peer run` daemon per node, every node's client timed by `cluster_round`,
//! then the peers' and supernodes' own counters, read while they still run. Kept apart from
//! the orchestration so that the daemons' whole lifetime is in one function.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::future::join_all;
use shoal_common::Digest;

use crate::cli::{ClusterArgs, P2pClient};
use crate::cluster::{note, Hosts, Setup};
use crate::cluster_round::timed_round;
use crate::internal::{http_ok_in, http_text_in};
use crate::netns::{Host, CONTROL_IP, ORIGIN_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::registry;
use crate::report::{PeerTotals, RoundReport};
use crate::stats;

const SUPERNODE_BASE_PORT: u16 = 8002;
const PEER_METRICS: &str = "http://127.0.0.1:65003";
const PEER_MIRROR: &str = "http://127.0.0.1:65001";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn p2p_round(
    args: &ClusterArgs,
    setup: &Setup,
    digest: &Digest,
    url: &str,
    hosts: &Hosts<'_>,
) -> Result<RoundReport> {
    let (ctl, nodes) = (hosts.ctl, &hosts.nodes);
    let started = setup.started;
    // Peers are stopped before supernodes (declaration order reversed on drop).
    let (mut supernodes, sn_urls) = start_supernodes(args, setup, ctl).await?;
    note(
        started,
        format!(
            "{} supernode(s) ready; starting {} peers",
            sn_urls.len(),
            nodes.len()
        ),
    );

    let mut peers = Daemons::default();
    for (i, host) in nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let cmd = peer_command(args, setup, host, &name, &sn_urls)?;
        peers.push(Daemon::spawn(
            &format!("shoal-peer on {name}"),
            cmd,
            &setup.logs.join(format!("peer-{name}.log")),
        )?);
    }
    wait_peers_ready(nodes, &mut peers, &mut supernodes).await?;
    note(
        started,
        "peers ready; every node fetches the blob through its peer now",
    );

    let peer_bin = setup.peer_bin.clone();
    let mirror_url = format!(
        "{PEER_MIRROR}/v2/{}/blobs/{digest}?ns={ORIGIN_IP}:{}",
        registry::REPO,
        registry::PORT
    );
    let cpu_before = peers_cpu(&peers);
    let mut round = timed_round(setup, hosts, "p2p", |out| match args.client {
        P2pClient::Mirror => Ok(vec!["drain".into(), mirror_url.clone().into()]),
        P2pClient::Get => Ok(vec![
            "exec".into(),
            "--".into(),
            peer_bin.clone().into(),
            "get".into(),
            url.into(),
            "--digest".into(),
            digest.to_string().into(),
            "-q".into(),
            "-o".into(),
            out.into(),
        ]),
    })
    .await?;

    // Diagnostics while everything still runs.
    let mut totals = peer_totals(setup, nodes, &peers).await;
    totals.cpu_seconds = (peers_cpu(&peers) - cpu_before).as_secs_f64();
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

/// Starts `--supernodes` supernodes on `ctl` and waits until each is ready: the daemons
/// (stopped when dropped) and their URLs.
async fn start_supernodes(
    args: &ClusterArgs,
    setup: &Setup,
    ctl: &Host,
) -> Result<(Daemons, Vec<String>)> {
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
    Ok((supernodes, sn_urls))
}

/// `shoal-peer run` on node `name`, registered with every supernode, its data directory
/// created under the work directory.
fn peer_command(
    args: &ClusterArgs,
    setup: &Setup,
    host: &Host,
    name: &str,
    sn_urls: &[String],
) -> Result<std::process::Command> {
    let cache_mib = (args.size_mib * 2 + 64).max(256);
    let data = setup.work.join(name).join("data");
    std::fs::create_dir_all(&data)?;
    let mut cmd = host.ns.command(&setup.peer_bin);
    cmd.arg("run");
    for sn in sn_urls {
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
    Ok(cmd)
}

/// The peers' download and upload counters summed over the nodes (each node's `/metrics` is
/// also saved in the logs), and the largest peer RSS.
async fn peer_totals(setup: &Setup, nodes: &[&Host], peers: &Daemons) -> PeerTotals {
    let mut totals = PeerTotals {
        from_peers_bytes: 0,
        from_origin_bytes: 0,
        uploaded_bytes: 0,
        p2p_share: 0.0,
        cpu_seconds: 0.0,
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
                let bytes = stats::PeerBytes::from_metrics(&text);
                totals.from_peers_bytes += bytes.from_peers;
                totals.from_origin_bytes += bytes.from_origin;
                totals.uploaded_bytes += bytes.uploaded;
            }
            Err(e) => eprintln!("warning: metrics of n{}: {e:#}", i + 1),
        }
    }
    let fetched = totals.from_peers_bytes + totals.from_origin_bytes;
    if fetched > 0 {
        totals.p2p_share = totals.from_peers_bytes as f64 / fetched as f64;
    }
    totals
}

/// CPU time (user + system) the peer daemons have used so far, summed.
fn peers_cpu(peers: &Daemons) -> Duration {
    peers.0.iter().filter_map(Daemon::cpu_time).sum()
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
