//! A flash crowd on one hot task, through the router: many peers fetch a 128-piece blob at
//! once. Checks that the origin serves each piece once and that schedule compute time (the
//! `schedule_duration_seconds` histogram, lock waits included) stays low.
//!
//! Ignored by default (it takes a while in debug builds); run it with
//! `cargo test --release -p shoal-supernode --test load -- --ignored --nocapture`.
//! `SHOAL_LOAD_PEERS` sets the number of peers (default 5000).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use prometheus::Registry;
use serde_json::{json, Value};
use shoal_supernode::{Supernode, SupernodeConfig};
use support::*;

const TASK: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";
const PIECES: u64 = 128;

async fn peer(app: Router, i: usize) -> Vec<Duration> {
    let id = format!("peer-{i}");
    post(
        &app,
        "/api/v1/peers",
        json!({"peer_id": id, "addr": format!("10.0.{}.{}:65002", i / 250, i % 250)}),
    )
    .await;
    let layout = json!({"length": PIECES * 4096, "piece_size": 4096});
    post(
        &app,
        &format!("/api/v1/tasks/{TASK}/peers"),
        json!({"peer_id": id, "layout": layout}),
    )
    .await;
    let mut latencies = Vec::new();
    loop {
        let start = Instant::now();
        let reply = post(
            &app,
            &format!("/api/v1/tasks/{TASK}/schedule"),
            json!({"peer_id": id, "capacity": 4, "wait_ms": 5000}),
        )
        .await;
        let took = start.elapsed();
        if reply["done"] == true {
            return latencies;
        }
        let assignments = reply["assignments"].as_array().unwrap().clone();
        if !assignments.is_empty() {
            latencies.push(took); // replies that did not long-poll (or were woken)
        }
        let mut done = Vec::new();
        for a in assignments {
            let p = a["piece"].as_u64().unwrap();
            // "Transfer" the piece: 20 ms.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let from = a["parents"]
                .get(0)
                .map(|x| x["peer_id"].clone())
                .unwrap_or(Value::Null);
            done.push(json!({"piece": p, "sha256": digest(p), "from": from, "millis": 20}));
        }
        if !done.is_empty() {
            let r = post(
                &app,
                &format!("/api/v1/tasks/{TASK}/reports"),
                json!({"peer_id": id, "done": done}),
            )
            .await;
            assert!(r["rejected"].as_array().unwrap().is_empty(), "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn flash_crowd() {
    let peers: usize = std::env::var("SHOAL_LOAD_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let registry = Registry::new();
    let sn = Supernode::new(SupernodeConfig::default(), &registry).unwrap();
    let app = sn.router();
    let sweeper = tokio::spawn(Arc::clone(&sn).run_sweeper(Default::default()));
    let start = Instant::now();
    let handles: Vec<_> = (0..peers)
        .map(|i| tokio::spawn(peer(app.clone(), i)))
        .collect();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed();
    sweeper.abort();
    latencies.sort();
    let families = registry.gather();
    let get = |name: &str| families.iter().find(|f| f.name() == name).unwrap().clone();
    let hist = get("shoal_supernode_schedule_duration_seconds");
    let h = hist.get_metric()[0].get_histogram();
    let total = h.get_sample_count();
    println!("schedule compute total {:.2}s", h.get_sample_sum());
    let under = |le: f64| {
        h.get_bucket()
            .iter()
            .find(|b| b.upper_bound() >= le)
            .map(|b| b.cumulative_count())
            .unwrap_or(total)
    };
    let assignments = get("shoal_supernode_assignments_total");
    let origin: f64 = assignments
        .get_metric()
        .iter()
        .filter(|m| m.get_label().iter().any(|l| l.value() == "origin"))
        .map(|m| m.get_counter().get_value())
        .sum();
    let results = get("shoal_supernode_schedule_requests_total");
    for m in results.get_metric() {
        println!(
            "schedule replies {}: {}",
            m.get_label()[0].value(),
            m.get_counter().get_value()
        );
    }
    println!(
        "{peers} peers done in {elapsed:?}; {total} schedule passes, {:.2}% under 1 ms, {:.3}% under 50 ms; origin assignments {origin}; reply p50 {:?} p99 {:?}",
        100.0 * under(0.001) as f64 / total as f64,
        100.0 * under(0.05) as f64 / total as f64,
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    );
    assert_eq!(
        origin as u64, PIECES,
        "the origin must serve each piece once"
    );
    assert!(
        under(0.05) as f64 >= 0.99 * total as f64,
        "p99 schedule compute over 50 ms"
    );
}
