//! Five peers fetch one 64 MiB blob at the same moment: every copy is correct, the origin sends
//! the blob about once, and the peers really exchanged pieces.

mod support;

use std::time::Duration;

use support::*;

const BLOB: usize = 64 << 20;
const PEERS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_peers_share_one_origin_download() {
    with_timeout(Duration::from_secs(300), async {
        let origin = Origin::start().await;
        let blob = random_blob(1, BLOB);
        let (digest, url) = origin.push("swarm/app", &blob).await;
        drop(blob);

        let supernode = Supernode::start().await;
        let mut peers = vec![];
        for i in 0..PEERS {
            let opts = PeerOpts::with_supernode(&supernode);
            peers.push(Peer::start(&format!("peer{i}"), opts).await);
        }

        let out = tempfile::tempdir().unwrap();
        let before = origin.egress();
        // Start every download before awaiting any.
        let gets: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let path = out.path().join(format!("blob{i}"));
                (path.clone(), spawn_get(p, &url, Some(&digest), &path))
            })
            .collect();
        for (i, (path, get)) in gets.into_iter().enumerate() {
            get.await
                .unwrap()
                .assert_success(&format!("get via peer{i}"));
            assert_file_digest(&path, &digest);
        }
        let egress = origin.egress() - before;

        let (mut from_peers, mut from_origin) = (0.0, 0.0);
        for p in &peers {
            let m = p.metrics().await;
            let downloaded =
                |source| metric_value(&m, "shoal_peer_download_bytes_total", &[("source", source)]);
            from_peers += downloaded("peer");
            from_origin += downloaded("origin");
        }
        eprintln!(
            "origin egress {egress} B ({:.2} x blob); peers report {from_origin} B from the \
             origin, {from_peers} B from peers",
            egress as f64 / BLOB as f64
        );
        assert!(
            egress as f64 <= 1.1 * BLOB as f64,
            "the origin sent {egress} bytes for a {BLOB}-byte blob to {PEERS} peers (limit 1.1 x)"
        );
        // At most 1.1 blobs came from the origin, so at least 3.9 came from peers.
        assert!(
            from_peers >= BLOB as f64,
            "peers report only {from_peers} bytes downloaded from other peers"
        );
        for p in &mut peers {
            p.assert_running();
        }
    })
    .await
}
