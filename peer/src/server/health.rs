//! `/metrics`, `/healthz`, `/readyz` on their own listener, so that probes and scrapes work
//! even when the data ports are saturated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::Registry;

#[derive(Clone)]
pub struct HealthState {
    pub registry: Registry,
    /// Set once the peer has announced itself and its servers are listening.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(st): State<HealthState>) -> impl IntoResponse {
    if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(st): State<HealthState>) -> Response {
    shoal_runtime::metrics::response(shoal_runtime::metrics::encode(&st.registry))
}
