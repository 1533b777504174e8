//! The endgame: a download whose last pieces come from a throttled parent does not wait for
//! them. Once every missing piece is in flight, a piece that takes too long is fetched a
//! second time from another parent, and the first copy to arrive wins.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Eight 1 MiB pieces.
const BLOB: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stragglers_from_a_slow_parent_are_fetched_again_elsewhere() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(11, BLOB);
        let (digest, url) = origin.push("endgame/app", &blob).await;
        drop(blob);

        let supernode = Supernode::start().await;
        let fast = Peer::start("fast", PeerOpts::with_supernode(&supernode)).await;
        // 64 KiB/s: one 1 MiB piece from it alone takes 16 s.
        let slow = Peer::start(
            "slow",
            PeerOpts::with_supernode(&supernode).arg("--upload-rate=64KiB"),
        )
        .await;
        let out = tempfile::tempdir().unwrap();
        for (name, p) in [("fast", &fast), ("slow", &slow)] {
            let path = out.path().join(name);
            get(p, &url, Some(&digest), &path)
                .await
                .assert_success(&format!("seeding {name}"));
        }

        // Both seeds hold every piece; the supernode spreads c's pieces over both (fewest
        // uploads in flight first), so some go to the slow one.
        let c = Peer::start("c", PeerOpts::with_supernode(&supernode)).await;
        let path = out.path().join("c");
        let started = Instant::now();
        get(&c, &url, Some(&digest), &path)
            .await
            .assert_success("get via c");
        let took = started.elapsed();
        assert_file_digest(&path, &digest);

        // On loopback only the slow seed makes a piece last the second it takes to become a
        // straggler: a second fetch shows that c was given pieces from it.
        let dups = c.metric("shoal_peer_endgame_duplicates_total", &[]).await;
        eprintln!("c took {took:?}; {dups} second fetches");
        assert!(dups >= 1.0, "no straggler was fetched a second time");
        // Waiting for the slow parent would take 16 s per piece it was given (and the piece
        // timeout is 60 s); second fetches from the fast one take about a second.
        assert!(
            took < Duration::from_secs(12),
            "c waited for the slow parent: {took:?}"
        );
    })
    .await
}
