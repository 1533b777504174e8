//! The one error type at the peer's HTTP edges: maps domain errors to a status and a stable
//! code, logs once, and never leaks internals (paths, OS errors) to the client.

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
            Error::Parse(_) | Error::BadRequest(_) | Error::Config(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
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
            Error::Origin { .. } | Error::Parent { .. } | Error::Supernode { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_failed")
            }
            Error::DownloadFailed { .. } | Error::PieceDigest { .. } | Error::BlobDigest { .. } => {
                (StatusCode::BAD_GATEWAY, "download_failed")
            }
            Error::CacheFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "cache_full"),
            Error::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Error::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
