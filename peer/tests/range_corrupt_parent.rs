//! A parent that serves corrupt pieces (a fault proxy in front of its piece server flips
//! bytes) cannot poison a ranged request: peer A holds the blob and lies to other peers; peer B
//! asks a range through its mirror and gets exactly the registry's bytes (from another holder or the origin), having
//! caught and rejected A's pieces; nothing corrupt lands in B's cache; peer C, with a liar and
//! an honest holder to choose from, gets a wider range right too.

mod support;

use std::time::Duration;

use shoal_common::{Digest, PieceLayout};
use support::*;

const BLOB: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_from_lying_parent_is_rejected() {
    with_timeout(Duration::from_secs(300), async {
        let origin = Origin::start().await;
        let repo = "range/corrupt";
        let blob = random_blob(700, BLOB);
        let (digest, _) = origin.push(repo, &blob).await;
        let task = digest.to_string();
        let piece = PieceLayout::for_length(BLOB as u64).piece_size;
        let supernode = Supernode::start().await;
        let opts = |id: &str| {
            PeerOpts::with_supernode(&supernode)
                .peer_id(id)
                .arg("--insecure-registry")
                .arg(origin.host())
        };
        let url = |peer: &Peer, d: &Digest| {
            format!(
                "{}/v2/{repo}/blobs/{d}?ns={}",
                peer.mirror_url(),
                origin.host()
            )
        };
        let (liar, lie) = start_liar("liar", opts("liar")).await;

        // The liar fetches the whole blob first (correctly stored: it only lies when serving).
        fetch(&url(&liar, &digest), None, None)
            .await
            .assert_bytes(&blob, "the liar's own whole-blob GET");
        // The fault must be active, or this test would prove nothing.
        let (status, served) = fetch_piece_range(&lie.url(), &task, 0, 65535).await;
        assert_eq!(status, 206, "the liar's piece server");
        assert_eq!(
            served.len(),
            65536,
            "the liar's piece server, bytes 0-65535"
        );
        assert_ne!(
            served[..],
            blob[..65536],
            "the corrupting proxy served correct bytes"
        );

        // Peer B asks a range over pieces 1-5 while the liar is their only holder.
        let b = Peer::start("peer-b", opts("peer-b")).await;
        let (start, last) = (piece + 100, 5 * piece + 200);
        fetch_range(&url(&b, &digest), None, &format!("bytes={start}-{last}"))
            .await
            .assert_range(&blob, start, last, "peer B, range held only by the liar");
        let rejected = b.metric("shoal_peer_pieces_rejected_total", &[]).await;
        let uploaded = liar.metric("shoal_peer_upload_bytes_total", &[]).await;
        let from_peers = b
            .metric("shoal_peer_download_bytes_total", &[("source", "peer")])
            .await;
        let from_origin = b
            .metric("shoal_peer_download_bytes_total", &[("source", "origin")])
            .await;
        eprintln!(
            "peer B rejected {rejected} pieces; the liar uploaded {uploaded} B; B downloaded \
             {from_peers} B from peers and {from_origin} B from the origin"
        );
        assert!(
            rejected > 0.0,
            "peer B rejected no piece for its range: it never took one from the liar (the liar \
             uploaded {uploaded} B; B got {from_peers} B from peers, {from_origin} B from the \
             origin), so verification of ranged downloads was not exercised"
        );
        // Nothing corrupt in B's cache: its piece server hands out the true bytes of every
        // piece the range covered.
        for p in 1..=5u64 {
            let (s, e) = (p * piece, (p + 1) * piece - 1);
            let (status, bytes) = b.fetch_range(&task, s, e).await;
            assert_eq!(status, 206, "peer B's piece server, piece {p} ({s}-{e})");
            assert!(
                bytes[..] == blob[s as usize..=e as usize],
                "peer B's piece server serves wrong bytes for piece {p} ({s}-{e}): {} of {} \
                 bytes differ",
                bytes
                    .iter()
                    .zip(&blob[s as usize..=e as usize])
                    .filter(|(x, y)| x != y)
                    .count(),
                bytes.len()
            );
        }

        // Peer C: a wider range, held partly by the liar and B, partly by the liar alone.
        let c = Peer::start("peer-c", opts("peer-c")).await;
        let (start, last) = (3 * piece - 7, 9 * piece + 7);
        fetch_range(&url(&c, &digest), None, &format!("bytes={start}-{last}"))
            .await
            .assert_range(&blob, start, last, "peer C, range held by the liar and B");
        eprintln!(
            "peer C rejected {} pieces",
            c.metric("shoal_peer_pieces_rejected_total", &[]).await
        );
        // B then pulls the whole blob: every byte right, checked against the digest.
        let f = fetch(&url(&b, &digest), None, None).await;
        f.assert_bytes(&blob, "peer B, the whole blob after its range");
        let mut peers = [liar, b, c];
        for p in &mut peers {
            p.assert_running();
        }
    })
    .await
}
