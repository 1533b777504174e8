//! A registry token expiring during a long blob download (issue 21): tokens last 3 s at a
//! real `docker-registry`, the peer downloads at 1 MiB/s in 1 MiB pieces, so a 12 MiB blob
//! takes about 12 s and most of its origin pieces are asked for after the token the download
//! started with has expired. The node's own token (anonymous for `public/*`, from its
//! configured credentials for `private/*`) is renewed and the blob completes and verifies.

mod support;

use std::time::{Duration, Instant};

use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-9";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3);
const LEN: usize = 12 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_expiring_mid_download_is_renewed() {
    if !tools_present(&["/usr/bin/openssl"]) {
        eprintln!("skipping: openssl is not installed");
        return;
    }
    with_timeout(Duration::from_secs(180), async {
        let issuer = TokenIssuer::start_expiring(USER, PASSWORD, TOKEN_LIFETIME).await;
        let origin = Origin::with_registry(issuer.registry().await).await;
        let host = origin.host();
        let alice = basic_auth(USER, PASSWORD);

        let public = random_blob(210, LEN);
        let private = random_blob(211, LEN);
        let mut digests = vec![];
        for (repo, data) in [("public/big", &public), ("private/big", &private)] {
            let push = issuer.bearer(repo, "pull,push", Some(&alice)).await;
            let d = origin
                .registry
                .push_with_auth(repo, data, Some(&push))
                .await;
            digests.push(d);
        }

        let dirs = tempfile::tempdir().unwrap();
        let slow = |peer: PeerOpts| {
            peer.arg("--download-rate=1MiB")
                .arg("--piece-size=1MiB")
                .arg("--concurrent-pieces=2")
        };
        let anon = Peer::start(
            "peer-anon",
            slow(PeerOpts::embedded().arg("--insecure-registry").arg(&host)),
        )
        .await;
        let config = credentials_config(dirs.path(), &host, USER, PASSWORD);
        let node = Peer::start(
            "peer-node-creds",
            slow(
                PeerOpts::embedded()
                    .arg("--config")
                    .arg(config.display().to_string()),
            ),
        )
        .await;

        let started = Instant::now();
        let url = |peer: &Peer, repo: &str, digest| {
            format!("{}/v2/{repo}/blobs/{digest}?ns={host}", peer.mirror_url())
        };
        let (public_url, private_url) = (
            url(&anon, "public/big", digests[0]),
            url(&node, "private/big", digests[1]),
        );
        let (a, b) = tokio::join!(
            fetch(&public_url, None, None),
            fetch(&private_url, None, None),
        );
        a.assert_bytes(&public, "public/big through the mirror (anonymous token)");
        b.assert_bytes(
            &private,
            "private/big through the mirror (node's credentials)",
        );
        let took = started.elapsed();
        assert!(
            took >= TOKEN_LIFETIME * 3,
            "the downloads took {took:?}: too fast to outlive a token, the test proves nothing"
        );
        // Two pushes, then per peer: the first token, and at least one renewal.
        assert!(
            issuer.issued() >= 2 + 2 * 2,
            "only {} tokens issued: nothing was renewed",
            issuer.issued()
        );
    })
    .await
}
