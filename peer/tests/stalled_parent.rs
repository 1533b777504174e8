//! A parent that stalls without closing its connections, in the middle of a swarm: its
//! children notice within the stall timeout (`parent_stall_timeout`, 1 s by default) instead
//! of the 60 s piece timeout, fetch its pieces elsewhere, and the supernode stops offering it
//! once several children reported it. Two ways to stall, each against a fault-free run of the
//! same swarm measured first:
//! - the parent accepts new requests and never answers them;
//! - the parent stops sending in the middle of a body and holds the connection open.
//!
//! The parent sits behind a [`FaultProxy`] (the supernode is given the proxy's address, with
//! `--advertise-addr`), transparent until the fault is switched on. Its own download is not
//! faulted.

mod support;

use std::time::{Duration, Instant};

use support::*;

const BLOB: usize = 64 << 20;
const PEERS: usize = 4;
/// Slow enough that the download lasts several seconds.
const RATE: &str = "--download-rate=20MiB";
/// Loose, for CI machines running other tests at once; the target alone is 1.5 ×.
const BOUND: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_overtake_a_parent_that_stalls_without_closing() {
    with_timeout(Duration::from_secs(300), async {
        let origin = Origin::start().await;
        let (clean_digest, clean_url) = origin.push("stall/clean", &random_blob(21, BLOB)).await;
        // Peer 0 is the one that will stall: the others' times count.
        let fault_free = fault_free_swarm(PEERS, &[RATE], &clean_url, &clean_digest)
            .await
            .into_iter()
            .skip(1)
            .max()
            .unwrap_or_default();

        for (seed, fault) in [(22, Fault::Hang), (23, Fault::Stall(256 << 10))] {
            let (digest, url) = origin
                .push(&format!("stall/{seed}"), &random_blob(seed, BLOB))
                .await;
            let took = stalled_swarm(fault.clone(), &url, &digest).await;
            assert_within(&format!("{fault:?}"), took, fault_free, BOUND);
        }
    })
    .await
}

/// The swarm with peer 0 behind a proxy that meets `fault` on every request once peer 0 has
/// served 4 MiB. Returns when the other peers' gets ended.
async fn stalled_swarm(fault: Fault, url: &str, digest: &shoal_common::Digest) -> Duration {
    let supernode = Supernode::start().await;
    let (stalling, proxy) = start_behind_proxy(
        "stalling",
        PeerOpts::with_supernode(&supernode).arg(RATE),
        FaultPlan::none(),
    )
    .await;
    let mut peers = vec![stalling];
    for i in 1..PEERS {
        let opts = PeerOpts::with_supernode(&supernode).arg(RATE);
        peers.push(Peer::start(&format!("peer{i}"), opts).await);
    }
    let out = tempfile::tempdir().unwrap();
    let mut gets = spawn_timed_gets(&peers, url, digest, out.path(), Instant::now());

    wait_for(
        "the stalling peer to serve 4 MiB",
        Duration::from_secs(60),
        || async { (proxy.bytes() >= 4 << 20).then_some(()) },
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
    let others = finish_all(gets, digest, &format!("{fault:?}")).await;
    // Its own download goes on: only what it serves is faulted.
    let (output, _) = own.wait().await;
    output.assert_success("get via the stalling peer");
    assert_file_digest(&out.path().join("blob0"), digest);

    let down = supernode
        .metric("shoal_supernode_parents_down_total", &[])
        .await;
    let timeouts = {
        let mut n = 0.0;
        for p in &peers[1..] {
            n += p
                .metric(
                    "shoal_peer_piece_fetch_failures_total",
                    &[("source", "peer"), ("reason", "timeout")],
                )
                .await;
        }
        n
    };
    eprintln!(
        "{fault:?}: {} requests faulted, {} B served after the fault, {timeouts} stalled \
         fetches abandoned, {down} parents taken out of scheduling",
        proxy.faulted(),
        proxy.bytes() - faulted_at,
    );
    assert!(
        proxy.faulted() == 0 || timeouts >= 1.0,
        "requests were faulted but no fetch was abandoned as stalled"
    );
    others
}
