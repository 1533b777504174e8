//! A private registry (Debian's `docker-registry` with htpasswd Basic auth) behind the mirror:
//! a multi-layer image built with umoci and pushed with skopeo is pulled byte for byte with the
//! client's own credentials and with the node's configured credentials; a client without (or
//! with wrong) credentials gets 401/403 — not the blob — from a peer that holds it in its
//! cache, and from a peer that would get it through P2P.

mod support;

use std::time::Duration;

use shoal_common::Digest;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Pass";

/// The pulled image: manifest and (digest, bytes) of its config and layers, read straight from
/// the registry with credentials.
struct Expected {
    manifest: Vec<u8>,
    blobs: Vec<(Digest, Vec<u8>)>,
}

async fn expected(origin: &Origin, repo: &str, auth: &str) -> Expected {
    let direct = format!("http://127.0.0.1:{}/v2/{repo}", origin.registry.port);
    let m = fetch(
        &format!("{direct}/manifests/t"),
        Some(auth),
        Some(MANIFEST_ACCEPT),
    )
    .await;
    assert_eq!(m.status, 200, "direct manifest: {m:?}");
    let manifest = m.body.unwrap();
    let mut blobs = vec![];
    for d in manifest_blobs(&manifest) {
        let b = fetch(&format!("{direct}/blobs/{d}"), Some(auth), None).await;
        assert_eq!(b.status, 200);
        blobs.push((d, b.body.unwrap()));
    }
    Expected { manifest, blobs }
}

