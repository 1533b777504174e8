//! The mirror's handlers driven in process (`oneshot` on the router `shoal-peer run` serves),
//! against a real registry: statuses, headers and bytes of the answers containerd relies on,
//! without a daemon process or a listening socket for the mirror. Readiness reflects the
//! mirror, not the supernode: with its only supernode on a closed port the peer is Ready, says
//! so in `/readyz?verbose` and `shoal_peer_supernode_reachable`, and its mirror serves.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use shoal_peer::daemon::Peer;
use shoal_peer::PeerConfig;
use support::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

const BLOB: usize = (3 << 20) + 5;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn send(router: &axum::Router, method: Method, uri: &str, range: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(r) = range {
        req = req.header(header::RANGE, r);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .expect("the router answers every request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn assert_json_error(a: &Answer, status: StatusCode, what: &str) {
    assert_eq!(
        a.status,
        status,
        "{what}: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    let json: serde_json::Value = serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e})"));
    // The distribution spec's error shape, which containerd logs.
    let first = &json["errors"][0];
    assert!(
        first["code"].is_string() && first["message"].is_string(),
        "{what}: {json}"
    );
}

fn header(a: &Answer, name: header::HeaderName) -> &str {
    a.headers
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", a.headers))
}

/// A peer wired in process (`Peer::build`) for `origin`, with its background tasks running.
struct Wired {
    peer: Peer,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Wired {
    /// `supernodes` empty: an embedded supernode.
    async fn start(origin: &Origin, dir: &std::path::Path, supernodes: Vec<url::Url>) -> Wired {
        let config = PeerConfig {
            data_dir: dir.join("data"),
            insecure_registries: vec![origin.host()],
            supernodes,
            ..PeerConfig::default()
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let peer = Peer::build(&config, "127.0.0.1:0".parse().unwrap(), &cancel, &tracker)
            .await
            .expect("peer wiring");
        peer.spawn_upkeep(&cancel, &tracker);
        Wired {
            peer,
            cancel,
            tracker,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_handlers_in_process() {
    with_timeout(Duration::from_secs(120), async {
        let origin = Origin::start().await;
        let blob = random_blob(41, BLOB);
        let (digest, _) = origin.push("router/app", &blob).await;
        let dir = tempfile::tempdir().unwrap();
        let wired = Wired::start(&origin, dir.path(), Vec::new()).await;
        let r = &wired.peer.local;
        let ns = origin.host();
        let blob_uri = format!("/v2/router/app/blobs/{digest}?ns={ns}");

        let base = send(r, Method::GET, "/v2/", None).await;
        assert_eq!(base.status, StatusCode::OK);
        assert_eq!(
            header(
                &base,
                header::HeaderName::from_static("docker-distribution-api-version")
            ),
            "registry/2.0"
        );
        let push = send(r, Method::POST, "/v2/router/app/blobs/uploads/", None).await;
        assert_json_error(&push, StatusCode::METHOD_NOT_ALLOWED, "a push");
        let bad_digest = send(
            r,
            Method::GET,
            &format!("/v2/router/app/blobs/sha256:xyz?ns={ns}"),
            None,
        )
        .await;
        assert_eq!(bad_digest.status.as_u16() / 100, 4, "a malformed digest");
        assert_json_error(&bad_digest, bad_digest.status, "a malformed digest");
        let bad_host = send(
            r,
            Method::GET,
            &format!("/v2/router/app/blobs/{digest}?ns=bad%20host"),
            None,
        )
        .await;
        assert_eq!(bad_host.status.as_u16() / 100, 4, "a malformed ns");
        assert_json_error(&bad_host, bad_host.status, "a malformed ns");

        let head = send(r, Method::HEAD, &blob_uri, None).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD of a blob");
        assert_eq!(header(&head, header::CONTENT_LENGTH), BLOB.to_string());
        assert!(head.body.is_empty(), "HEAD has no body");

        let part = send(r, Method::GET, &blob_uri, Some("bytes=100-199")).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "a range");
        assert_eq!(
            header(&part, header::CONTENT_RANGE),
            format!("bytes 100-199/{BLOB}")
        );
        assert_eq!(part.body, blob[100..200], "the range's bytes");

        let whole = send(r, Method::GET, &blob_uri, None).await;
        assert_eq!(whole.status, StatusCode::OK, "the whole blob");
        assert_eq!(
            header(
                &whole,
                header::HeaderName::from_static("docker-content-digest")
            ),
            digest.to_string()
        );
        assert!(whole.body == blob, "the whole blob's bytes");

        // Now cached: served again without the blob crossing the origin's link a second time.
        let before = origin.egress();
        let again = send(r, Method::GET, &blob_uri, None).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.body == blob, "the cached blob's bytes");
        let extra = origin.egress() - before;
        assert!(
            extra < HEADERS_ONLY,
            "a cached blob cost the origin {extra} bytes"
        );

        let past_end = send(r, Method::GET, &blob_uri, Some("bytes=999999999-")).await;
        assert_eq!(
            past_end.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "a range past the end"
        );

        wired.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_serving_with_the_supernode_down() {
    with_timeout(Duration::from_secs(120), async {
        let origin = Origin::start().await;
        let blob = random_blob(7, (1 << 20) + 3);
        let (digest, _) = origin.push("ready/app", &blob).await;
        let dir = tempfile::tempdir().unwrap();
        // free_port: bound and released, so nothing listens there.
        let closed = format!("http://127.0.0.1:{}", free_port()).parse().unwrap();
        let wired = Wired::start(&origin, dir.path(), vec![closed]).await;
        let health = &wired.peer.health;

        wait_for("/readyz 200", Duration::from_secs(20), || async {
            (send(health, Method::GET, "/readyz", None).await.status == StatusCode::OK)
                .then_some(())
        })
        .await;
        let verbose = send(health, Method::GET, "/readyz?verbose", None).await;
        assert_eq!(verbose.status, StatusCode::OK);
        let report: serde_json::Value =
            serde_json::from_slice(&verbose.body).expect("verbose is JSON");
        assert_eq!(report["ready"], true, "{report}");
        let cond = |name: &str| {
            report["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no {name} condition: {report}"))
                .clone()
        };
        assert_eq!(cond("mirror")["ok"], true, "{report}");
        assert_eq!(cond("supernode")["ok"], false, "{report}");
        assert_eq!(cond("supernode")["required"], false, "{report}");
        let metrics = send(health, Method::GET, "/metrics", None).await;
        let metrics = String::from_utf8(metrics.body).unwrap();
        // The line itself: metric_value reads an absent metric as 0.
        assert!(
            metrics
                .lines()
                .any(|l| l.trim() == "shoal_peer_supernode_reachable 0"),
            "{metrics}"
        );

        let uri = format!("/v2/ready/app/blobs/{digest}?ns={}", origin.host());
        let got = send(&wired.peer.local, Method::GET, &uri, None).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert!(got.body == blob, "the mirror served the registry's bytes");
        wired.stop().await;
    })
    .await;
}
