//! The rounds of `shoal-bench lazy-cluster` (see `lazy_cluster`) and the processes they run.
//! Every round starts from nothing: a new supernode (which knows no task), new peers with empty
//! data directories, new mounts with empty caches; all of it is stopped and deleted after.
//!
//! In a reading round the mount and the reader of every node are started first and wait at
//! the start gate (`start_gate`); the mount through `shoal-bench internal --gate exec --
//! shoal-lazyfs mount …`, so that mounting (manifest, index) is part of what is timed, as in
//! "N nodes mount and read the startup set at once". All are released together and the clock
//! starts. Both run under `nsenter --net=…`: the node's network, the host's mount namespace,
//! so the reader sees the mount (`ip netns exec` would give each its own mount namespace).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;
use tokio::process::Child;

use crate::cluster_round::CpuTimes;
use crate::internal::http_text_in;
use crate::lazy_cluster::Env;
use crate::lazy_cluster_read::ReadResult;
use crate::lazy_cluster_report::{FirstRead, NodeRun, ReadRound};
use crate::lazyfs_bench::mount_flags;
use crate::lazyfs_env::{
    is_mounted, mounts, nsenter, poll_read, umount_lazy, wait_http, FuseMount,
};
use crate::netns::{self, port_delta, Host, CONTROL_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::report::seconds;
use crate::start_gate::{self, Gate};
use crate::stats::{prom_sum, PeerBytes};

const SUPERNODE_PORT: u16 = 8002;
const PEER_METRICS: &str = "http://127.0.0.1:65003";
/// The mount's `/metrics`, on the node's loopback.
const MOUNT_METRICS: &str = "127.0.0.1:9101";

/// Round 0: a cold mount → first small file on node 1, timed from starting the mount (as
/// `shoal-bench lazyfs` does), with the bytes its link delivered meanwhile.
pub(crate) async fn first_read(env: &Env, rep: u32) -> Result<FirstRead> {
    let tag = format!("first{rep}");
    let services = Services::start(env, &tag, 1).await?;
    let host = env.node(0);
    let dir = env.round_dir(&tag, "n1")?;
    let mp = dir.join("mnt");
    let before = netns::port_counters(env.switch()).await?;
    let t = Instant::now();
    let mut mount = FuseMount::start(
        &env.bins.lazyfs,
        host.ns.name(),
        &env.image,
        &mp,
        &node_mount_flags(env, &dir),
        &env.logs.join(format!("{tag}-mount-n1.log")),
    )?;
    let (probe, first) = (mp.clone(), env.first.clone());
    let log = env.logs.join(format!("{tag}-mount-n1.log"));
    let elapsed = tokio::task::spawn_blocking(move || poll_read(&probe, &first, t))
        .await
        .context("the first-read task panicked")?
        .with_context(|| format!("mount log:\n{}", processes::log_tail(&log, 20)))?;
    let after = netns::port_counters(env.switch()).await?;
    let r = FirstRead {
        seconds: elapsed.as_secs_f64(),
        node_link_bytes: port_delta(&before, &after, &host.switch_port).received,
        origin_egress_bytes: port_delta(&before, &after, &env.origin().switch_port).sent,
    };
    env.note(format!(
        "round 0.{}: mount → first small file ({} B) in {:.3} s, {} B over the node's link",
        rep + 1,
        env.first.size,
        r.seconds,
        r.node_link_bytes
    ));
    mount.stop();
    drop(services);
    remove_round_dir(env, &tag);
    Ok(r)
}

/// Rounds 1 and 2: `nodes` nodes mount and read the startup set, released together.
pub(crate) async fn read_round(env: &Env, tag: &str, nodes: usize) -> Result<ReadRound> {
    let services = Services::start(env, tag, nodes).await?;
    let exe = processes::self_exe()?;
    let mut mounts = Vec::new();
    let mut readers = Vec::new();
    let mut results = Vec::new();
    for i in 0..nodes {
        let name = format!("n{}", i + 1);
        let host = env.node(i);
        let dir = env.round_dir(tag, &name)?;
        let mp = dir.join("mnt");
        std::fs::create_dir_all(&mp)?;
        let mut argv: Vec<OsString> = vec!["exec".into(), "--".into()];
        argv.push(env.bins.lazyfs.clone().into());
        argv.extend(["mount".into(), env.image.clone().into(), mp.clone().into()]);
        argv.extend(node_mount_flags(env, &dir).into_iter().map(OsString::from));
        let log = env.logs.join(format!("{tag}-mount-{name}.log"));
        mounts.push(GatedMount {
            child: gated(host, &exe, &argv, &log)?,
            mp: mp.clone(),
        });
        let result = dir.join("result.json");
        let mut argv: Vec<OsString> = vec!["read-set".into(), "--mount".into(), mp.into()];
        argv.extend(["--source".into(), env.src.clone().into()]);
        argv.extend(["--list".into(), env.list.clone().into()]);
        argv.extend(["--result".into(), result.clone().into()]);
        argv.extend(["--timeout".into(), env.args.timeout.to_string().into()]);
        let log = env.logs.join(format!("{tag}-reader-{name}.log"));
        readers.push(gated(host, &exe, &argv, &log)?);
        results.push(result);
    }
    let mut children: Vec<&mut Child> = mounts
        .iter_mut()
        .map(|m| &mut m.child)
        .chain(readers.iter_mut())
        .collect();
    let gate = Gate::ready(&mut children).await;
    drop(children);

    let before = netns::port_counters(env.switch()).await?;
    let cpu_before = CpuTimes::now();
    let t0 = Instant::now();
    gate.open().await;
    let deadline = tokio::time::Instant::from_std(t0 + Duration::from_secs(env.args.timeout));
    let waits = readers
        .into_iter()
        .zip(mounts.iter_mut())
        .map(|(reader, mount)| async move {
            let outcome = tokio::select! {
                r = processes::wait_client(Ok(reader), deadline) => r,
                status = mount.child.wait() => Err(match status {
                    Ok(s) => format!("the mount exited first ({s})"),
                    Err(e) => format!("waiting for the mount: {e}"),
                }),
            };
            (outcome, t0.elapsed().as_secs_f64())
        });
    let outcomes = join_all(waits).await;
    let (cpu_busy, cpu_steal) = CpuTimes::shares_until_now(cpu_before);
    let after = netns::port_counters(env.switch()).await?;

    // The daemons' own counters, while they still run.
    let hosts: Vec<&Host> = (0..nodes).map(|i| env.node(i)).collect();
    let peer_url = format!("{PEER_METRICS}/metrics");
    let mount_url = format!("http://{MOUNT_METRICS}/metrics");
    let peer_texts = join_all(hosts.iter().map(|h| http_text_in(&h.ns, &peer_url))).await;
    let mount_texts = join_all(hosts.iter().map(|h| http_text_in(&h.ns, &mount_url))).await;

    let mut round = ReadRound {
        origin_egress_bytes: port_delta(&before, &after, &env.origin().switch_port).sent,
        cpu_busy,
        cpu_steal,
        ..ReadRound::default()
    };
    for (i, (outcome, seconds)) in outcomes.into_iter().enumerate() {
        let name = format!("n{}", i + 1);
        let link = port_delta(&before, &after, &hosts[i].switch_port);
        let mut n = NodeRun {
            node: if nodes == 1 {
                "alone".into()
            } else {
                name.clone()
            },
            seconds,
            received_bytes: link.received,
            sent_bytes: link.sent,
            ..NodeRun::default()
        };
        let read = outcome.map_err(|e| {
            let log = env.logs.join(format!("{tag}-reader-{name}.log"));
            format!(
                "{e}; reader: {}",
                processes::log_tail(&log, 3).replace('\n', " | ")
            )
        });
        match read.and_then(|()| read_result(&results[i])) {
            Ok(r) => {
                n.ok = true;
                n.mounted_s = Some(r.mounted_s);
                n.read_s = Some(r.read_s);
            }
            Err(e) => n.error = Some(e),
        }
        if let Ok(text) = &peer_texts[i] {
            let _ = std::fs::write(env.logs.join(format!("{tag}-peer-{name}.metrics")), text);
            let peer = PeerBytes::from_metrics(text);
            n.peer_from_origin_bytes = peer.from_origin;
            n.peer_from_peers_bytes = peer.from_peers;
            n.peer_uploaded_bytes = peer.uploaded;
        }
        if let Ok(text) = &mount_texts[i] {
            let _ = std::fs::write(env.logs.join(format!("{tag}-mount-{name}.metrics")), text);
            n.mount_fetch_bytes = prom_sum(text, "shoal_lazyfs_fetch_bytes_total", &[]) as u64;
            n.mount_fetch_requests =
                prom_sum(text, "shoal_lazyfs_fetch_requests_total", &[]) as u64;
            n.mount_fetch_errors = prom_sum(text, "shoal_lazyfs_fetch_errors_total", &[]) as u64;
            n.mount_read_errors = prom_sum(text, "shoal_lazyfs_read_errors_total", &[]) as u64;
        }
        round.node_results.push(n);
    }
    round.finish(env.args.rate_mbit);
    env.note(format!(
        "{tag}: {} of {nodes} nodes done, last at {}, origin sent {} B",
        round.completed,
        seconds(round.last_s),
        round.origin_egress_bytes
    ));
    drop(mounts);
    drop(services);
    remove_round_dir(env, tag);
    Ok(round)
}

fn read_result(path: &Path) -> Result<ReadResult, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("no result from the reader: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("bad result from the reader: {e}"))
}

/// Through the node's peer, never straight to the registry, no background prefetch; the
/// cache in the round's directory; `/metrics` on the node's loopback.
fn node_mount_flags(env: &Env, dir: &Path) -> Vec<String> {
    let mut flags = mount_flags(&dir.join("cache"), &env.registry_host, true);
    flags.extend(["--metrics-listen".into(), MOUNT_METRICS.into()]);
    flags.extend(env.args.mount_args.iter().cloned());
    flags
}

/// `nsenter --net=NODE shoal-bench internal --gate ARGV`, its stdin and stdout piped for the
/// gate, its stderr to `log`.
fn gated(host: &Host, exe: &Path, argv: &[OsString], log: &Path) -> Result<Child> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    start_gate::spawn(nsenter(host.ns.name(), exe), argv, err)
        .with_context(|| format!("starting {argv:?} on {}", host.ns.name()))
}

