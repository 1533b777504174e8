//! Upstream bearer-token auth: a small token-protected registry (inside the test) answers 401
//! with a `WWW-Authenticate: Bearer` challenge; the mirror fetches an anonymous token, caches
//! it, and both manifests and blobs (through the P2P engine) arrive intact. A private one whose
//! token endpoint wants Basic credentials: the node's configured credentials (or the client's)
//! get the token, a configured token is used as is, and nobody else gets the blob.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shoal_common::Digest;
use support::*;

const TOKEN: &str = "secret-token-1";

#[derive(Clone)]
struct Fake {
    port: u16,
    blob: Arc<Vec<u8>>,
    digest: Digest,
    manifest: Arc<Vec<u8>>,
    token_calls: Arc<AtomicU64>,
}

async fn token(State(f): State<Fake>) -> Response {
    f.token_calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({"token": TOKEN, "expires_in": 300})).into_response()
}

async fn v2(
    State(f): State<Fake>,
    method: Method,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fake\",scope=\"repository:auth/app:pull\"",
            f.port
        );
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    let body = if rest == format!("auth/app/blobs/{}", f.digest) {
        f.blob.as_ref().clone()
    } else if rest == "auth/app/manifests/v1" {
        f.manifest.as_ref().clone()
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    serve_bytes(&method, &headers, body)
}

