//! Swarms for fault tests: several peers of one supernode fetching one blob at once, each
//! fetch timed from a common start, so that a faulted run can be compared with a fault-free
//! run of the same shape measured in the same test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_common::Digest;
use tokio::task::JoinHandle;

use crate::get::{get_with, GetOutput};
use crate::shoal::{Peer, PeerOpts, Supernode};
use crate::{free_port, scratch, FaultPlan, FaultProxy};

/// One `shoal-peer get` running in the background, with the time it ended at.
pub struct TimedGet {
    pub path: PathBuf,
    handle: JoinHandle<(GetOutput, Duration)>,
}

impl TimedGet {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the get: its output and how long after the swarm's start it ended.
    pub async fn wait(self) -> (GetOutput, Duration) {
        self.handle.await.expect("get task")
    }
}

/// Starts a get of `url` through every peer, into `dir/blob{i}`; times count from `started`.
pub fn spawn_timed_gets(
    peers: &[Peer],
    url: &str,
    digest: &Digest,
    dir: &Path,
    started: Instant,
) -> Vec<TimedGet> {
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = dir.join(format!("blob{i}"));
            let (bin, mirror, url, digest, out) = (
                p.bin.clone(),
                p.mirror_url(),
                url.to_string(),
                digest.to_string(),
                path.clone(),
            );
            let handle = tokio::spawn(async move {
                let output = get_with(&bin, &mirror, &url, Some(&digest), &out).await;
                (output, started.elapsed())
            });
            TimedGet { path, handle }
        })
        .collect()
}

/// Waits for `gets`, checks each succeeded with the right bytes, and returns when the last
/// one ended (from the swarm's start).
pub async fn finish_all(gets: Vec<TimedGet>, digest: &Digest, what: &str) -> Duration {
    finish_each(gets, digest, what)
        .await
        .into_iter()
        .max()
        .unwrap_or_default()
}

/// Waits for `gets`, checks each succeeded with the right bytes, and returns when each one
/// ended (from the swarm's start). The bytes are checked once every get has ended, so that
/// the checks do not take CPU from the swarm.
pub async fn finish_each(gets: Vec<TimedGet>, digest: &Digest, what: &str) -> Vec<Duration> {
    let mut ended = Vec::new();
    for get in gets {
        let path = get.path.clone();
        let (output, took) = get.wait().await;
        output.assert_success(&format!("{what}: get into {}", path.display()));
        ended.push((path, took));
    }
    for (path, _) in &ended {
        crate::assert_file_digest(path, digest);
    }
    ended.into_iter().map(|(_, t)| t).collect()
}

/// A peer whose piece server other peers reach only through a [`FaultProxy`] under `plan`
/// (the supernode is given the proxy's address). Its own clients reach it directly.
pub async fn start_behind_proxy(name: &str, opts: PeerOpts, plan: FaultPlan) -> (Peer, FaultProxy) {
    let p2p_port = free_port();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{p2p_port}"), plan);
    let opts = opts.p2p_port(p2p_port).advertise_port(proxy.port);
    (Peer::start(name, opts).await, proxy)
}

/// A fault-free swarm: `n` fresh peers of a fresh supernode (each started with `args`) fetch
/// `url` at once. Returns when each get ended, from their common start.
pub async fn fault_free_swarm(
    n: usize,
    args: &[&str],
    url: &str,
    digest: &Digest,
) -> Vec<Duration> {
    fault_free_swarm_from(&crate::default_bin_dir(), n, args, url, digest).await
}

/// [`fault_free_swarm`] with the binaries in `bin_dir`.
pub async fn fault_free_swarm_from(
    bin_dir: &Path,
    n: usize,
    args: &[&str],
    url: &str,
    digest: &Digest,
) -> Vec<Duration> {
    let supernode = Supernode::start_from(bin_dir).await;
    let mut peers = Vec::new();
    for i in 0..n {
        let mut opts = PeerOpts::with_supernode(&supernode);
        for a in args {
            opts = opts.arg(*a);
        }
        peers.push(Peer::start(&format!("clean{i}"), opts).await);
    }
    let out = scratch::tempdir();
    let gets = spawn_timed_gets(&peers, url, digest, out.path(), Instant::now());
    let ended = finish_each(gets, digest, "fault-free swarm").await;
    eprintln!(
        "fault-free swarm: gets ended after {:?}",
        ended
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    ended
}

/// `faulted` as a multiple of `fault_free` (a fault-free time under 1 ms counts as 1 ms).
pub fn time_ratio(faulted: Duration, fault_free: Duration) -> f64 {
    faulted.as_secs_f64() / fault_free.as_secs_f64().max(0.001)
}

/// Prints and checks a faulted time against the fault-free one: at most `bound` times it.
pub fn assert_within(what: &str, faulted: Duration, fault_free: Duration, bound: f64) {
    let ratio = time_ratio(faulted, fault_free);
    eprintln!(
        "{what}: {:.2} s against {:.2} s fault-free: {ratio:.2} × (bound {bound} ×)",
        faulted.as_secs_f64(),
        fault_free.as_secs_f64()
    );
    assert!(
        ratio <= bound,
        "{what}: {faulted:?} is {ratio:.2} × the fault-free {fault_free:?} (bound {bound} ×)"
    );
}
