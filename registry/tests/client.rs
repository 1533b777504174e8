//! The client against a tiny in-process registry: retries (503s, 429 with Retry-After, a
//! dead server), what is never retried (404), the bearer-token dance and its cache, token
//! renewal, and range reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use reqwest::Method;
use shoal_common::Digest;
use shoal_registry::{Auth, Client, ClientOptions, Repository, Request, RetryPolicy};

#[derive(Default)]
struct Counts {
    flaky: AtomicUsize,
    busy: AtomicUsize,
    missing: AtomicUsize,
    down: AtomicUsize,
    private: AtomicUsize,
    token: AtomicUsize,
    /// The generation of the only token `rotating` accepts; bumped by `/revoke`.
    generation: AtomicUsize,
    rotating: AtomicUsize,
}

struct Server {
    base: String,
    host: String,
    counts: Arc<Counts>,
}

const BLOB: &[u8] = b"0123456789abcdefghij";

async fn start() -> Server {
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{host}/token");
    let rotating_realm = realm.clone();
    let app = Router::new()
        .route(
            "/v2/flaky/manifests/t",
            get(|State(c): State<Arc<Counts>>| async move {
                match c.flaky.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    _ => "{}".into_response(),
                }
            }),
        )
        .route(
            "/v2/busy/manifests/t",
            get(|State(c): State<Arc<Counts>>| async move {
                match c.busy.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
                    _ => "{}".into_response(),
                }
            }),
        )
        .route(
            "/v2/missing/manifests/t",
            get(|State(c): State<Arc<Counts>>| async move {
                c.missing.fetch_add(1, Ordering::SeqCst);
                (StatusCode::NOT_FOUND, "no such manifest")
            }),
        )
        .route(
            "/v2/down/manifests/t",
            get(|State(c): State<Arc<Counts>>| async move {
                c.down.fetch_add(1, Ordering::SeqCst);
                StatusCode::BAD_GATEWAY
            }),
        )
        .route(
            "/v2/private/manifests/t",
            get(move |State(c): State<Arc<Counts>>, h: HeaderMap| {
                let realm = realm.clone();
                async move {
                    c.private.fetch_add(1, Ordering::SeqCst);
                    let auth = h.get("authorization").and_then(|v| v.to_str().ok());
                    // "stale" stands for a token the registry no longer accepts.
                    if auth.is_some_and(|a| a.starts_with("Bearer fresh")) {
                        return "{}".into_response();
                    }
                    let challenge = format!(
                        r#"Bearer realm="{realm}",service="test",scope="repository:private:pull""#
                    );
                    (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response()
                }
            }),
        )
        .route(
            "/token",
            get(
                |State(c): State<Arc<Counts>>,
                 Query(q): Query<Vec<(String, String)>>,
                 h: HeaderMap| async move {
                    c.token.fetch_add(1, Ordering::SeqCst);
                    assert!(q.contains(&("scope".into(), "repository:private:pull".into())));
                    let basic = h.get("authorization").is_some();
                    let token = if basic { "fresh-user" } else { "fresh-anon" };
                    format!(r#"{{"token":"{token}","expires_in":300}}"#)
                },
            ),
        )
        .route(
            "/v2/rotating/manifests/t",
            get(move |State(c): State<Arc<Counts>>, h: HeaderMap| {
                let realm = format!("{}2", rotating_realm);
                async move {
                    c.rotating.fetch_add(1, Ordering::SeqCst);
                    let want = format!("Bearer gen-{}", c.generation.load(Ordering::SeqCst));
                    if h.get("authorization").is_some_and(|a| a == want.as_str()) {
                        return "{}".into_response();
                    }
                    let challenge = format!(r#"Bearer realm="{realm}",scope="x""#);
                    (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response()
                }
            }),
        )
        .route(
            "/token2",
            get(|State(c): State<Arc<Counts>>| async move {
                c.token.fetch_add(1, Ordering::SeqCst);
                let g = c.generation.load(Ordering::SeqCst);
                format!(r#"{{"token":"gen-{g}"}}"#)
            }),
        )
        .route(
            "/revoke",
            get(|State(c): State<Arc<Counts>>| async move {
                c.generation.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .route(
            "/v2/r/blobs/{digest}",
            get(|h: HeaderMap| async move { range(&h, false) }),
        )
        .route(
            "/v2/whole/blobs/{digest}",
            get(|h: HeaderMap| async move { range(&h, true) }),
        )
        .with_state(counts.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base: format!("http://{host}"),
        host,
        counts,
    }
}

/// Serves `BLOB` honouring a `bytes=A-B` range, or whole when `ignore_range`.
fn range(h: &HeaderMap, ignore_range: bool) -> Response {
    let r = h.get("range").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some((a, b)) = r
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .filter(|_| !ignore_range)
    else {
        return BLOB.to_vec().into_response();
    };
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    let b = b.min(BLOB.len() - 1);
    (StatusCode::PARTIAL_CONTENT, BLOB[a..=b].to_vec()).into_response()
}

fn client(server: &Server) -> Arc<Client> {
    Arc::new(
        Client::new(ClientOptions {
            insecure: vec![server.host.clone()],
            retry: RetryPolicy {
                attempts: 4,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                budget: Duration::from_secs(5),
            },
            ..Default::default()
        })
        .unwrap(),
    )
}

async fn get_status(c: &Client, s: &Server, repo: &str, auth: &Auth) -> u16 {
    let url = format!("{}/v2/{repo}/manifests/t", s.base);
    let req = Request::new(Method::GET, &url, &s.host, repo, auth);
    c.send(&req).await.unwrap().response.status().as_u16()
}

#[tokio::test]
async fn retries_5xx_then_succeeds() {
    let s = start().await;
    let c = client(&s);
    assert_eq!(get_status(&c, &s, "flaky", &Auth::Anonymous).await, 200);
    assert_eq!(s.counts.flaky.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn honours_retry_after() {
    let s = start().await;
    let c = client(&s);
    let t = Instant::now();
    assert_eq!(get_status(&c, &s, "busy", &Auth::Anonymous).await, 200);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(s.counts.busy.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn never_retries_4xx() {
    let s = start().await;
    let c = client(&s);
    assert_eq!(get_status(&c, &s, "missing", &Auth::Anonymous).await, 404);
    assert_eq!(s.counts.missing.load(Ordering::SeqCst), 1);
    let repo = Repository::new(c.clone(), &s.host, "missing", Auth::Anonymous);
    let e = repo.manifest("t", "*/*").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(!e.retryable());
    assert!(e.to_string().contains("no such manifest"), "{e}");
}

#[tokio::test]
async fn gives_up_after_the_attempts() {
    let s = start().await;
    let c = client(&s);
    assert_eq!(get_status(&c, &s, "down", &Auth::Anonymous).await, 502);
    assert_eq!(s.counts.down.load(Ordering::SeqCst), 4);
    // Nobody listening: a transport error, retryable, after the same attempts.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v2/x/manifests/t", dead.local_addr().unwrap());
    drop(dead);
    let auth = Auth::Anonymous;
    let e = c
        .send(&Request::new(Method::GET, &url, "h", "x", &auth))
        .await
        .err()
        .unwrap();
    assert!(e.retryable(), "{e}");
}

#[tokio::test]
async fn answers_bearer_challenges_and_caches_tokens() {
    let s = start().await;
    let c = client(&s);
    assert_eq!(get_status(&c, &s, "private", &Auth::Anonymous).await, 200);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.private.load(Ordering::SeqCst), 2);
    // The cached token goes first: no challenge, no token request.
    assert_eq!(get_status(&c, &s, "private", &Auth::Anonymous).await, 200);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.private.load(Ordering::SeqCst), 3);
    let cached = c.auth_for(&s.host, "private", &Auth::Anonymous).unwrap();
    assert_eq!(cached.to_str().unwrap(), "Bearer fresh-anon");
    assert!(cached.is_sensitive());

    // Basic credentials are exchanged for a token of their own.
    let user = Auth::basic("u", "p").unwrap();
    assert_eq!(get_status(&c, &s, "private", &user).await, 200);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 2);
    let token = c.auth_for(&s.host, "private", &user).unwrap();
    assert_eq!(token.to_str().unwrap(), "Bearer fresh-user");

    // A forwarded client's token is never cached.
    let client_auth = Auth::Forwarded(shoal_common::registry::basic("c", "d").parse().unwrap());
    for _ in 0..2 {
        assert_eq!(get_status(&c, &s, "private", &client_auth).await, 200);
    }
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 4);

    // Our own bearer token refused: that is the answer, nothing is fetched.
    let stale = Auth::Own("Bearer stale".parse().unwrap());
    assert_eq!(get_status(&c, &s, "private", &stale).await, 401);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 4);
    // A mirror's 401 is the caller's to see.
    assert_eq!(get_status(&c, &s, "private", &Auth::None).await, 401);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn reads_ranges() {
    let s = start().await;
    let c = client(&s);
    let d = Digest::of(BLOB);
    let repo = Repository::new(c.clone(), &s.host, "r", Auth::Anonymous);
    assert_eq!(&repo.blob_range(&d, 3, 5).await.unwrap()[..], &BLOB[3..8]);
    assert!(repo.blob_range(&d, 0, 0).await.unwrap().is_empty());
    let whole = Repository::new(c.clone(), &s.host, "whole", Auth::Anonymous);
    assert_eq!(
        &whole.blob_range(&d, 10, 4).await.unwrap()[..],
        &BLOB[10..14]
    );
    let e = repo.blob_range(&d, 15, 10).await.unwrap_err();
    assert!(e.retryable() && e.to_string().contains("5 of 10"), "{e}");
    // Through a mirror: same operations under the mirror's base, with ?ns=.
    let mirror = Repository::through_mirror(c, &s.base, "reg.io", "r");
    assert!(mirror.url("blobs/x").ends_with("/v2/r/blobs/x?ns=reg.io"));
    assert_eq!(&mirror.blob_range(&d, 0, 2).await.unwrap()[..], b"01");
}

#[tokio::test]
async fn renews_a_revoked_token_once() {
    let s = start().await;
    let c = client(&s);
    assert_eq!(get_status(&c, &s, "rotating", &Auth::Anonymous).await, 200);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 1);
    // The registry stops accepting the cached token (it expired early): one 401, one new
    // token, and the request succeeds.
    reqwest::get(format!("{}/revoke", s.base)).await.unwrap();
    assert_eq!(get_status(&c, &s, "rotating", &Auth::Anonymous).await, 200);
    assert_eq!(s.counts.token.load(Ordering::SeqCst), 2);
    assert_eq!(s.counts.rotating.load(Ordering::SeqCst), 4);
    let cached = c.auth_for(&s.host, "rotating", &Auth::Anonymous).unwrap();
    assert_eq!(cached.to_str().unwrap(), "Bearer gen-1");
}
