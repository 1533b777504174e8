//! The local API on the mirror port: what `shoal-peer get` uses to download through this
//! peer, a whole blob or a `Range` of it (which fetches only the pieces under the range).
//! Loopback-only by default: it serves whatever it can fetch to whoever asks.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use shoal_common::task::parse_download_url;
use shoal_common::Digest;

use super::error::ApiError;
use crate::engine::{byte_ready, stream_range, DownloadRequest, Engine};
use crate::error::Error;
use crate::metrics::PeerMetrics;
use crate::server::range::{parse_range, RangeError};

#[derive(Clone)]
pub struct LocalState {
    pub engine: Engine,
    pub metrics: PeerMetrics,
}

pub fn router(state: LocalState) -> Router {
    Router::new()
        .route("/api/v1/download", get(download))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    url: Option<String>,
    digest: Option<String>,
}

/// Header naming the task, so clients can correlate with logs and metrics.
pub const TASK_HEADER: &str = "x-shoal-task-id";

async fn download(
    State(st): State<LocalState>,
    Query(q): Query<DownloadQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let url = q
        .url
        .ok_or_else(|| ApiError::bad_request("missing query parameter url"))?;
    let url = parse_download_url(&url)?;
    let digest = q.digest.map(|d| d.parse::<Digest>()).transpose()?;
    let range = headers
        .get(header::RANGE)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("bad Range header"))
                .map(str::to_owned)
        })
        .transpose()?;
    if let Some(Err(RangeError::Malformed(m))) = range.as_deref().map(|r| parse_range(r, u64::MAX))
    {
        return Err(ApiError::bad_request(m));
    }
    let req = DownloadRequest {
        url,
        digest,
        headers: HeaderMap::new(),
        auth: None,
        length: None,
        media_type: None,
    };
    // A range joins the blob's task and fetches only the pieces under it, first.
    let (file, status, r) = match &range {
        None => {
            let file = st.engine.open(req).await?;
            let length = file.layout().length;
            (file, StatusCode::OK, 0..length)
        }
        Some(range) => {
            let file = st.engine.open_sparse(&req).await?;
            let length = file.layout().length;
            let r = match parse_range(range, length) {
                Ok(r) => r,
                Err(RangeError::Malformed(m)) => return Err(ApiError::bad_request(m)),
                Err(RangeError::Unsatisfiable) => {
                    let mut resp = ApiError::from(Error::RangeNotSatisfiable {
                        task: file.id(),
                        range: range.clone(),
                        length,
                    })
                    .into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                        resp.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return Ok(resp);
                }
            };
            st.engine.want(&req, &file, r.clone()).await?;
            byte_ready(&file, r.start).await?;
            (file, StatusCode::PARTIAL_CONTENT, r)
        }
    };
    let length = file.layout().length;
    let task = file.id();
    let metrics = st.metrics.clone();
    let len = r.end - r.start;
    let (start, end) = (r.start, r.end);
    let body = stream_range(file, r, st.engine.send_memory()).map(move |chunk| {
        if let Ok(c) = &chunk {
            metrics.local_bytes_served.inc_by(c.len() as u64);
        }
        chunk
    });
    let mut resp = (status, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{length}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&task.to_string()) {
        h.insert(TASK_HEADER, v);
    }
    Ok(resp)
}
