//! A parent that stalls without closing its connections, mid-swarm: its children must notice
//! within the stall timeout instead of the piece timeout and fetch its pieces elsewhere. Two
//! ways to stall, each measured against one fault-free swarm of the same shape run first:
//! - [`Fault::Hang`]: the parent accepts new requests and never answers them;
//! - [`Fault::Stall`]: the parent stops sending in the middle of a body and holds the
//!   connection open.
//!
//! The stalling parent (peer 0) sits behind a [`crate::FaultProxy`] (the supernode is given
//! the proxy's address), transparent until the fault is switched on. Its own download is not
//! faulted.

use std::time::{Duration, Instant};

use shoal_common::Digest;

use crate::origin::Origin;
use crate::scenarios::SwarmOpts;
use crate::shoal::{Peer, PeerOpts, Supernode};
use crate::swarm::{fault_free_swarm_from, finish_all, spawn_timed_gets, start_behind_proxy};
use crate::{assert_file_digest, random_blob, scratch, wait_for, Fault, FaultPlan};

/// What the stalling parent must have served before the fault is switched on.
const FAULT_AFTER_SERVED: u64 = 4 << 20;

/// One stalled swarm.
#[derive(Clone, Debug)]
pub struct StallRun {
    pub fault: Fault,
    /// When the last of the other peers' gets ended.
    pub survivors: Duration,
    /// Requests to the stalling parent that met the fault.
    pub faulted_requests: u64,
    /// Fetches the other peers abandoned as stalled (`reason="timeout"`).
    pub timeouts: f64,
    /// `shoal_supernode_parents_down_total` at the end.
    pub parents_down: f64,
    /// Other peers' gets still running when the fault was switched on.
    pub unfinished_at_fault: usize,
}

/// The fault-free time and both stalled swarms.
#[derive(Clone, Debug)]
pub struct StallParentOutcome {
    /// When the last get other than peer 0's ended, fault-free.
    pub fault_free: Duration,
    pub hang: StallRun,
    pub stall: StallRun,
}

/// Runs the fault-free swarm, then a swarm whose parent hangs, then one whose parent stalls
/// mid-body.
pub async fn stall_parent(opts: &SwarmOpts) -> StallParentOutcome {
    let origin = Origin::start().await;
    let (clean_digest, clean_url) = origin
        .push("stall/clean", &random_blob(opts.seed + 21, opts.blob_len))
        .await;
    // Peer 0 is the one that will stall: the others' times count.
    let fault_free = fault_free_swarm_from(
        &opts.bin_dir,
        opts.peers,
        &[&opts.rate_arg()],
        &clean_url,
        &clean_digest,
    )
    .await
    .into_iter()
    .skip(1)
    .max()
    .unwrap_or_default();

    let mut runs = vec![];
    for (seed, fault) in [(22, Fault::Hang), (23, Fault::Stall(256 << 10))] {
        let seed = opts.seed + seed;
        let (digest, url) = origin
            .push(&format!("stall/{seed}"), &random_blob(seed, opts.blob_len))
            .await;
        runs.push(stalled_swarm(opts, fault, &url, &digest).await);
    }
    let stall = runs.pop().expect("two runs");
    let hang = runs.pop().expect("two runs");
    StallParentOutcome {
        fault_free,
        hang,
        stall,
    }
}

/// The swarm with peer 0 behind a proxy that meets `fault` on every request once peer 0 has
/// served 4 MiB.
async fn stalled_swarm(opts: &SwarmOpts, fault: Fault, url: &str, digest: &Digest) -> StallRun {
    let rate = opts.rate_arg();
    let supernode = Supernode::start_from(&opts.bin_dir).await;
    let (stalling, proxy) = start_behind_proxy(
        "stalling",
        PeerOpts::with_supernode(&supernode).arg(&rate),
        FaultPlan::none(),
    )
    .await;
    let mut peers = vec![stalling];
    for i in 1..opts.peers {
        let opts = PeerOpts::with_supernode(&supernode).arg(&rate);
        peers.push(Peer::start(&format!("peer{i}"), opts).await);
    }
    let out = scratch::tempdir();
    let mut gets = spawn_timed_gets(&peers, url, digest, out.path(), Instant::now());

    wait_for(
        "the stalling peer to serve 4 MiB",
        Duration::from_secs(60),
        || async { (proxy.bytes() >= FAULT_AFTER_SERVED).then_some(()) },
    )
    .await;
    let unfinished = gets.iter().skip(1).filter(|g| !g.is_finished()).count();
    assert!(
        unfinished > 0,
        "every download finished before the fault: --download-rate is not limiting"
    );
    proxy.set_plan(FaultPlan::always(fault.clone()));
    let faulted_at = proxy.bytes();
    eprintln!("{fault:?} from now on ({unfinished} other downloads still running)");

    let own = gets.remove(0);
    let survivors = finish_all(gets, digest, &format!("{fault:?}")).await;
    // Its own download goes on: only what it serves is faulted.
    let (output, _) = own.wait().await;
    output.assert_success("get via the stalling peer");
    assert_file_digest(&out.path().join("blob0"), digest);

    let parents_down = supernode
        .metric("shoal_supernode_parents_down_total", &[])
        .await;
    let mut timeouts = 0.0;
    for p in &peers[1..] {
        timeouts += p
            .metric(
                "shoal_peer_piece_fetch_failures_total",
                &[("source", "peer"), ("reason", "timeout")],
            )
            .await;
    }
    eprintln!(
        "{fault:?}: {} requests faulted, {} B served after the fault, {timeouts} stalled \
         fetches abandoned, {parents_down} parents taken out of scheduling",
        proxy.faulted(),
        proxy.bytes() - faulted_at,
    );
    StallRun {
        fault,
        survivors,
        faulted_requests: proxy.faulted(),
        timeouts,
        parents_down,
        unfinished_at_fault: unfinished,
    }
}
