//! The local API on the mirror port: what `shoal-peer get` (and later the registry mirror)
//! uses to download through this peer. Loopback-only by default: it serves whatever it can
//! fetch to whoever asks.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use shoal_common::task::parse_download_url;
use shoal_common::Digest;

use super::error::ApiError;
use crate::engine::{stream_range, DownloadRequest, Engine};
use crate::metrics::PeerMetrics;

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
) -> Result<Response, ApiError> {
    let url = q
        .url
        .ok_or_else(|| ApiError::bad_request("missing query parameter url"))?;
    let url = parse_download_url(&url)?;
    let digest = q.digest.map(|d| d.parse::<Digest>()).transpose()?;
    let file = st
        .engine
        .open(DownloadRequest {
            url,
            digest,
            headers: HeaderMap::new(),
            length: None,
        })
        .await?;
    let length = file.layout().length;
    let task = file.id();
    let metrics = st.metrics.clone();
    let body = stream_range(file, 0..length).map(move |chunk| {
        if let Ok(c) = &chunk {
            metrics.local_bytes_served.inc_by(c.len() as u64);
        }
        chunk
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, length.into());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&task.to_string()) {
        h.insert(TASK_HEADER, v);
    }
    Ok(resp)
}
