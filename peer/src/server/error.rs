//! The peer's two error replies at its HTTP edges, one per protocol: [`ApiError`] (Shoal's
//! JSON `{code, message}`, the local and P2P APIs) and [`MirrorError`] (the OCI distribution
//! format, the registry mirror). Both map domain errors to a status and a stable code, log
//! once, and never leak internals (paths, OS errors) to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_common::api::ErrorBody;

use crate::error::Error;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<shoal_common::ParseError> for ApiError {
    fn from(e: shoal_common::ParseError) -> Self {
        ApiError(Error::Parse(e))
    }
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError(Error::BadRequest(msg.into()))
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            Error::Parse(_) | Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::TaskNotFound { .. } => (StatusCode::NOT_FOUND, "task_unknown"),
            Error::RangeNotHeld { .. } => (StatusCode::NOT_FOUND, "range_not_held"),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            Error::Origin {
                status: Some(s), ..
            } if (400..500).contains(s) && *s != 429 && *s != 408 => (
                StatusCode::from_u16(*s).unwrap_or(StatusCode::BAD_GATEWAY),
                "origin_refused",
            ),
            Error::Origin { .. }
            | Error::Parent { .. }
            | Error::Supernode { .. }
            | Error::LayoutConflict { .. } => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            Error::DownloadFailed { .. } | Error::PieceDigest { .. } | Error::BlobDigest { .. } => {
                (StatusCode::BAD_GATEWAY, "download_failed")
            }
            Error::CacheFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "cache_full"),
            Error::DiskFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            Error::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            // The peer's own setup or state, not the request: the client can do nothing.
            Error::Io { .. } | Error::Config(_) | Error::Runtime { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
            "internal error; see the peer's log".to_owned()
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %self.0, "request failed");
            } else {
                tracing::debug!(error = %self.0, "request rejected");
            }
            self.0.to_string()
        };
        (
            status,
            Json(ErrorBody {
                code: code.to_owned(),
                message,
            }),
        )
            .into_response()
    }
}

/// An error of the registry mirror, in the OCI distribution format
/// (`{"errors":[{"code":…,"message":…}]}`), with the upstream's `WWW-Authenticate` challenge
/// passed on for 401s so clients can authenticate.
#[derive(Debug, Clone)]
pub struct MirrorError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub challenge: Option<axum::http::HeaderValue>,
}

/// Status and OCI code for an upstream registry's refusal; `unknown` is the 404 code.
fn upstream_refusal(status: u16, unknown: &'static str) -> (StatusCode, &'static str) {
    match status {
        401 => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        403 => (StatusCode::FORBIDDEN, "DENIED"),
        404 => (StatusCode::NOT_FOUND, unknown),
        429 => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
    }
}

impl MirrorError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        MirrorError {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    /// Maps a domain error, `unknown` being the code for a 404 in this context.
    pub fn from_error(e: Error, unknown: &'static str) -> Self {
        let (status, code) = match &e {
            Error::Parse(_) | Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Error::Origin {
                status: Some(s), ..
            } => upstream_refusal(*s, unknown),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID")
            }
            // 507 rather than 503: this blob cannot be stored, but the peer is up and serves
            // what it holds, so clients and balancers must not take it for down (a 503 says
            // the service is); containerd then falls back to the registry for this blob.
            Error::CacheFull { .. } | Error::DiskFull { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE")
            }
            Error::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Io { .. } | Error::Config(_) | Error::Runtime { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
            _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "mirror request failed");
            "internal error; see the peer's log".to_owned()
        } else {
            tracing::warn!(error = %e, "mirror request failed");
            e.to_string()
        };
        MirrorError::new(status, code, message)
    }

    /// An upstream registry's non-success answer to a request for `what`.
    pub fn upstream(
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        unknown: &'static str,
        what: &str,
    ) -> Self {
        let (s, code) = upstream_refusal(status.as_u16(), unknown);
        let mut e = MirrorError::new(s, code, format!("{what}: upstream answered {status}"));
        if s == StatusCode::UNAUTHORIZED {
            e.challenge = headers.get(reqwest::header::WWW_AUTHENTICATE).cloned();
        }
        e
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message}]
        });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(c) = self.challenge {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer's own failures are 5xx on both edges; only the client's input is a 4xx.
    #[test]
    fn runtime_and_config_failures_are_not_the_clients_fault() {
        let cases: [fn() -> Error; 2] = [
            || Error::runtime("p2p listener", "gone"),
            || Error::Config("x".into()),
        ];
        for e in cases {
            assert_eq!(
                ApiError(e()).status_and_code().0,
                StatusCode::INTERNAL_SERVER_ERROR
            );
            assert_eq!(
                MirrorError::from_error(e(), "BLOB_UNKNOWN").status,
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        assert_eq!(
            ApiError::bad_request("no").status_and_code().0,
            StatusCode::BAD_REQUEST
        );
    }

    /// A full disk is a 507 on both edges, naming the cause but not the path.
    #[test]
    fn disk_full_is_507_without_the_path() {
        let e = || Error::DiskFull {
            task: shoal_common::TaskId::Content(shoal_common::Digest::of(b"x")),
            path: "/secret/data/tasks/x".into(),
            needed: 42,
        };
        assert_eq!(
            ApiError(e()).status_and_code(),
            (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
        );
        let m = MirrorError::from_error(e(), "BLOB_UNKNOWN");
        assert_eq!(m.status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(m.message.contains("disk is full"), "{}", m.message);
        assert!(!m.message.contains("/secret"), "{}", m.message);
        assert!(!e().is_retryable() && e().is_out_of_space());
    }
}
