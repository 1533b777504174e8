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

/// The mirror hands a whole blob over only once it is known to match its digest. After a
/// download, the download's own check is recorded beside the file; a complete file without
/// that record (the peer died before its check, or the record is gone) is hashed as it is
/// sent, and damaged bytes cut the response before its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unverified_cached_blob_is_checked_before_it_is_served_whole() {
    with_timeout(Duration::from_secs(120), async {
        let origin = Origin::start().await;
        let blob = random_blob(5, 4 << 20);
        let (digest, _) = origin.push("restart/unverified", &blob).await;
        let mut a = Peer::start(
            "a",
            PeerOpts::embedded()
                .arg("--insecure-registry")
                .arg(origin.host()),
        )
        .await;
        let url = format!(
            "{}/v2/restart/unverified/blobs/{digest}?ns={}",
            a.mirror_url(),
            origin.host()
        );
        let body = http()
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body == blob, "first GET through the mirror");

        a.kill9();
        let marker = find_file(&a.data_dir, "verified")
            .expect("the download recorded its whole-blob check beside the file");
        let data = marker.with_file_name("data");
        std::fs::remove_file(&marker).unwrap();
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[1 << 20] ^= 0xff;
        std::fs::write(&data, &bytes).unwrap();
        a.restart().await;

        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        // A cut body is what a client must see; a short one would do too.
        if let Ok(got) = resp.bytes().await {
            assert!(
                got.len() < blob.len(),
                "a complete body ({} bytes) of a damaged, unverified blob",
                got.len()
            );
        }
        a.assert_running();
    })
    .await;
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
