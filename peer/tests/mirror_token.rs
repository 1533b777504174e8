//! Bearer-token auth against a real `docker-registry` (`auth: token`) with the test token
//! issuer ([`support::TokenIssuer`]): RS256 JWTs signed with `openssl`, carrying the signing
//! certificate (`x5c`) that the registry trusts. Anonymous clients get pull tokens for
//! `public/*` only; `alice` (Basic credentials at the token endpoint) gets whatever she asks for.
//!
//! Through the mirror: a public image anonymously (the anonymous token flow), a private one with
//! the client's Basic credentials (exchanged for a token) and with the node's configured
//! credentials, and never a cached private blob to a client without credentials.

mod support;

use std::time::Duration;

use shoal_common::Digest;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-9";

/// The image read straight from the registry (alice's token): manifest, config and layers.
async fn expected(
    registry_port: u16,
    issuer: &TokenIssuer,
    repo: &str,
) -> (Vec<u8>, Vec<(Digest, Vec<u8>)>) {
    let bearer = issuer
        .bearer(repo, "pull", Some(&basic_auth(USER, PASSWORD)))
        .await;
    let base = format!("http://127.0.0.1:{registry_port}/v2/{repo}");
    let m = fetch(
        &format!("{base}/manifests/t"),
        Some(&bearer),
        Some(MANIFEST_ACCEPT),
    )
    .await;
    assert_eq!(m.status, 200, "direct manifest with a token: {m:?}");
    let manifest = m.body.unwrap();
    let mut blobs = vec![];
    for d in manifest_blobs(&manifest) {
        let b = fetch(&format!("{base}/blobs/{d}"), Some(&bearer), None).await;
        assert_eq!(b.status, 200);
        blobs.push((d, b.body.unwrap()));
    }
    (manifest, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_registry_with_token_auth() {
    if !tools_present(&["/usr/bin/umoci", "/usr/bin/skopeo", "/usr/bin/openssl"]) {
        eprintln!("skipping: umoci, skopeo or openssl is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let issuer = TokenIssuer::start(USER, PASSWORD).await;
        let registry = issuer.registry().await;
        let registry_port = registry.port;
        let origin = Origin::with_registry(registry).await;

        let one = random_blob(300, 3 << 20);
        let two = random_blob(301, 2 << 20);
        let image = build_image(d, &[("one.bin", &one), ("two.bin", &two)]);
        let creds = format!("{USER}:{PASSWORD}");
        for repo in ["public/app", "private/app"] {
            push_image(
                &image,
                &format!("127.0.0.1:{registry_port}/{repo}:t"),
                Some(&creds),
            );
        }
        let host = origin.host();
        let ns = format!("ns={host}");
        let good = basic_auth(USER, PASSWORD);

        let dirs = tempfile::tempdir().unwrap();
        let config = credentials_config(dirs.path(), &host, USER, PASSWORD);
        let anon = Peer::start(
            "peer-anon",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let node = Peer::start(
            "peer-node-creds",
            PeerOpts::embedded()
                .arg("--config")
                .arg(config.display().to_string()),
        )
        .await;

        let pull = |peer: &Peer, repo: &str, auth: Option<&str>| {
            let base = format!("{}/v2/{repo}", peer.mirror_url());
            let (issuer, ns, auth, repo, name) = (
                &issuer,
                ns.clone(),
                auth.map(str::to_owned),
                repo.to_owned(),
                peer.name.clone(),
            );
            async move {
                let (manifest, blobs) = expected(registry_port, issuer, &repo).await;
                let m = fetch(
                    &format!("{base}/manifests/t?{ns}"),
                    auth.as_deref(),
                    Some(MANIFEST_ACCEPT),
                )
                .await;
                m.assert_bytes(&manifest, &format!("{name} {repo} manifest"));
                for (d, data) in &blobs {
                    let b = fetch(&format!("{base}/blobs/{d}?{ns}"), auth.as_deref(), None).await;
                    b.assert_bytes(data, &format!("{name} {repo} blob {d}"));
                }
                blobs
            }
        };

        // (c) anonymous token flow on a real registry: public image, no credentials.
        pull(&anon, "public/app", None).await;
        // Private: the client's Basic credentials are exchanged for a token.
        let blobs = pull(&anon, "private/app", Some(&good)).await;
        // Cached now; a client without credentials (anonymous token: no pull right) or with
        // wrong ones is refused. The layers are the same blobs as public/app's, so the check
        // must be per repository: asked under the private name, refused.
        for (d, _) in &blobs {
            let url = format!("{}/v2/private/app/blobs/{d}?{ns}", anon.mirror_url());
            fetch(&url, None, None)
                .await
                .assert_refused(&format!("cached private {d} without credentials"));
            fetch(&url, Some(&basic_auth(USER, "wrong")), None)
                .await
                .assert_refused(&format!("cached private {d} with wrong credentials"));
        }
        // The node's configured credentials: clients send none.
        pull(&node, "private/app", None).await;
        // With the check switched off, a cached blob is served to anyone who reaches the mirror
        // (what docs/mirror.md warns about): the switch works.
        let off_config = dirs.path().join("off.toml");
        std::fs::write(
            &off_config,
            format!("verify_blob_access = false\ninsecure_registries = [\"{host}\"]\n"),
        )
        .unwrap();
        let off = Peer::start(
            "peer-check-off",
            PeerOpts::embedded()
                .arg("--config")
                .arg(off_config.display().to_string()),
        )
        .await;
        pull(&off, "private/app", Some(&good)).await;
        for (d, data) in &blobs {
            let url = format!("{}/v2/private/app/blobs/{d}?{ns}", off.mirror_url());
            fetch(&url, None, None)
                .await
                .assert_bytes(data, "check off: cached blob without credentials");
        }
        assert_eq!(
            off.metric("shoal_peer_blob_access_checks_total", &[]).await,
            0.0
        );
        assert!(
            anon.metric(
                "shoal_peer_blob_access_checks_total",
                &[("result", "denied")]
            )
            .await
                >= 6.0
        );
        assert!(issuer.issued() >= 4);
        assert!(!node.log_tail().contains(PASSWORD));
    })
    .await
}