/// A 200 (or a 206 for `Range`) with `body`; HEAD gets the headers only.
fn serve_bytes(method: &Method, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let len = body.len();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    if let (Some((a, b)), true) = (range, method == Method::GET) {
        let b = b.min(len - 1);
        return (
            StatusCode::PARTIAL_CONTENT,
            [("content-range", format!("bytes {a}-{b}/{len}"))],
            body[a..=b].to_vec(),
        )
            .into_response();
    }
    let mut resp = if method == Method::HEAD {
        ([("content-length", len.to_string())]).into_response()
    } else {
        body.into_response()
    };
    resp.headers_mut().insert(
        "content-type",
        "application/vnd.oci.image.manifest.v1+json"
            .parse()
            .unwrap(),
    );
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_uses_anonymous_bearer_tokens() {
    with_timeout(Duration::from_secs(120), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blob = random_blob(70, 5 << 20);
        let fake = Fake {
            port,
            digest: Digest::of(&blob),
            blob: Arc::new(blob),
            manifest: Arc::new(br#"{"schemaVersion":2}"#.to_vec()),
            token_calls: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/token", get(token))
            .route("/v2/{*rest}", get(v2).head(v2))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let peer = Peer::start(
            "peer",
            PeerOpts::embedded()
                .arg("--insecure-registry")
                .arg(format!("127.0.0.1:{port}")),
        )
        .await;
        let ns = format!("ns=127.0.0.1:{port}");
        let c = http();
        let resp = c
            .get(format!(
                "{}/v2/auth/app/manifests/v1?{ns}",
                peer.mirror_url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.bytes().await.unwrap().to_vec(), *fake.manifest);

        let resp = c
            .get(format!(
                "{}/v2/auth/app/blobs/{}?{ns}",
                peer.mirror_url(),
                fake.digest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.bytes().await.unwrap().to_vec() == *fake.blob);
        assert_eq!(
            fake.token_calls.load(Ordering::SeqCst),
            1,
            "the token is cached per repository"
        );

        // A client's own refused token is passed through and refused, not replaced.
        let resp = c
            .get(format!(
                "{}/v2/auth/app/manifests/v1?{ns}",
                peer.mirror_url()
            ))
            .header("authorization", "Bearer wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        assert_eq!(fake.token_calls.load(Ordering::SeqCst), 1);
    })
    .await
}

const PRIVATE_TOKEN: &str = "private-token-7";

#[derive(Clone)]
struct Private {
    port: u16,
    blob: Arc<Vec<u8>>,
    digest: Digest,
    /// Token requests that carried the right Basic credentials.
    basic_token_calls: Arc<AtomicU64>,
}

async fn private_token(State(p): State<Private>, headers: HeaderMap) -> Response {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == basic_auth("bob", "pw-of-bob"));
    if !basic {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    p.basic_token_calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({"access_token": PRIVATE_TOKEN, "expires_in": 300}))
        .into_response()
}

async fn private_v2(
    State(p): State<Private>,
    method: Method,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {PRIVATE_TOKEN}"));
    if !authorized {
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fake\",scope=\"repository:private/app:pull\"",
            p.port
        );
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    if rest != format!("private/app/blobs/{}", p.digest) {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve_bytes(&method, &headers, p.blob.as_ref().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_get_tokens_and_private_blobs_stay_private() {
    with_timeout(Duration::from_secs(120), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blob = random_blob(71, 3 << 20);
        let p = Private {
            port,
            digest: Digest::of(&blob),
            blob: Arc::new(blob),
            basic_token_calls: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/token", get(private_token))
            .route("/v2/{*rest}", get(private_v2).head(private_v2))
            .with_state(p.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let host = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let config = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("[registries.\"{host}\"]\ninsecure = true\n{body}"),
            )
            .unwrap();
            path.display().to_string()
        };
        let with_basic = config(
            "basic.toml",
            "username = \"bob\"\npassword = \"pw-of-bob\"\n",
        );
        let with_token = config("token.toml", &format!("token = \"{PRIVATE_TOKEN}\"\n"));
        let without = config("none.toml", "");
        let url = |peer: &Peer| {
            format!(
                "{}/v2/private/app/blobs/{}?ns={host}",
                peer.mirror_url(),
                p.digest
            )
        };

        // The node's Basic credentials go to the token endpoint; the token is cached.
        let a = Peer::start(
            "peer-a",
            PeerOpts::embedded().arg("--config").arg(&with_basic),
        )
        .await;
        fetch(&url(&a), None, None)
            .await
            .assert_bytes(&p.blob, "node credentials");
        fetch(&url(&a), None, None)
            .await
            .assert_bytes(&p.blob, "node credentials, cached");
        assert_eq!(
            p.basic_token_calls.load(Ordering::SeqCst),
            1,
            "one token for the node"
        );
        // Held by peer A now; a client's own wrong token is refused, not replaced.
        fetch(&url(&a), Some("Bearer wrong"), None)
            .await
            .assert_refused("cached private blob with a wrong token");

        // A node without credentials: anonymous clients are refused, before and after caching.
        let b = Peer::start("peer-b", PeerOpts::embedded().arg("--config").arg(&without)).await;
        fetch(&url(&b), None, None)
            .await
            .assert_refused("no credentials anywhere");
        let calls = p.basic_token_calls.load(Ordering::SeqCst);
        fetch(&url(&b), Some(&basic_auth("bob", "pw-of-bob")), None)
            .await
            .assert_bytes(&p.blob, "the client's Basic credentials");
        assert_eq!(p.basic_token_calls.load(Ordering::SeqCst), calls + 1);
        fetch(&url(&b), None, None)
            .await
            .assert_refused("cached, client without credentials");
        fetch(&url(&b), Some(&basic_auth("bob", "wrong")), None)
            .await
            .assert_refused("cached, client with wrong credentials");

        // A configured token is sent as is.
        let c = Peer::start(
            "peer-c",
            PeerOpts::embedded().arg("--config").arg(&with_token),
        )
        .await;
        let calls = p.basic_token_calls.load(Ordering::SeqCst);
        fetch(&url(&c), None, None)
            .await
            .assert_bytes(&p.blob, "configured token");
        assert_eq!(
            p.basic_token_calls.load(Ordering::SeqCst),
            calls,
            "no token request"
        );
        for peer in [&a, &b, &c] {
            assert!(
                !peer.log_tail().contains("pw-of-bob"),
                "password in the log"
            );
            assert!(!peer.log_tail().contains(PRIVATE_TOKEN), "token in the log");
        }
    })
    .await
}
