//! A parent killed (SIGKILL) mid-swarm: the busiest uploader dies once it has served some
//! pieces; the survivors must finish with correct blobs and without waiting for it. Measured
//! against a fault-free swarm of the same shape (fresh supernode and peers) in the same call.

use std::time::{Duration, Instant};

use crate::origin::Origin;
use crate::scenarios::SwarmOpts;
use crate::shoal::{Peer, PeerOpts, Supernode};
use crate::swarm::{fault_free_swarm_from, finish_all, spawn_timed_gets};
use crate::{random_blob, scratch, wait_for};

/// What the victim must have uploaded to others before it is killed.
const KILL_AFTER_UPLOAD: f64 = (4 << 20) as f64;

/// The two times of one kill: the fault-free swarm's last get, and the survivors' last get.
#[derive(Clone, Debug)]
pub struct KillParentOutcome {
    pub fault_free: Duration,
    pub survivors: Duration,
    /// `shoal_supernode_parents_down_total` after the kill.
    pub parents_down: f64,
    /// Gets other than the victim's still running when it was killed.
    pub unfinished_at_kill: usize,
}

/// Runs the fault-free swarm, then the same swarm with its busiest uploader killed.
pub async fn kill_parent(opts: &SwarmOpts) -> KillParentOutcome {
    let rate = opts.rate_arg();
    let origin = Origin::start().await;
    let (clean_digest, clean_url) = origin
        .push("kill/clean", &random_blob(opts.seed + 4, opts.blob_len))
        .await;
    let (digest, url) = origin
        .push("kill/app", &random_blob(opts.seed + 3, opts.blob_len))
        .await;

    // Which peer dies is only known once it is the busiest uploader: all of them count.
    let fault_free = fault_free_swarm_from(
        &opts.bin_dir,
        opts.peers,
        &[&rate],
        &clean_url,
        &clean_digest,
    )
    .await
    .into_iter()
    .max()
    .unwrap_or_default();

    let supernode = Supernode::start_from(&opts.bin_dir).await;
    let mut peers = vec![];
    for i in 0..opts.peers {
        let opts = PeerOpts::with_supernode(&supernode).arg(&rate);
        peers.push(Peer::start(&format!("peer{i}"), opts).await);
    }
    let out = scratch::tempdir();
    let mut gets = spawn_timed_gets(&peers, &url, &digest, out.path(), Instant::now());

    // Kill the peer that is uploading the most, once it has served some pieces.
    let victim = wait_for(
        "a peer to upload 4 MiB to others",
        Duration::from_secs(60),
        || {
            let peers = &peers;
            async move {
                let mut best = (0, 0.0);
                for (i, p) in peers.iter().enumerate() {
                    let up = p.metric("shoal_peer_upload_bytes_total", &[]).await;
                    if up > best.1 {
                        best = (i, up);
                    }
                }
                (best.1 >= KILL_AFTER_UPLOAD).then_some(best.0)
            }
        },
    )
    .await;
    let unfinished = gets
        .iter()
        .enumerate()
        .filter(|(i, g)| *i != victim && !g.is_finished())
        .count();
    assert!(
        unfinished > 0,
        "every download finished before the kill: --download-rate is not limiting"
    );
    eprintln!("killing peer{victim} ({unfinished} other downloads still running)");
    peers[victim].kill9();

    let (victim_result, _) = gets.remove(victim).wait().await;
    eprintln!(
        "get via the killed peer{victim}: {} ({})",
        victim_result.status,
        victim_result.stderr.trim()
    );
    let survivors = finish_all(gets, &digest, "survivors").await;
    for (i, p) in peers.iter_mut().enumerate() {
        if i != victim {
            p.assert_running();
        }
    }
    let parents_down = supernode
        .metric("shoal_supernode_parents_down_total", &[])
        .await;
    eprintln!("parents taken out of scheduling: {parents_down}");
    KillParentOutcome {
        fault_free,
        survivors,
        parents_down,
        unfinished_at_kill: unfinished,
    }
}
