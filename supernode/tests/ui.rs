//! The status page (`GET /ui`) and its JSON (`GET /api/v1/status`) through the router.

mod support;

use axum::http::{header, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use shoal_supernode::StatusSummary;
use support::*;

const TASK: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

async fn status(app: &Router) -> StatusSummary {
    let (code, headers, bytes) = get(app, "/api/v1/status").await;
    assert_eq!(code, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    serde_json::from_slice(&bytes).unwrap()
}

/// Every `src=` / `href=` value in the page (quoted or not).
fn links(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    for attr in ["src=", "href="] {
        for (i, _) in lower.match_indices(attr) {
            let rest = lower[i + attr.len()..].trim_start_matches(['"', '\'']);
            let end = rest.find(['"', '\'', ' ', '>']).unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
        }
    }
    out
}

#[tokio::test]
async fn page_is_self_contained_html() {
    let app = app();
    let (code, headers, bytes) = get(&app, "/ui").await;
    assert_eq!(code, StatusCode::OK);
    let ctype = headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = String::from_utf8(bytes).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h1>Shoal supernode</h1>"));
    let noscript = html.split("<noscript>").nth(1).expect("a <noscript> block");
    assert!(
        noscript.contains("needs JavaScript"),
        "a message without JavaScript"
    );
    assert!(html.contains("/api/v1/status"), "polls the status JSON");
    for link in links(&html) {
        assert!(
            !link.starts_with("http:") && !link.starts_with("https:") && !link.starts_with("//"),
            "external asset {link:?}"
        );
    }
    assert!(
        !html.contains("@import") && !html.contains("url("),
        "no CSS imports"
    );
    // Data is inserted as text, never parsed as HTML.
    assert!(
        !html.contains("innerHTML")
            && !html.contains("outerHTML")
            && !html.contains("insertAdjacentHTML")
    );
    assert!(!html.contains("document.write"));
}

#[tokio::test]
async fn status_shows_peers_tasks_and_bytes_by_source() {
    let app = app();
    let empty = status(&app).await;
    assert!(empty.peers.is_empty() && empty.tasks.is_empty());
    assert_eq!((empty.bytes.origin, empty.bytes.peers), (0, 0));
    assert_eq!(empty.version, env!("CARGO_PKG_VERSION"));

    for (id, port, zone) in [("a", 7001, "z1"), ("b", 7002, "z2")] {
        let announce = json!({"peer_id": id, "addr": format!("127.0.0.1:{port}"),
                              "labels": {"zone": zone}});
        post(&app, "/api/v1/peers", announce).await;
        // 3 pieces: 2 full ones and a short last one of 1000 bytes.
        let register = json!({"peer_id": id, "url": "https://r.example/v2/x/blobs/y",
                              "layout": {"length": 2 * 4096 + 1000, "piece_size": 4096}});
        post(&app, &format!("/api/v1/tasks/{TASK}/peers"), register).await;
    }
    let sched = |id: &str| json!({"peer_id": id, "capacity": 8, "wait_ms": 0});
    let done = |pieces: &[u64], from: Option<&str>| -> Vec<Value> {
        pieces
            .iter()
            .map(|&p| json!({"piece": p, "sha256": digest(p), "from": from, "millis": 3}))
            .collect()
    };
    let uri = format!("/api/v1/tasks/{TASK}/reports");
    // a leases all three pieces from the origin.
    let reply = post(&app, &format!("/api/v1/tasks/{TASK}/schedule"), sched("a")).await;
    assert_eq!(reply["assignments"].as_array().unwrap().len(), 3, "{reply}");
    let first = json!({"peer_id": "a", "done": done(&[0], None)});
    assert_eq!(post(&app, &uri, first).await["accepted"], 1);
    // Piece 0 again in this report: a retry, accepted but not counted twice below.
    let report = json!({"peer_id": "a", "done": done(&[0, 1, 2], None)});
    assert_eq!(post(&app, &uri, report.clone()).await["accepted"], 3);
    // A retried report is accepted again but not counted twice.
    assert_eq!(post(&app, &uri, report).await["accepted"], 3);
    let reply = post(&app, &format!("/api/v1/tasks/{TASK}/schedule"), sched("b")).await;
    assert!(
        !reply["assignments"].as_array().unwrap().is_empty(),
        "{reply}"
    );
    let report = json!({"peer_id": "b", "done": done(&[2], Some("a"))});
    assert_eq!(post(&app, &uri, report).await["accepted"], 1);
    // A rejected piece (wrong digest) is not counted.
    let bad = json!({"peer_id": "b", "done": [{"piece": 0, "sha256": digest(9), "from": "a"}]});
    assert_eq!(post(&app, &uri, bad).await["rejected"], json!([0]));

    let s = status(&app).await;
    let ids: Vec<&str> = s.peers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(s.peers[1].labels["zone"], "z2");
    assert_eq!(s.peers[0].addr.to_string(), "127.0.0.1:7001");
    assert_eq!(s.tasks.len(), 1);
    let t = &s.tasks[0];
    assert_eq!(t.status.task_id.to_string(), TASK);
    assert_eq!(t.status.piece_count, 3);
    assert_eq!(t.status.pieces_available, 3);
    assert_eq!(t.completed_peers, 1);
    let held: Vec<(&str, u32)> = t
        .status
        .peers
        .iter()
        .map(|p| (p.peer_id.as_str(), p.pieces))
        .collect();
    assert_eq!(held, [("a", 3), ("b", 1)]);
    assert!(t.status.origin_peers.contains(&"a".to_owned()));
    assert_eq!(s.bytes.origin, 2 * 4096 + 1000);
    assert_eq!(s.bytes.peers, 1000, "the short last piece, once");

    // The raw JSON has the task's fields flat, as in GET /api/v1/tasks.
    let (_, _, raw) = get(&app, "/api/v1/status").await;
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw["tasks"][0]["task_id"], TASK);
    assert_eq!(raw["tasks"][0]["completed_peers"], 1);
    assert_eq!(raw["tasks"][0]["layout"]["length"], 2 * 4096 + 1000);
}
