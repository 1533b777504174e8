//! The HTTP API through the router (`tower::ServiceExt::oneshot`), and serving over TCP.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use shoal_common::api::ErrorBody;
use shoal_supernode::{Supernode, SupernodeConfig, TaskStatus};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TASK: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let has_body = body.is_some();
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let (status, _, bytes) = send(app, method, uri, body, has_body).await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

async fn ok(app: &Router, method: Method, uri: &str, body: Value) -> Value {
    let (status, v) = call(app, method, uri, Some(body)).await;
    assert!(status.is_success(), "{uri}: {status} {v}");
    v
}

async fn announce(app: &Router, id: &str, port: u16) {
    ok(
        app,
        Method::POST,
        "/api/v1/peers",
        json!({"peer_id": id, "addr": format!("127.0.0.1:{port}")}),
    )
    .await;
}

async fn register(app: &Router, id: &str) -> Value {
    let body = json!({"peer_id": id, "url": "https://r.example/v2/x/blobs/y",
                      "layout": {"length": 4 * 4096, "piece_size": 4096}});
    ok(
        app,
        Method::POST,
        &format!("/api/v1/tasks/{TASK}/peers"),
        body,
    )
    .await
}

async fn schedule(app: &Router, id: &str, capacity: u32, wait_ms: u64) -> Value {
    let body = json!({"peer_id": id, "capacity": capacity, "wait_ms": wait_ms});
    ok(
        app,
        Method::POST,
        &format!("/api/v1/tasks/{TASK}/schedule"),
        body,
    )
    .await
}

async fn report_done(app: &Router, id: &str, pieces: &[u64], from: Option<&str>) -> Value {
    let done: Vec<Value> = pieces
        .iter()
        .map(|&p| json!({"piece": p, "sha256": digest(p), "from": from, "millis": 5}))
        .collect();
    ok(
        app,
        Method::POST,
        &format!("/api/v1/tasks/{TASK}/reports"),
        json!({"peer_id": id, "done": done}),
    )
    .await
}

