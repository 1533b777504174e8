//! A peer's cache survives a crash: after SIGKILL and a restart on the same data dir, the peer
//! announces what it holds again (here to a supernode that was restarted too and so knows
//! nothing) and serves it to another peer without the origin.

mod support;

use std::time::Duration;

use support::*;

const BLOB: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_survives_restart_and_is_reannounced() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(4, BLOB);
        let (digest, url) = origin.push("restart/app", &blob).await;
        drop(blob);
        let task = digest.to_string();

        let mut supernode = Supernode::start().await;
        let mut a = Peer::start("a", PeerOpts::with_supernode(&supernode).peer_id("peer-a")).await;
        let out = tempfile::tempdir().unwrap();
        get(&a, &url, Some(&digest), &out.path().join("a"))
            .await
            .assert_success("first get via A");
        assert_file_digest(&out.path().join("a"), &digest);

        // Crash A, and restart the supernode so that only A's re-announce can tell it A has
        // the blob.
        a.kill9();
        let port = supernode.port;
        supernode.stop();
        supernode = Supernode::start_on(port).await;
        a.restart().await;

        let (status, _) = a.fetch_range(&task, 0, 0).await;
        assert_eq!(
            status, 206,
            "A does not serve the cached blob after its restart"
        );
        wait_for(
            "the supernode to list peer-a on the task",
            Duration::from_secs(30),
            || {
                let (supernode, task) = (&supernode, &task);
                async move { supernode.task_has_peer(task, "peer-a").await.then_some(()) }
            },
        )
        .await;

        let b = Peer::start("b", PeerOpts::with_supernode(&supernode)).await;
        let before = origin.egress();
        get(&b, &url, Some(&digest), &out.path().join("b"))
            .await
            .assert_success("get via B");
        assert_file_digest(&out.path().join("b"), &digest);
        let from_origin = origin.egress() - before;
        assert!(
            from_origin <= HEADERS_ONLY,
            "B took {from_origin} bytes from the origin although restarted A holds the blob"
        );
        let from_peers = b
            .metric("shoal_peer_download_bytes_total", &[("source", "peer")])
            .await;
        assert!(
            from_peers >= BLOB as f64,
            "B reports only {from_peers} bytes downloaded from peers"
        );
        a.assert_running();
    })
    .await
}
