//! The live status page: `GET /ui`, one self-contained HTML page (inline CSS and JS, nothing
//! loaded from elsewhere, which its Content-Security-Policy enforces) that polls
//! `GET /api/v1/status` (a [`StatusSummary`]) every two seconds and renders peers, tasks with
//! per-peer piece progress, and bytes by source.

mod summary;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

pub use self::summary::{StatusSummary, TaskSummary};
use crate::supernode::Supernode;

/// The page. Data is only ever inserted with `textContent`, never parsed as HTML.
const PAGE: &str = include_str!("page.html");

/// Inline script and styles only; data from this origin only; no frames, forms or plugins.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

pub(crate) async fn status(State(sn): State<Arc<Supernode>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(summary::summary(sn.state())),
    )
}
