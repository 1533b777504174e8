//! Encoding a blob answer: headers (digest, type, length, `Content-Range`), the status a
//! range earns (200, 206, 416), and the body.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_common::Digest;

use super::super::{MirrorError, MirrorState};
use super::body::body;
use crate::server::range::{parse_range, RangeError};
use crate::storage::TaskFile;

pub(super) fn bad_range(message: impl Into<String>) -> MirrorError {
    MirrorError::new(StatusCode::BAD_REQUEST, "RANGE_INVALID", message)
}

fn blob_headers(digest: &Digest) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        out.insert("docker-content-digest", v);
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    out
}

/// A whole-blob `HEAD` answered from upstream's length alone (nothing cached, nothing opened).
pub(super) fn head_only(digest: &Digest, length: Option<u64>) -> Response {
    let mut out = blob_headers(digest);
    if let Some(length) = length {
        out.insert(header::CONTENT_LENGTH, length.into());
    }
    (StatusCode::OK, out).into_response()
}

/// The answer for `file` (complete, or with the pieces under `range` on their way): headers,
/// and for a `GET` the bytes as they arrive, a whole blob held back until verified.
pub(super) fn respond(
    st: &MirrorState,
    method: &Method,
    file: Arc<TaskFile>,
    digest: Digest,
    range: Option<&str>,
) -> Result<Response, MirrorError> {
    let length = file.layout().length;
    let mut out = blob_headers(&digest);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, r) = match range.map(|h| parse_range(h, length)) {
        None => (StatusCode::OK, 0..length),
        Some(Ok(r)) => {
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{length}", r.start, r.end - 1))
            {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, r)
        }
        Some(Err(RangeError::Malformed(m))) => return Err(bad_range(m)),
        Some(Err(RangeError::Unsatisfiable)) => {
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
    };
    out.insert(header::CONTENT_LENGTH, (r.end - r.start).into());
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    let body = body(st, file, digest, r);
    Ok((status, out, Body::from_stream(body)).into_response())
}
