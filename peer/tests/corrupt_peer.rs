//! A peer whose pieces reach others corrupted (a fault proxy in front of its piece server
//! flips bytes) cannot poison another peer: the downloader detects the bad pieces, rejects
//! them and still ends with the right blob.

mod support;

use std::time::Duration;

use support::*;

const BLOB: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_pieces_are_rejected() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(2, BLOB);
        let (digest, url) = origin.push("corrupt/app", &blob).await;
        let task = digest.to_string();

        let supernode = Supernode::start().await;
        let (liar, lie) =
            start_liar("liar", PeerOpts::with_supernode(&supernode).peer_id("liar")).await;
        let out = tempfile::tempdir().unwrap();

        // The faulty peer fetches first, so it holds every piece, correctly stored.
        let liar_copy = out.path().join("liar");
        get(&liar, &url, Some(&digest), &liar_copy)
            .await
            .assert_success("get via the faulty peer");
        assert_file_digest(&liar_copy, &digest);

        // The fault must be active, or this test would prove nothing.
        let (status, served) = fetch_piece_range(&lie.url(), &task, 0, 65535).await;
        assert_eq!(status, 206, "faulty peer's piece server");
        assert_eq!(served.len(), 65536);
        assert_ne!(
            served[..],
            blob[..65536],
            "the corrupting proxy served correct bytes"
        );

        let honest = Peer::start("honest", PeerOpts::with_supernode(&supernode)).await;
        let honest_copy = out.path().join("honest");
        get(&honest, &url, Some(&digest), &honest_copy)
            .await
            .assert_success("get via the honest peer");
        assert_file_digest(&honest_copy, &digest);

        let rejected = honest.metric("shoal_peer_pieces_rejected_total", &[]).await;
        let uploaded = liar.metric("shoal_peer_upload_bytes_total", &[]).await;
        eprintln!("honest peer rejected {rejected} pieces; faulty peer uploaded {uploaded} B");
        assert!(
            rejected > 0.0,
            "the honest peer rejected no piece: it never took one from the faulty peer, so \
             verification was not exercised (faulty peer uploaded {uploaded} B)"
        );

        // No bad byte reached the honest peer's cache either: it serves the blob intact.
        for start in (0..BLOB).step_by(1 << 20) {
            let end = (start + (1 << 20)).min(BLOB) - 1;
            let (status, bytes) = honest.fetch_range(&task, start as u64, end as u64).await;
            assert_eq!(
                status, 206,
                "honest peer's piece server, bytes {start}-{end}"
            );
            assert!(
                bytes[..] == blob[start..=end],
                "the honest peer serves wrong bytes in {start}-{end}"
            );
        }
    })
    .await
}