/// Pulls manifest and blobs through `peer` with `auth`, checking every byte.
async fn pull_all(peer: &Peer, origin: &Origin, repo: &str, auth: Option<&str>, e: &Expected) {
    let base = format!("{}/v2/{repo}", peer.mirror_url());
    let ns = format!("ns={}", origin.host());
    let m = fetch(
        &format!("{base}/manifests/t?{ns}"),
        auth,
        Some(MANIFEST_ACCEPT),
    )
    .await;
    m.assert_bytes(&e.manifest, &format!("{} manifest", peer.name));
    for (d, data) in &e.blobs {
        let b = fetch(&format!("{base}/blobs/{d}?{ns}"), auth, None).await;
        b.assert_bytes(data, &format!("{} blob {d}", peer.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_registry_pulls_and_never_leaks_blobs() {
    if !tools_present(&["/usr/bin/umoci", "/usr/bin/skopeo", "/usr/bin/htpasswd"]) {
        eprintln!("skipping: umoci, skopeo or htpasswd is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let dir = tempfile::tempdir().unwrap();
        let one = random_blob(100, 3 << 20);
        let two = random_blob(101, 2 << 20);
        let image = build_image(dir.path(), &[("one.bin", &one), ("two.bin", &two)]);
        let origin = Origin::start_htpasswd(USER, PASSWORD).await;
        let repo = "private/app";
        push_image(
            &image,
            &format!("127.0.0.1:{}/{repo}:t", origin.registry.port),
            Some(&format!("{USER}:{PASSWORD}")),
        );
        let good = basic_auth(USER, PASSWORD);
        let wrong = basic_auth(USER, "nope");
        let e = expected(&origin, repo, &good).await;
        assert_eq!(e.blobs.len(), 3, "config and two layers");
        let host = origin.host();
        let ns = format!("ns={host}");

        let supernode = Supernode::start().await;
        let opts = || {
            PeerOpts::with_supernode(&supernode)
                .arg("--insecure-registry")
                .arg(&host)
        };
        let a = Peer::start("peer-a", opts()).await;

        // (b) the client's own Basic credentials, passed through.
        pull_all(&a, &origin, repo, Some(&good), &e).await;

        // Peer A now holds every blob. Without credentials, or with wrong ones: refused.
        let url_a = |d: &Digest| format!("{}/v2/{repo}/blobs/{d}?{ns}", a.mirror_url());
        for (d, _) in &e.blobs {
            let f = fetch(&url_a(d), None, None).await;
            f.assert_refused(&format!("cached {d} without credentials"));
            assert!(
                f.challenge
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Basic")),
                "the registry's challenge is passed on: {f:?}"
            );
            fetch(&url_a(d), Some(&wrong), None)
                .await
                .assert_refused(&format!("cached {d} with wrong credentials"));
        }
        let m = fetch(
            &format!("{}/v2/{repo}/manifests/t?{ns}", a.mirror_url()),
            None,
            Some(MANIFEST_ACCEPT),
        )
        .await;
        m.assert_refused("manifest without credentials");
        let denied = a
            .metric(
                "shoal_peer_blob_access_checks_total",
                &[("result", "denied")],
            )
            .await;
        assert!(denied >= 6.0, "denied access checks: {denied}");
        // The right credentials again: served from the cache, the check remembered.
        let hits_before = a
            .metric(
                "shoal_peer_blob_access_checks_total",
                &[("result", "cache_hit")],
            )
            .await;
        let (d0, data0) = &e.blobs[1];
        fetch(&url_a(d0), Some(&good), None)
            .await
            .assert_bytes(data0, "cached blob with credentials");
        let hits = a
            .metric(
                "shoal_peer_blob_access_checks_total",
                &[("result", "cache_hit")],
            )
            .await;
        assert!(
            hits > hits_before,
            "the earlier positive check is remembered"
        );

        // Peer B has nothing cached; its P2P source (peer A) has it all. Still refused.
        let b = Peer::start("peer-b", opts()).await;
        for (d, _) in &e.blobs {
            let url = format!("{}/v2/{repo}/blobs/{d}?{ns}", b.mirror_url());
            fetch(&url, None, None)
                .await
                .assert_refused(&format!("peer B {d} without credentials"));
            fetch(&url, Some(&wrong), None)
                .await
                .assert_refused(&format!("peer B {d} with wrong credentials"));
        }
        assert_eq!(
            b.metric("shoal_peer_download_bytes_total", &[]).await,
            0.0,
            "peer B fetched nothing for refused clients"
        );
        // With credentials peer B pulls, from peer A.
        let before = origin.egress();
        pull_all(&b, &origin, repo, Some(&good), &e).await;
        let cost = origin.egress() - before;
        assert!(cost <= HEADERS_ONLY, "peer B took {cost} registry bytes");

        // (b) the node's configured credentials (password from a file, as a mounted Secret
        // would be): clients send none.
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        let config = dir.path().join("peer-c.toml");
        std::fs::write(
            &config,
            format!(
                "[registries.\"{host}\"]\nusername = \"{USER}\"\npassword_file = \"{}\"\n\
                 insecure = true\n",
                password_file.display()
            ),
        )
        .unwrap();
        let mut c = Peer::start(
            "peer-c",
            PeerOpts::with_supernode(&supernode)
                .arg("--config")
                .arg(config.display().to_string()),
        )
        .await;
        pull_all(&c, &origin, repo, None, &e).await;
        // Cached now on C too: still served without client credentials (the node's own).
        pull_all(&c, &origin, repo, None, &e).await;
        // A client's wrong credentials are not replaced by the node's.
        let f = fetch(
            &format!("{}/v2/{repo}/blobs/{}?{ns}", c.mirror_url(), e.blobs[1].0),
            Some(&wrong),
            None,
        )
        .await;
        f.assert_refused("peer C with the client's wrong credentials");
        assert!(
            !c.log_tail().contains(PASSWORD),
            "the password appears in peer C's log"
        );
        // check-config shows the settings without the secret.
        let out = std::process::Command::new(peer_bin())
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(USER) && !text.contains(PASSWORD), "{text}");
        // A broken registries entry is refused, naming the registry, never echoing a secret.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            format!("[registries.\"{host}\"]\npassword = \"{PASSWORD}\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(peer_bin())
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "check-config accepted a password without username"
        );
        assert!(err.contains(&host) && !err.contains(PASSWORD), "{err}");
        c.assert_running();
    })
    .await
}
