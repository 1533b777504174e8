//! Bearer-token auth against a real `docker-registry` (`auth: token`) with a small token issuer
//! inside the test: RS256 JWTs signed with `openssl`, carrying the signing certificate (`x5c`)
//! that the registry trusts. Anonymous clients get pull tokens for `public/*` only; `alice`
//! (Basic credentials at the token endpoint) gets whatever she asks for.
//!
//! Through the mirror: a public image anonymously (the anonymous token flow), a private one with
//! the client's Basic credentials (exchanged for a token) and with the node's configured
//! credentials, and never a cached private blob to a client without credentials.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shoal_common::Digest;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-9";
const SERVICE: &str = "shoal-registry";
const ISSUER: &str = "shoal-test-issuer";

#[derive(Clone)]
struct Issuer {
    key: PathBuf,
    /// Standard base64 of the certificate (DER), for the `x5c` header.
    cert_b64: String,
    tokens: Arc<AtomicU64>,
}

/// Base64, URL-safe without padding for JWT parts.
fn b64(data: &[u8], url: bool) -> String {
    let std = base64(data);
    if url {
        std.trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    } else {
        std
    }
}

fn sign_rs256(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    out.stdout
}

/// `GET /token?service=…&scope=repository:NAME:ACTIONS` → `{"token": JWT}`.
async fn token(
    State(iss): State<Issuer>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let alice = auth == Some(basic_auth(USER, PASSWORD).as_str());
    if auth.is_some() && !alice {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut access = vec![];
    for (k, v) in &q {
        if k != "scope" {
            continue;
        }
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() != 3 || parts[0] != "repository" {
            continue;
        }
        let actions: Vec<&str> = parts[2]
            .split(',')
            .filter(|a| alice || (*a == "pull" && parts[1].starts_with("public/")))
            .collect();
        access.push(serde_json::json!({
            "type": "repository", "name": parts[1], "actions": actions
        }));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let n = iss.tokens.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [iss.cert_b64]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": if alice { USER } else { "" }, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("t{n}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), true),
        b64(claims.to_string().as_bytes(), true)
    );
    let key = iss.key.clone();
    let input = signing_input.clone();
    let sig = tokio::task::spawn_blocking(move || sign_rs256(&key, input.as_bytes()))
        .await
        .unwrap();
    let jwt = format!("{signing_input}.{}", b64(&sig, true));
    axum::Json(serde_json::json!({"token": jwt, "expires_in": 300})).into_response()
}

/// The image read straight from the registry (alice's token): manifest, config and layers.
async fn expected(
    registry_port: u16,
    issuer_port: u16,
    repo: &str,
) -> (Vec<u8>, Vec<(Digest, Vec<u8>)>) {
    let t: serde_json::Value = http()
        .get(format!(
            "http://127.0.0.1:{issuer_port}/token?service={SERVICE}&scope=repository:{repo}:pull"
        ))
        .header("authorization", basic_auth(USER, PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
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
        let key = d.join("key.pem");
        let cert = d.join("cert.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={ISSUER}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let issuer = Issuer {
            key,
            cert_b64: b64(&der, false),
            tokens: Arc::new(AtomicU64::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer_port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/token", get(token))
            .with_state(issuer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let realm = format!("http://127.0.0.1:{issuer_port}/token");
        let registry = Registry::start_token(&realm, SERVICE, ISSUER, &cert).await;
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
        let config = dirs.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[registries.\"{host}\"]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
                 insecure = true\n"
            ),
        )
        .unwrap();
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
            let (ns, auth, repo, name) = (
                ns.clone(),
                auth.map(str::to_owned),
                repo.to_owned(),
                peer.name.clone(),
            );
            async move {
                let (manifest, blobs) = expected(registry_port, issuer_port, &repo).await;
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
        assert!(issuer.tokens.load(Ordering::SeqCst) >= 4);
        assert!(!node.log_tail().contains(PASSWORD));
    })
    .await
}
