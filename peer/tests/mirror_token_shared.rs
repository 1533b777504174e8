//! A client's own bearer token expiring while others share its download (issue 21): the
//! download goes on for everyone, and only a request made with the expired token is refused,
//! with the registry's challenge.
//!
//! Tokens last 5 s at a real `docker-registry`; the peer downloads at 2 MiB/s in 1 MiB pieces,
//! so each 12 MiB blob takes about 6 s alone (12 s for both) and its origin pieces outlive the
//! token the download started with.
//! - `private/big` (the node has no credentials; anonymous clients may not read it): client A
//!   starts the download with its own pull token, client B joins with alice's Basic
//!   credentials (which the peer can exchange for new tokens). When A's token is refused, the
//!   download goes on with B's credentials. A client C holding a token of its own that has
//!   expired gets a 401 with the registry's `WWW-Authenticate` challenge meanwhile.
//! - `public/big`: client D alone, with a pull token of its own; when it is refused, the
//!   download goes on with the node's own (anonymous) token.

mod support;

use std::time::{Duration, Instant};

use shoal_testkit::HttpLog;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-9";
const TOKEN_LIFETIME: Duration = Duration::from_secs(5);
const LEN: usize = 12 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clients_expired_token_fails_only_its_own_request() {
    if !tools_present(&["/usr/bin/openssl"]) {
        eprintln!("skipping: openssl is not installed");
        return;
    }
    with_timeout(Duration::from_secs(180), async {
        let issuer = TokenIssuer::start_expiring(USER, PASSWORD, TOKEN_LIFETIME).await;
        let registry = issuer.registry().await;
        let log = HttpLog::start(&registry.addr);
        let host = log.addr.clone();
        let alice = basic_auth(USER, PASSWORD);

        let private = random_blob(220, LEN);
        let public = random_blob(221, LEN);
        let mut digests = vec![];
        for (repo, data) in [("private/big", &private), ("public/big", &public)] {
            let push = issuer.bearer(repo, "pull,push", Some(&alice)).await;
            digests.push(registry.push_with_auth(repo, data, Some(&push)).await);
        }
        let (private_d, public_d) = (digests[0], digests[1]);

        let peer = Peer::start(
            "peer",
            PeerOpts::embedded()
                .arg("--insecure-registry")
                .arg(&host)
                .arg("--download-rate=2MiB")
                .arg("--piece-size=1MiB")
                .arg("--concurrent-pieces=2"),
        )
        .await;
        let url = |repo: &str, digest| {
            format!("{}/v2/{repo}/blobs/{digest}?ns={host}", peer.mirror_url())
        };
        let (private_url, public_url) =
            (url("private/big", private_d), url("public/big", public_d));

        // Tokens of the clients' own, all issued now: they expire together.
        let token_a = issuer.bearer("private/big", "pull", Some(&alice)).await;
        let token_c = issuer.bearer("private/big", "pull", Some(&alice)).await;
        let token_d = issuer.bearer("public/big", "pull", None).await;
        let started = Instant::now();
        let a = tokio::spawn({
            let (u, t) = (private_url.clone(), token_a.clone());
            async move { fetch(&u, Some(&t), None).await }
        });
        let d = tokio::spawn({
            let (u, t) = (public_url.clone(), token_d.clone());
            async move { fetch(&u, Some(&t), None).await }
        });
        // B joins A's download once it is under way.
        let private_s = private_d.to_string();
        wait_for(
            "A's download to fetch its first piece",
            Duration::from_secs(30),
            || {
                let started = log
                    .exchanges()
                    .iter()
                    .any(|x| x.is_blob_get() && x.blob() == Some(private_s.as_str()));
                async move { started.then_some(()) }
            },
        )
        .await;
        let b = tokio::spawn({
            let (u, t) = (private_url.clone(), alice.clone());
            async move { fetch(&u, Some(&t), None).await }
        });

        // Once the clients' tokens have expired at the registry, C comes with its own.
        let direct = format!("http://{}/v2/private/big/blobs/{private_d}", registry.addr);
        wait_for(
            "the clients' tokens to expire",
            Duration::from_secs(30),
            || {
                let (direct, t) = (direct.clone(), token_c.clone());
                async move {
                    let resp = http().head(&direct).header("authorization", t).send().await;
                    resp.ok().filter(|r| r.status() == 401).map(|_| ())
                }
            },
        )
        .await;
        let expired_at = started.elapsed();
        let c = fetch(&private_url, Some(&token_c), None).await;
        assert_eq!(c.status, 401, "C's expired token: {c:?}");
        let challenge = c.challenge.clone().unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(&issuer.realm()),
            "C gets the registry's challenge, got {challenge:?}"
        );
        assert!(
            !a.is_finished() && !b.is_finished(),
            "the download ended before the tokens expired: the test proves nothing"
        );

        let (a, b, d) = (a.await.unwrap(), b.await.unwrap(), d.await.unwrap());
        a.assert_bytes(&private, "A (its token expired during the download)");
        b.assert_bytes(&private, "B (joined A's download)");
        d.assert_bytes(&public, "D (alone; its token expired during the download)");
        let took = started.elapsed();

        // The downloads really outlived the tokens they started with: the registry refused
        // pieces of both, and neither download failed.
        let refused = |digest: &str| {
            log.exchanges()
                .iter()
                .filter(|x| x.is_blob_get() && x.blob() == Some(digest) && x.status == 401)
                .count()
        };
        let (refused_private, refused_public) =
            (refused(&private_s), refused(&public_d.to_string()));
        eprintln!(
            "shared download: tokens expired after {expired_at:.1?}, downloads took {took:.1?}; \
             pieces refused: private {refused_private}, public {refused_public}; tokens issued: {}",
            issuer.issued()
        );
        assert!(refused_private >= 1, "no piece of private/big was refused");
        assert!(refused_public >= 1, "no piece of public/big was refused");
        assert_eq!(
            peer.metric("shoal_peer_downloads_total", &[("result", "ok")])
                .await,
            2.0
        );
        assert_eq!(
            peer.metric("shoal_peer_downloads_total", &[("result", "failed")])
                .await,
            0.0
        );
    })
    .await
}
