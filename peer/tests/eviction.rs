//! The disk cache stays within `--cache-size` and evicts the least recently used blobs first.

mod support;

use std::time::Duration;

use support::*;

// 2.5 blobs fit in the cache. (8 MiB blobs: the smallest cache a peer accepts is 16 MiB.)
const BLOB: usize = 8 << 20; // cut into 1 MiB pieces
const PIECE: u64 = 1 << 20;
const QUOTA: u64 = BLOB as u64 * 5 / 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_respects_quota_and_evicts_lru() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let mut blobs = vec![];
        for seed in 0..5 {
            blobs.push(
                origin
                    .push("evict/app", &random_blob(10 + seed, BLOB))
                    .await,
            );
        }

        let peer = Peer::start("peer", PeerOpts::embedded().cache_size(QUOTA.to_string())).await;
        let out = tempfile::tempdir().unwrap();
        let fetch = |i: usize, name: &str| {
            let (digest, url) = &blobs[i];
            let path = out.path().join(name);
            let peer = &peer;
            async move {
                get(peer, url, Some(digest), &path)
                    .await
                    .assert_success(&format!("get of blob {i}"));
                assert_file_digest(&path, digest);
            }
        };

        for i in 0..blobs.len() {
            fetch(i, &format!("first{i}")).await;
            let used = disk_usage(&peer.data_dir);
            eprintln!("after blob {i}: data dir holds {used} B (quota {QUOTA} B)");
            assert!(
                used <= QUOTA + PIECE,
                "after fetching blob {i} the data dir holds {used} bytes; quota {QUOTA} + one \
                 piece"
            );
        }

        // The most recent blob is still cached...
        let before = origin.egress();
        fetch(4, "again4").await;
        let cost = origin.egress() - before;
        assert!(
            cost <= HEADERS_ONLY,
            "re-fetching the most recently used blob took {cost} origin bytes"
        );
        // ...the oldest was evicted.
        let before = origin.egress();
        fetch(0, "again0").await;
        let cost = origin.egress() - before;
        assert!(
            cost >= BLOB as u64,
            "re-fetching the least recently used blob took only {cost} origin bytes: it was \
             not evicted although 4 newer blobs exceed the quota"
        );
        assert!(disk_usage(&peer.data_dir) <= QUOTA + PIECE);
    })
    .await
}
