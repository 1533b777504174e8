//! The registry mirror (OCI distribution pull API) on the mirror port, next to the local API:
//! `GET /v2/`, `GET|HEAD /v2/<name>/manifests/<reference>`, `GET|HEAD /v2/<name>/blobs/<digest>`.
//!
//! The upstream registry is `?ns=HOST` (what containerd sends) or the configured default.
//! Manifests are always proxied upstream (tags are never answered from a cache; by-digest
//! manifests are verified). Blob GETs go through the P2P engine with the digest as task id and
//! are streamed while pieces arrive; before a cached blob is served, the client's right to
//! read it is confirmed upstream ([`blob`]). Errors use the OCI error format.
//!
//! - [`blob`]: blob requests (whole or ranges), the access check, the verified stream.
//! - [`media_types`]: what the manifests served said each blob is (its piece layout).
//! - [`names`]: repository name and tag rules.

mod blob;
mod media_types;
mod names;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use shoal_common::Digest;

use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::PeerMetrics;
pub use crate::server::error::MirrorError;
use crate::upstream::{read_limited, valid_host, Upstream};
use blob::blob;
pub use blob::HeadFlights;
pub use media_types::MediaTypes;
pub use names::{valid_name, valid_tag};

/// Largest manifest accepted from upstream.
const MAX_MANIFEST: usize = 4 << 20;

#[derive(Clone)]
pub struct MirrorState {
    pub engine: Engine,
    pub metrics: PeerMetrics,
    pub upstream: Arc<Upstream>,
    pub default_upstream: Option<String>,
    pub media_types: Arc<MediaTypes>,
    /// Blob `HEAD`s upstream in progress, shared by the clients asking together.
    pub heads: Arc<HeadFlights>,
}

pub fn router(state: MirrorState) -> Router {
    Router::new()
        .route("/v2/", get(base).head(base).fallback(unsupported))
        .route("/v2", get(base).head(base).fallback(unsupported))
        .route(
            "/v2/{*rest}",
            get(dispatch).head(dispatch).fallback(unsupported),
        )
        .with_state(state)
}

async fn unsupported(State(st): State<MirrorState>) -> MirrorError {
    st.metrics
        .mirror_requests
        .with_label_values(&["other", "405"])
        .inc();
    MirrorError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "this mirror only serves pulls (GET and HEAD)",
    )
}

async fn base(State(st): State<MirrorState>) -> Response {
    st.metrics
        .mirror_requests
        .with_label_values(&["base", "200"])
        .inc();
    let mut resp = Json(serde_json::json!({})).into_response();
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

#[derive(Debug, Deserialize)]
struct MirrorQuery {
    ns: Option<String>,
}

enum Kind {
    Manifest,
    Blob,
}

async fn dispatch(
    State(st): State<MirrorState>,
    method: Method,
    Path(rest): Path<String>,
    Query(q): Query<MirrorQuery>,
    headers: HeaderMap,
) -> Response {
    let (kind, label) = if rest.contains("/blobs/") {
        (Kind::Blob, "blob")
    } else {
        (Kind::Manifest, "manifest")
    };
    let result = match kind {
        Kind::Manifest => manifest(&st, &method, &rest, q, &headers).await,
        Kind::Blob => blob(&st, &method, &rest, q, &headers).await,
    };
    let resp = result.unwrap_or_else(IntoResponse::into_response);
    st.metrics
        .mirror_requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    resp
}

fn split<'a>(rest: &'a str, sep: &str) -> Result<(&'a str, &'a str), MirrorError> {
    let (name, reference) = rest.rsplit_once(sep).ok_or_else(|| {
        MirrorError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "unknown endpoint")
    })?;
    if !valid_name(name) {
        return Err(MirrorError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid repository name",
        ));
    }
    Ok((name, reference))
}

fn parse_digest(s: &str) -> Result<Digest, MirrorError> {
    s.parse::<Digest>().map_err(|e| {
        MirrorError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("invalid digest: {e}"),
        )
    })
}

