//! A peer dies (SIGKILL) in the middle of a swarm download while others fetch from it: the
//! remaining peers still finish with correct blobs.

mod support;

use std::time::Duration;

use support::*;

const BLOB: usize = 64 << 20;
const PEERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_finish_when_a_peer_dies_mid_download() {
    with_timeout(Duration::from_secs(300), async {
        let origin = Origin::start().await;
        let blob = random_blob(3, BLOB);
        let (digest, url) = origin.push("kill/app", &blob).await;
        drop(blob);

        let supernode = Supernode::start().await;
        let mut peers = vec![];
        for i in 0..PEERS {
            // Slow enough that the download lasts several seconds.
            let opts = PeerOpts::with_supernode(&supernode).arg("--download-rate=20MiB");
            peers.push(Peer::start(&format!("peer{i}"), opts).await);
        }

        let out = tempfile::tempdir().unwrap();
        let mut gets: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let path = out.path().join(format!("blob{i}"));
                (path.clone(), spawn_get(p, &url, Some(&digest), &path))
            })
            .collect();

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
                    (best.1 >= (4 << 20) as f64).then_some(best.0)
                }
            },
        )
        .await;
        let unfinished = gets
            .iter()
            .enumerate()
            .filter(|(i, (_, g))| *i != victim && !g.is_finished())
            .count();
        assert!(
            unfinished > 0,
            "every download finished before the kill: --download-rate is not limiting"
        );
        eprintln!("killing peer{victim} ({unfinished} other downloads still running)");
        peers[victim].kill9();

        let (_, victim_get) = gets.remove(victim);
        let victim_result = victim_get.await.unwrap();
        eprintln!(
            "get via the killed peer{victim}: {} ({})",
            victim_result.status,
            victim_result.stderr.trim()
        );
        for (path, get) in gets {
            get.await
                .unwrap()
                .assert_success(&format!("get into {}", path.display()));
            assert_file_digest(&path, &digest);
        }
        for (i, p) in peers.iter_mut().enumerate() {
            if i != victim {
                p.assert_running();
            }
        }
    })
    .await
}