fn pieces(reply: &Value) -> Vec<u64> {
    reply["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["piece"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn three_peers_share_a_task() {
    let app = app();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        announce(&app, id, 7000 + i as u16).await;
        let info = register(&app, id).await;
        assert_eq!(info["layout"]["piece_size"], 4096);
    }
    let info = ok(
        &app,
        Method::GET,
        &format!("/api/v1/tasks/{TASK}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (info["peers"].as_u64(), info["pieces_available"].as_u64()),
        (Some(3), Some(0))
    );

    // a and b split the origin fetches, each leasing what it has room for.
    let a = schedule(&app, "a", 2, 0).await;
    assert_eq!(pieces(&a), vec![0, 1]);
    assert_eq!(a["assignments"][0]["origin"], true);
    assert_eq!(pieces(&schedule(&app, "b", 2, 0).await), vec![2, 3]);
    assert_eq!(report_done(&app, "a", &[0, 1], None).await["accepted"], 2);
    assert_eq!(report_done(&app, "b", &[2, 3], None).await["accepted"], 2);

    // c gets everything from a and b, with digests.
    let c = schedule(&app, "c", 4, 0).await;
    let mut got = pieces(&c);
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3]);
    for a in c["assignments"].as_array().unwrap() {
        let p = a["piece"].as_u64().unwrap();
        assert_eq!(a["sha256"], digest(p));
        let parent = a["parents"][0]["peer_id"].as_str().unwrap();
        assert_eq!(parent, if p < 2 { "a" } else { "b" });
        report_done(&app, "c", &[p], Some(parent)).await;
    }
    assert_eq!(schedule(&app, "c", 4, 0).await["done"], true);
    assert_eq!(pieces(&schedule(&app, "a", 4, 0).await).len(), 2);

    let tasks: Vec<TaskStatus> =
        serde_json::from_value(ok(&app, Method::GET, "/api/v1/tasks", Value::Null).await).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].pieces_available, 4);
    assert_eq!(tasks[0].origin_peers, vec!["a", "b"]);
    assert!(tasks[0]
        .peers
        .iter()
        .any(|p| p.peer_id == "c" && p.completed));
    let peers = ok(&app, Method::GET, "/api/v1/peers", Value::Null).await;
    assert_eq!(peers.as_array().unwrap().len(), 3);

    ok(
        &app,
        Method::POST,
        "/api/v1/peers/a/heartbeat",
        json!({"active_uploads": 1}),
    )
    .await;
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/tasks/{TASK}/peers/c"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&app, Method::DELETE, "/api/v1/peers/a", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = call(
        &app,
        Method::POST,
        "/api/v1/peers/a/heartbeat",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("peer_unknown"))
    );

    let (status, _, text) = get(&app, "/metrics").await;
    let text = String::from_utf8(text).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("shoal_supernode_assignments_total{source=\"origin\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("shoal_supernode_pieces_reported_total{result=\"accepted\"} 8"),
        "{text}"
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&app, path).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn long_poll_returns_when_a_piece_starts_arriving() {
    // Only a may fetch from the origin, one piece at a time.
    let app = app_with(SupernodeConfig {
        max_origin_peers_per_task: 1,
        max_origin_pieces_in_flight: 1,
        ..Default::default()
    });
    for (i, id) in ["a", "c"].iter().enumerate() {
        announce(&app, id, 7000 + i as u16).await;
        register(&app, id).await;
    }
    // a leases the first piece from the origin and c gets it relayed by a; then c has to
    // wait for a's next lease.
    assert_eq!(pieces(&schedule(&app, "a", 4, 0).await), vec![0]);
    assert_eq!(pieces(&schedule(&app, "c", 1, 0).await), vec![0]);
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (schedule(&app, "c", 1, 10_000).await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    report_done(&app, "a", &[0], None).await;
    assert_eq!(pieces(&schedule(&app, "a", 4, 0).await), vec![1]);
    let (reply, took) = waiting.await.unwrap();
    assert_eq!(pieces(&reply), vec![1]);
    assert!(took < Duration::from_secs(1), "{took:?}");

    // With nothing to wait for, the poll ends at its deadline with no assignments.
    let start = Instant::now();
    assert_eq!(
        pieces(&schedule(&app, "c", 1, 200).await),
        Vec::<u64>::new()
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
}

async fn expect_error(
    app: &Router,
    method: Method,
    uri: &str,
    body: Body,
    json: bool,
    code: &str,
) -> StatusCode {
    let (status, _, bytes) = send(app, method, uri, body, json).await;
    assert!(status.is_client_error(), "{uri}: {status}");
    let err: ErrorBody = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{uri}: {status} {e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(err.code, code, "{uri}: {}", err.message);
    assert!(!err.message.is_empty());
    status
}

#[tokio::test]
async fn bad_input_gets_4xx_error_bodies() {
    let app = app();
    announce(&app, "a", 7000).await;
    register(&app, "a").await;
    let j = |v: Value| Body::from(v.to_string());
    let reports = format!("/api/v1/tasks/{TASK}/reports");
    let peers = format!("/api/v1/tasks/{TASK}/peers");
    let other = "url:00000000000000000000000000000000000000000000000000000000000000ff";
    let cases: Vec<(Method, String, Body, bool, &str)> = vec![
        (
            Method::GET,
            "/api/v1/tasks/not-a-task".into(),
            Body::empty(),
            false,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/tasks/sha256:abc/schedule".into(),
            j(json!({"peer_id": "a", "capacity": 1})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/peers".into(),
            j(json!({"peer_id": "bad id", "addr": "127.0.0.1:1"})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/peers/bad%20id/heartbeat".into(),
            j(json!({})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/peers".into(),
            Body::from("{garbage"),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/peers".into(),
            j(json!({"peer_id": 5})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/peers".into(),
            j(json!({"peer_id": "a", "addr": "127.0.0.1:1"})),
            false,
            "bad_request",
        ),
        (
            Method::POST,
            reports.clone(),
            j(json!({"peer_id": "a", "done": [{"piece": 4, "sha256": digest(4)}]})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            reports.clone(),
            j(json!({"peer_id": "a", "failed": [{"piece": 99, "reason": "corrupt"}]})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            reports.clone(),
            j(json!({"peer_id": "a", "done": [{"piece": 0, "sha256": "md5:x"}]})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            reports.clone(),
            j(json!({"peer_id": "ghost", "done": []})),
            true,
            "peer_unknown",
        ),
        (
            Method::POST,
            "/api/v1/peers/ghost/heartbeat".into(),
            j(json!({})),
            true,
            "peer_unknown",
        ),
        (
            Method::DELETE,
            "/api/v1/peers/ghost".into(),
            Body::empty(),
            false,
            "peer_unknown",
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{TASK}/schedule"),
            j(json!({"peer_id": "ghost", "capacity": 1})),
            true,
            "peer_unknown",
        ),
        (
            Method::GET,
            format!("/api/v1/tasks/{other}"),
            Body::empty(),
            false,
            "task_unknown",
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{other}/peers"),
            j(json!({"peer_id": "a"})),
            true,
            "task_unknown",
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{other}/schedule"),
            j(json!({"peer_id": "a", "capacity": 1})),
            true,
            "task_unknown",
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{other}/peers"),
            j(json!({"peer_id": "a", "layout": {"length": 100, "piece_size": 5000}})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            peers.clone(),
            j(json!({"peer_id": "a", "have": {"len": 3, "bits": "00"}})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            peers.clone(),
            j(json!({"peer_id": "a", "have": {"len": 4, "bits": "zz"}})),
            true,
            "bad_request",
        ),
        (
            Method::POST,
            peers.clone(),
            Body::from(vec![b' '; 5 << 20]),
            true,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v2/nothing".into(),
            Body::empty(),
            false,
            "bad_request",
        ),
    ];
    for (method, uri, body, json, code) in cases {
        expect_error(&app, method, &uri, body, json, code).await;
    }
    // Nothing above changed the task.
    let info = ok(
        &app,
        Method::GET,
        &format!("/api/v1/tasks/{TASK}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (info["peers"].as_u64(), info["pieces_available"].as_u64()),
        (Some(1), Some(0))
    );
}

/// A minimal HTTP/1.1 exchange, to test the real server without an HTTP client crate.
async fn raw_request(addr: std::net::SocketAddr, request: String) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serve_stops_on_cancel_even_with_a_long_poll_open() {
    let sn = Supernode::new(SupernodeConfig::default(), &prometheus::Registry::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(Arc::clone(&sn).serve(listener, cancel.clone()));

    let health = raw_request(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let app = sn.router();
    announce(&app, "a", 7000).await;
    announce(&app, "c", 7001).await;
    register(&app, "a").await;
    register(&app, "c").await;
    schedule(&app, "a", 4, 0).await;
    schedule(&app, "c", 4, 0).await; // c is an origin peer with nothing left to lease
    let body = json!({"peer_id": "c", "capacity": 1, "wait_ms": 30_000}).to_string();
    let poll = tokio::spawn(raw_request(
        addr,
        format!(
            "POST /api/v1/tasks/{TASK}/schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let reply = poll.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"assignments\":[]"), "{reply}");
    // Not ready any more.
    assert_eq!(
        send(&app, Method::GET, "/readyz", Body::empty(), false)
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
