//! The registry mirror (OCI distribution pull API) on the mirror port, next to the local API:
//! `GET /v2/`, `GET|HEAD /v2/<name>/manifests/<reference>`, `GET|HEAD /v2/<name>/blobs/<digest>`.
//!
//! The upstream registry is `?ns=HOST` (what containerd sends) or the configured default.
//! Manifests are always proxied upstream (tags are never answered from a cache; by-digest
//! manifests are verified). Blob GETs go through the P2P engine with the digest as task id and
//! are streamed while pieces arrive. Errors use the OCI error format.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use shoal_common::{Digest, TaskId};

use crate::engine::{stream_range, DownloadRequest, Engine};
use crate::error::Error;
use crate::metrics::PeerMetrics;
use crate::server::range::{parse_range, RangeError};
use crate::upstream::{read_limited, valid_host, Upstream};

/// Largest manifest accepted from upstream.
const MAX_MANIFEST: usize = 4 << 20;
/// Longest repository name accepted.
const MAX_NAME: usize = 255;

#[derive(Clone)]
pub struct MirrorState {
    pub engine: Engine,
    pub metrics: PeerMetrics,
    pub upstream: Arc<Upstream>,
    pub default_upstream: Option<String>,
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

/// An error in the OCI distribution format.
#[derive(Debug)]
pub struct MirrorError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl MirrorError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        MirrorError {
            status,
            code,
            message: message.into(),
        }
    }

    /// Maps a domain error, `unknown` being the code for a 404 in this context.
    fn from_error(e: Error, unknown: &'static str) -> Self {
        let status_of = |s: u16| match s {
            401 => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            403 => (StatusCode::FORBIDDEN, "DENIED"),
            404 => (StatusCode::NOT_FOUND, unknown),
            429 => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        };
        let (status, code) = match &e {
            Error::Parse(_) | Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Error::Origin {
                status: Some(s), ..
            } => status_of(*s),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID")
            }
            Error::CacheFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE"),
            Error::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "mirror request failed");
            "internal error; see the peer's log".to_owned()
        } else {
            tracing::warn!(error = %e, "mirror request failed");
            e.to_string()
        };
        MirrorError {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message}]
        });
        (self.status, Json(body)).into_response()
    }
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

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    name.split('/').all(|comp| {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return false;
            }
        }
        true
    })
}

/// `[\w][\w.-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        Some(c) if word(c) => {}
        _ => return false,
    }
    tag.len() <= 128 && chars.all(|c| word(c) || c == '.' || c == '-')
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

fn upstream_failed(st: &MirrorState, kind: &str, e: Error, unknown: &'static str) -> MirrorError {
    st.metrics
        .upstream_failures
        .with_label_values(&[kind])
        .inc();
    MirrorError::from_error(e, unknown)
}