/// A mount started through the gate. Dropping it stops the mount with SIGTERM (which
/// unmounts), SIGKILL after 5 s, then detaches the mount point if it is still there.
struct GatedMount {
    child: Child,
    mp: PathBuf,
}

impl Drop for GatedMount {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            if let Ok(pid) = i32::try_from(pid) {
                processes::signal_pids(&[pid], libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.start_kill();
        }
        if is_mounted(&self.mp) {
            umount_lazy(&self.mp);
        }
    }
}

/// A round's supernode on `ctl` and one peer per node. Peers stop before the supernode
/// (fields drop in order).
struct Services {
    _peers: Vec<Daemons>,
    _supernode: Daemons,
}

impl Services {
    async fn start(env: &Env, tag: &str, nodes: usize) -> Result<Services> {
        let ctl = env.ctl().ns.name();
        let sn_url = format!("http://{CONTROL_IP}:{SUPERNODE_PORT}");
        let mut supernode = Daemons::default();
        let mut c = nsenter(ctl, &env.bins.supernode);
        c.arg("--listen")
            .arg(format!("{CONTROL_IP}:{SUPERNODE_PORT}"))
            .args(&env.args.supernode_args);
        let log = env.logs.join(format!("{tag}-supernode.log"));
        supernode.push(Daemon::spawn("shoal-supernode", c, &log)?);
        wait_http(
            ctl,
            &format!("{sn_url}/readyz"),
            &mut supernode,
            "shoal-supernode",
        )
        .await?;

        let mut peers = Vec::new();
        for i in 0..nodes {
            let name = format!("n{}", i + 1);
            let host = env.node(i);
            let data = env.round_dir(tag, &name)?.join("peer");
            let mut c = nsenter(host.ns.name(), &env.bins.peer);
            c.arg("run")
                .args(["--supernode", &sn_url, "--data-dir"])
                .arg(&data)
                .args(["--cache-size", "4GiB", "--advertise-addr"])
                .arg(host.ip.to_string())
                .args(["--peer-id", &format!("shb-{name}")])
                .args(["--insecure-registry", &env.registry_host])
                .args(&env.args.peer_args);
            let mut d = Daemons::default();
            let log = env.logs.join(format!("{tag}-peer-{name}.log"));
            d.push(Daemon::spawn(&format!("shoal-peer on {name}"), c, &log)?);
            peers.push(d);
        }
        let ready = format!("{PEER_METRICS}/readyz");
        let waits = peers
            .iter_mut()
            .enumerate()
            .map(|(i, d)| wait_http(env.node(i).ns.name(), &ready, d, "shoal-peer"));
        for r in join_all(waits).await {
            r?;
        }
        Ok(Services {
            _peers: peers,
            _supernode: supernode,
        })
    }
}

/// Deletes a finished round's directory (peer data, mount caches), unless something is still
/// mounted under it: the sweep at the end detaches it first.
fn remove_round_dir(env: &Env, tag: &str) {
    let dir = env.work.join(tag);
    if mounts().iter().any(|m| m.starts_with(&dir)) {
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: removing {}: {e}", dir.display());
    }
}
