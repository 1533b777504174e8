//! Upstream bearer-token auth: a small token-protected registry (inside the test) answers 401
//! with a `WWW-Authenticate: Bearer` challenge; the mirror fetches an anonymous token, caches
//! it, and both manifests and blobs (through the P2P engine) arrive intact.

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
