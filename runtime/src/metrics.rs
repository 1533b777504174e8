//! One `/metrics` for every process: the Prometheus text encoding under the content type
//! scrapers expect (`text/plain; version=0.0.4; charset=utf-8`), so a scrape reads the same
//! from the peer, the supernode, a mount or the snapshotter.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::Error;

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's metrics in the text format.
pub fn encode(registry: &Registry) -> Result<String, Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    // The text encoder writes only UTF-8 (names, labels and values are strings or numbers).
    String::from_utf8(buf).map_err(|e| Error::Metrics(prometheus::Error::Msg(e.to_string())))
}

/// A scrape answer: the text with [`CONTENT_TYPE`], or a logged 500.
pub fn response(text: Result<String, Error>) -> Response {
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable").into_response()
        }
    }
}

/// `GET /metrics` over a registry held as router state.
pub async fn handler(State(registry): State<Registry>) -> Response {
    response(encode(&registry))
}

/// A router serving only `GET /metrics`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(handler))
        .with_state(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn scrape_has_the_standard_content_type() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("shoal_test_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let resp = router(registry)
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("shoal_test_total 7"), "{text}");
    }
}
