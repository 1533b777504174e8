//! Readiness reflects the mirror, not the supernode: a peer whose only supernode is a closed
//! port becomes Ready, says in `/readyz?verbose` and `shoal_peer_supernode_reachable` that the
//! supernode is unreachable, and its mirror serves a blob from a real registry.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use shoal_peer::daemon::Peer;
use shoal_peer::PeerConfig;
use support::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

async fn send(router: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("the router answers every request");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_serving_with_the_supernode_down() {
    with_timeout(Duration::from_secs(120), async {
        let origin = Origin::start().await;
        let blob = random_blob(7, (1 << 20) + 3);
        let (digest, _) = origin.push("ready/app", &blob).await;
        let dir = tempfile::tempdir().unwrap();
        // free_port: bound and released, so nothing listens there.
        let closed = format!("http://127.0.0.1:{}", free_port());
        let config = PeerConfig {
            data_dir: dir.path().join("data"),
            insecure_registries: vec![origin.host()],
            supernodes: vec![closed.parse().unwrap()],
            ..PeerConfig::default()
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let peer = Peer::build(&config, "127.0.0.1:0".parse().unwrap(), &cancel, &tracker)
            .await
            .expect("peer wiring");
        peer.spawn_upkeep(&cancel, &tracker);

        wait_for("/readyz 200", Duration::from_secs(20), || async {
            (send(&peer.health, "/readyz").await.0 == StatusCode::OK).then_some(())
        })
        .await;
        let (status, body) = send(&peer.health, "/readyz?verbose").await;
        assert_eq!(status, StatusCode::OK);
        let report: serde_json::Value = serde_json::from_slice(&body).expect("verbose is JSON");
        assert_eq!(report["ready"], true, "{report}");
        let conditions = report["conditions"].as_array().expect("conditions");
        let cond = |name: &str| {
            conditions
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no {name} condition: {report}"))
        };
        assert_eq!(cond("mirror")["ok"], true, "{report}");
        assert_eq!(cond("supernode")["ok"], false, "{report}");
        assert_eq!(cond("supernode")["required"], false, "{report}");

        let (_, metrics) = send(&peer.health, "/metrics").await;
        let metrics = String::from_utf8(metrics).unwrap();
        // The line itself: metric_value reads an absent metric as 0.
        assert!(
            metrics
                .lines()
                .any(|l| l.trim() == "shoal_peer_supernode_reachable 0"),
            "{metrics}"
        );

        let (status, got) = send(
            &peer.local,
            &format!("/v2/ready/app/blobs/{digest}?ns={}", origin.host()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&got));
        assert!(got == blob, "the mirror served the registry's bytes");

        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    })
    .await;
}