/// Maps a non-success upstream status to an OCI error, counting upstream server errors.
fn upstream_status(
    st: &MirrorState,
    status: reqwest::StatusCode,
    unknown: &'static str,
    what: &str,
) -> MirrorError {
    if status.is_server_error() {
        st.metrics
            .upstream_failures
            .with_label_values(&[what])
            .inc();
    }
    let (s, code) = match status.as_u16() {
        401 => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        403 => (StatusCode::FORBIDDEN, "DENIED"),
        404 => (StatusCode::NOT_FOUND, unknown),
        429 => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
    };
    MirrorError::new(s, code, format!("{what}: upstream answered {status}"))
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
    let status = resp.status();
    if !status.is_success() {
        return Err(upstream_status(st, status, "MANIFEST_UNKNOWN", "manifest"));
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
    if let Some(d) = digest {
        if d != actual {
            st.metrics
                .upstream_failures
                .with_label_values(&["manifest"])
                .inc();
            return Err(MirrorError::new(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                format!("upstream manifest has digest {actual}, expected {d}"),
            ));
        }
    }
    if !out.contains_key("docker-content-digest") {
        if let Ok(v) = HeaderValue::from_str(&actual.to_string()) {
            out.insert("docker-content-digest", v);
        }
    }
    out.insert(header::CONTENT_LENGTH, body.len().into());
    Ok((StatusCode::OK, out, body).into_response())
}

async fn blob(
    st: &MirrorState,
    method: &Method,
    rest: &str,
    q: MirrorQuery,
    headers: &HeaderMap,
) -> Result<Response, MirrorError> {
    let (name, reference) = split(rest, "/blobs/")?;
    let digest = parse_digest(reference)?;
    let host = upstream_host(st, q)?;
    let digest_header = HeaderValue::from_str(&digest.to_string()).ok();

    // Complete in the cache: answer without asking upstream.
    let cached = st
        .engine
        .storage()
        .get(&TaskId::Content(digest))
        .filter(|f| f.is_complete());
    let mut auth = None;
    if cached.is_none() {
        // Ask upstream first: resolves the token, and turns an unknown blob into a clean 404.
        let url = format!("{}/v2/{name}/blobs/{digest}", st.upstream.base_url(&host));
        st.metrics
            .upstream_requests
            .with_label_values(&["blob"])
            .inc();
        let answer = st
            .upstream
            .send(
                Method::HEAD,
                &host,
                name,
                &url,
                reqwest::header::HeaderMap::new(),
                client_auth(headers),
            )
            .await
            .map_err(|e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN"))?;
        let status = answer.response.status();
        if !status.is_success() {
            return Err(upstream_status(st, status, "BLOB_UNKNOWN", "blob"));
        }
        if method == Method::HEAD {
            let mut out = HeaderMap::new();
            if let Some(v) = answer.response.headers().get(header::CONTENT_LENGTH) {
                out.insert(header::CONTENT_LENGTH, v.clone());
            }
            if let Some(v) = digest_header {
                out.insert("docker-content-digest", v);
            }
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Ok((StatusCode::OK, out).into_response());
        }
        auth = answer.auth;
    }

    let file = match cached {
        Some(f) => {
            f.touch();
            f
        }
        None => {
            let url = format!("{}/v2/{name}/blobs/{digest}", st.upstream.base_url(&host));
            let url = url::Url::parse(&url).map_err(|e| {
                MirrorError::new(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    format!("bad upstream URL: {e}"),
                )
            })?;
            let mut hdrs = reqwest::header::HeaderMap::new();
            if let Some(a) = auth {
                hdrs.insert(reqwest::header::AUTHORIZATION, a);
            }
            st.engine
                .open(DownloadRequest {
                    url,
                    digest: Some(digest),
                    headers: hdrs,
                })
                .await
                .map_err(|e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN"))?
        }
    };
    let length = file.layout().length;
    let mut out = HeaderMap::new();
    if let Some(v) = digest_header {
        out.insert("docker-content-digest", v);
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                MirrorError::new(StatusCode::BAD_REQUEST, "RANGE_INVALID", "bad Range header")
            })?;
            match parse_range(s, length) {
                Ok(r) => Some(r),
                Err(RangeError::Malformed(m)) => {
                    return Err(MirrorError::new(
                        StatusCode::BAD_REQUEST,
                        "RANGE_INVALID",
                        m,
                    ))
                }
                Err(RangeError::Unsatisfiable) => {
                    let mut e = MirrorError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "RANGE_INVALID",
                        format!("range starts past the end ({length} bytes)"),
                    )
                    .into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                        e.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return Ok(e);
                }
            }
        }
    };
    let (status, r) = match range {
        Some(r) => {
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{length}", r.start, r.end - 1))
            {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..length),
    };
    out.insert(header::CONTENT_LENGTH, (r.end - r.start).into());
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    let metrics = st.metrics.clone();
    let body = stream_range(file, r).map(move |chunk| {
        if let Ok(c) = &chunk {
            metrics.local_bytes_served.inc_by(c.len() as u64);
        }
        chunk
    });
    Ok((status, out, Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/alpine", "a.b/c_d/e__f/g---h", "my-app/sub/x1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a//b", "/a", "a/", "a..b", "a___b", "-a", "a-", "a._b", "a b", "../etc",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(300)));
    }

    #[test]
    fn tags() {
        assert!(valid_tag("latest"));
        assert!(valid_tag("v1.2-rc_3"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