fn upstream_host(st: &MirrorState, q: MirrorQuery) -> Result<String, MirrorError> {
    let host =
        q.ns.or_else(|| st.default_upstream.clone())
            .ok_or_else(|| {
                MirrorError::new(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "no upstream registry: add ?ns=HOST or configure default_upstream",
                )
            })?;
    if !valid_host(&host) {
        return Err(MirrorError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "invalid ns registry host",
        ));
    }
    Ok(host)
}

fn client_auth(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(header::AUTHORIZATION).cloned()
}

/// An upstream non-success answer as an OCI error, counting upstream server errors.
fn upstream_refused(
    st: &MirrorState,
    resp: &reqwest::Response,
    unknown: &'static str,
    what: &str,
) -> MirrorError {
    if resp.status().is_server_error() {
        st.metrics
            .upstream_failures
            .with_label_values(&[what])
            .inc();
    }
    MirrorError::upstream(resp.status(), resp.headers(), unknown, what)
}

/// Upstream sent something that is not what was asked for.
fn upstream_garbage(st: &MirrorState, what: &str, message: String) -> MirrorError {
    st.metrics
        .upstream_failures
        .with_label_values(&[what])
        .inc();
    tracing::warn!(%message, "upstream answered garbage");
    MirrorError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message)
}

fn upstream_failed(st: &MirrorState, kind: &str, e: Error, unknown: &'static str) -> MirrorError {
    // The peer's own storage refusing is not the upstream's failure.
    if !matches!(e, Error::DiskFull { .. } | Error::CacheFull { .. }) {
        st.metrics
            .upstream_failures
            .with_label_values(&[kind])
            .inc();
    }
    MirrorError::from_error(e, unknown)
}

async fn manifest(
    st: &MirrorState,
    method: &Method,
    rest: &str,
    q: MirrorQuery,
    headers: &HeaderMap,
) -> Result<Response, MirrorError> {
    let (name, reference) = split(rest, "/manifests/")?;
    let digest = if reference.contains(':') {
        Some(parse_digest(reference)?)
    } else if valid_tag(reference) {
        None
    } else {
        return Err(MirrorError::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            "invalid tag",
        ));
    };
    let host = upstream_host(st, q)?;
    let url = format!(
        "{}/v2/{name}/manifests/{reference}",
        st.upstream.base_url(&host)
    );
    let mut up_headers = reqwest::header::HeaderMap::new();
    for v in headers.get_all(header::ACCEPT) {
        up_headers.append(reqwest::header::ACCEPT, v.clone());
    }
    st.metrics
        .upstream_requests
        .with_label_values(&["manifest"])
        .inc();
    let answer = st
        .upstream
        .send(
            method.clone(),
            &host,
            name,
            &url,
            up_headers,
            client_auth(headers),
        )
        .await
        .map_err(|e| upstream_failed(st, "manifest", e, "MANIFEST_UNKNOWN"))?;
    let resp = answer.response;
    if !resp.status().is_success() {
        return Err(upstream_refused(st, &resp, "MANIFEST_UNKNOWN", "manifest"));
    }
    let mut out = HeaderMap::new();
    for h in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::HeaderName::from_static("docker-content-digest"),
        header::ETAG,
    ] {
        if let Some(v) = resp.headers().get(h.as_str()) {
            out.insert(h, v.clone());
        }
    }
    if method == Method::HEAD {
        return Ok((StatusCode::OK, out).into_response());
    }
    let body = read_limited(resp, MAX_MANIFEST, &url)
        .await
        .map_err(|e| upstream_failed(st, "manifest", e, "MANIFEST_UNKNOWN"))?;
    let actual = Digest::of(&body);
    let claimed = out
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    for expected in [digest, claimed].into_iter().flatten() {
        if expected != actual {
            return Err(upstream_garbage(
                st,
                "manifest",
                format!("upstream manifest has digest {actual}, expected {expected}"),
            ));
        }
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(upstream_garbage(
            st,
            "manifest",
            format!("upstream manifest {name}:{reference} is not JSON"),
        ));
    }
    st.media_types.learn(&body);
    if !out.contains_key("docker-content-digest") {
        if let Ok(v) = HeaderValue::from_str(&actual.to_string()) {
            out.insert("docker-content-digest", v);
        }
    }
    out.insert(header::CONTENT_LENGTH, body.len().into());
    Ok((StatusCode::OK, out, body).into_response())
}
