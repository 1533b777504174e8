//! `/metrics`, `/healthz`, `/readyz` on their own listener, so that probes and scrapes work
//! even when the data ports are saturated.
//!
//! Readiness means "containerd can pull through this node's mirror": the mirror works without
//! a supernode (it fetches from the registry itself), so a node whose supernode is down must
//! stay Ready, or Kubernetes would report every node broken while pulls still work. Supernode
//! reachability is reported as a separate, non-required condition (`/readyz?verbose` and the
//! `shoal_peer_supernode_reachable` gauge).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{IntGauge, Registry};
use serde::{Deserialize, Serialize};

/// The conditions `/readyz` reports, shared by the daemon's tasks and the health router.
#[derive(Debug)]
pub struct Readiness {
    /// The mirror can serve: storage open, routers wired, listeners bound.
    mirror: AtomicBool,
    /// The first announce attempt finished (either way). Waiting for it keeps "Ready" meaning
    /// "announced" whenever a supernode answers, so swarm peers find each other from the
    /// start; an unreachable supernode fails the attempt within the connect timeout.
    first_announce: AtomicBool,
    supernode: AtomicBool,
    /// `shoal_peer_supernode_reachable`, kept equal to `supernode`.
    gauge: IntGauge,
}

impl Readiness {
    pub fn new(gauge: IntGauge) -> Arc<Self> {
        gauge.set(0);
        Arc::new(Readiness {
            mirror: AtomicBool::new(false),
            first_announce: AtomicBool::new(false),
            supernode: AtomicBool::new(false),
            gauge,
        })
    }

    pub fn set_mirror_ready(&self) {
        self.mirror.store(true, Ordering::Release);
    }

    /// Records the outcome of a request to the supernodes (announce or heartbeat).
    pub fn set_supernode_reachable(&self, reachable: bool) {
        self.supernode.store(reachable, Ordering::Release);
        self.gauge.set(i64::from(reachable));
        self.first_announce.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.mirror.load(Ordering::Acquire) && self.first_announce.load(Ordering::Acquire)
    }

    pub fn conditions(&self) -> ReadyReport {
        let mirror = self.mirror.load(Ordering::Acquire);
        let tried = self.first_announce.load(Ordering::Acquire);
        let supernode = self.supernode.load(Ordering::Acquire);
        ReadyReport {
            ready: self.is_ready(),
            conditions: vec![
                Condition {
                    name: "mirror",
                    ok: mirror,
                    required: true,
                    message: if mirror {
                        "storage open, listeners bound"
                    } else {
                        "starting"
                    },
                },
                Condition {
                    name: "supernode",
                    ok: supernode,
                    required: false,
                    message: match (tried, supernode) {
                        (false, _) => "first announce in progress",
                        (true, true) => "announced; pieces are shared with other peers",
                        (true, false) => {
                            "unreachable; the mirror serves from the registry without peers"
                        }
                    },
                },
            ],
        }
    }
}

/// `/readyz?verbose` body.
#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Serialize)]
pub struct Condition {
    pub name: &'static str,
    pub ok: bool,
    /// Whether `/readyz` fails while this condition is not ok.
    pub required: bool,
    pub message: &'static str,
}

#[derive(Clone)]
pub struct HealthState {
    pub registry: Registry,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

#[derive(Deserialize)]
struct ReadyQuery {
    verbose: Option<String>,
}

async fn readyz(State(st): State<HealthState>, Query(q): Query<ReadyQuery>) -> Response {
    let status = if st.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if q.verbose.is_some() {
        return (status, Json(st.readiness.conditions())).into_response();
    }
    let text = if status == StatusCode::OK {
        "ready"
    } else {
        "starting"
    };
    (status, text).into_response()
}

async fn metrics(State(st): State<HealthState>) -> Response {
    shoal_runtime::metrics::response(shoal_runtime::metrics::encode(&st.registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_mirror_and_a_first_announce_attempt_not_a_supernode() {
        let gauge = IntGauge::new("g", "g").expect("valid metric name");
        let r = Readiness::new(gauge.clone());
        assert!(!r.is_ready());
        r.set_mirror_ready();
        assert!(!r.is_ready(), "waits for the first announce attempt");
        r.set_supernode_reachable(false);
        assert!(
            r.is_ready(),
            "an unreachable supernode does not block readiness"
        );
        assert_eq!(gauge.get(), 0);
        let c = r.conditions();
        assert!(c.ready && !c.conditions[1].ok && !c.conditions[1].required);
        r.set_supernode_reachable(true);
        assert_eq!(gauge.get(), 1);
        assert!(r.conditions().conditions[1].ok);
    }
}
