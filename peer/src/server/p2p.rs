//! The piece server other peers fetch from: byte ranges of tasks this peer holds, complete or
//! still downloading. Only ranges whose pieces are all stored are served, so a parent never
//! hands out bytes it has not verified.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use shoal_common::TaskId;

use super::error::ApiError;
use super::range::{parse_range, RangeError};
use crate::engine::stream_range;
use crate::error::Error;
use crate::metrics::PeerMetrics;
use crate::ratelimit::RateLimit;
use crate::storage::Storage;

#[derive(Clone)]
pub struct P2pState {
    pub storage: Arc<Storage>,
    pub metrics: PeerMetrics,
    pub upload_limit: Arc<RateLimit>,
    /// Test-only fault injection: flip bytes of everything served.
    pub corrupt: bool,
}

pub fn router(state: P2pState) -> Router {
    Router::new()
        .route("/api/v1/tasks/{task}/data", get(serve_range))
        .with_state(state)
}

/// Decrements the active-uploads gauge when the response body is dropped.
struct UploadGuard(prometheus::IntGauge);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_range(
    State(st): State<P2pState>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task: TaskId = task.parse()?;
    let file = st.storage.get(&task).ok_or(Error::TaskNotFound { task })?;
    let length = file.layout().length;
    let range = match headers.get(header::RANGE) {
        None => 0..length,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Range header is not ASCII"))?;
            match parse_range(v, length) {
                Ok(r) => r,
                Err(RangeError::Malformed(m)) => return Err(ApiError::bad_request(m)),
                Err(RangeError::Unsatisfiable) => {
                    return Err(Error::RangeNotSatisfiable {
                        task,
                        range: v.to_owned(),
                        length,
                    }
                    .into())
                }
            }
        }
    };
    if !file.has_range(range.start, range.end) {
        return Err(Error::RangeNotHeld {
            task,
            start: range.start,
            end: range.end,
        }
        .into());
    }
    st.metrics.uploads_active.inc();
    let guard = UploadGuard(st.metrics.uploads_active.clone());
    let (metrics, limit, corrupt) = (st.metrics.clone(), st.upload_limit.clone(), st.corrupt);
    let body = stream_range(file, range.clone()).then(move |chunk| {
        let metrics = metrics.clone();
        let limit = limit.clone();
        let _keep = &guard;
        async move {
            let chunk = chunk?;
            limit.consume(chunk.len()).await;
            metrics.upload_bytes.inc_by(chunk.len() as u64);
            if corrupt {
                let mut bad = chunk.to_vec();
                for b in bad.iter_mut().step_by(4096) {
                    *b ^= 0xff;
                }
                return Ok::<_, Error>(bytes::Bytes::from(bad));
            }
            Ok(chunk)
        }
    });
    let len = range.end - range.start;
    let mut resp = Body::from_stream(body).into_response();
    let partial = headers.contains_key(header::RANGE);
    *resp.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if partial {
        if let Ok(v) = format!("bytes {}-{}/{}", range.start, range.end - 1, length).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}
