//! Cut-through relaying: a peer passes on the pieces it is still receiving, from a parent or
//! from the origin.

mod support;

use std::time::Duration;

use support::*;

/// Eight 1 MiB pieces.
const BLOB: usize = 8 << 20;

/// The seed is throttled and busy with r's download, so the supernode points d at r, which
/// serves d the pieces while they arrive from the seed; d's copy is verified like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_serves_pieces_it_is_still_receiving() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(12, BLOB);
        let (digest, url) = origin.push("relay/app", &blob).await;
        drop(blob);

        let supernode = Supernode::start().await;
        // 2 MiB/s: r's eight pieces arrive together over about 4 s.
        let seed = Peer::start(
            "seed",
            PeerOpts::with_supernode(&supernode).arg("--upload-rate=2MiB"),
        )
        .await;
        let out = tempfile::tempdir().unwrap();
        get(&seed, &url, Some(&digest), &out.path().join("seed"))
            .await
            .assert_success("seeding");

        let r = Peer::start("r", PeerOpts::with_supernode(&supernode)).await;
        let d = Peer::start("d", PeerOpts::with_supernode(&supernode)).await;
        let r_path = out.path().join("r");
        let r_get = spawn_get(&r, &url, Some(&digest), &r_path);
        // Once r is receiving, d asks: the seed's upload slots are r's, r's are free.
        wait_for("the seed to serve r", Duration::from_secs(30), || {
            let seed = &seed;
            async move {
                (seed.metric("shoal_peer_uploads_active", &[]).await >= 1.0).then_some(())
            }
        })
        .await;
        let relayed = d_gets_while_r_receives(&d, &r, r_get, &url, &digest, out.path()).await;
        eprintln!("r relayed {relayed} B to d");
        assert!(
            relayed >= (1 << 20) as f64,
            "r passed on no piece while receiving it ({relayed} B)"
        );
    })
    .await
}

/// Only r may go to the (slow) origin, and d, asking while r receives, gets each piece from
/// r as the origin sends it rather than after r has it whole. The origin sends the blob once;
/// d's copy is checked against the blob's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_passes_on_pieces_while_the_origin_sends_them() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(21, BLOB);
        let (digest, url) = origin.push("relay/origin", &blob).await;
        drop(blob);

        let supernode = Supernode::start_with(&["--max-origin-peers-per-task=1"]).await;
        // 2 MiB/s: r's origin fetches take about 4 s in all.
        let r = Peer::start(
            "r",
            PeerOpts::with_supernode(&supernode)
                .peer_id("r")
                .arg("--download-rate=2MiB"),
        )
        .await;
        let d = Peer::start("d", PeerOpts::with_supernode(&supernode).peer_id("d")).await;
        let out = tempfile::tempdir().unwrap();
        let r_path = out.path().join("r");
        let r_get = spawn_get(&r, &url, Some(&digest), &r_path);
        // r is the task's one origin peer once it has asked for work.
        wait_for("r to join the task", Duration::from_secs(30), || {
            let (supernode, task) = (&supernode, digest.to_string());
            async move { supernode.task_has_peer(&task, "r").await.then_some(()) }
        })
        .await;
        let relayed = d_gets_while_r_receives(&d, &r, r_get, &url, &digest, out.path()).await;

        let from_origin = d
            .metric("shoal_peer_download_bytes_total", &[("source", "origin")])
            .await;
        assert_eq!(from_origin, 0.0, "d went to the origin itself");
        eprintln!("r relayed {relayed} B of its origin fetches to d");
        assert!(
            relayed >= (1 << 20) as f64,
            "r passed on no piece while the origin sent it ({relayed} B)"
        );
        let egress = origin.egress();
        assert!(
            egress < (BLOB + BLOB / 10) as u64,
            "the origin sent {egress} B for a {BLOB} B blob"
        );
    })
    .await
}

/// d downloads while r's download (`r_get`, into `dir/r`) runs; both copies must be the
/// blob. Returns the bytes r relayed.
async fn d_gets_while_r_receives(
    d: &Peer,
    r: &Peer,
    r_get: tokio::task::JoinHandle<GetOutput>,
    url: &str,
    digest: &shoal_common::Digest,
    dir: &std::path::Path,
) -> f64 {
    let d_path = dir.join("d");
    get(d, url, Some(digest), &d_path)
        .await
        .assert_success("get via d");
    r_get.await.unwrap().assert_success("get via r");
    assert_file_digest(&dir.join("r"), digest);
    assert_file_digest(&d_path, digest);
    r.metric("shoal_peer_relayed_bytes_total", &[]).await
}
