//! The piece server other peers fetch from: byte ranges of tasks this peer holds, complete or
//! still downloading. Stored pieces come from disk, verified. A whole piece still arriving
//! from a parent or the origin is relayed as it arrives (cut-through, see `storage::Relays`):
//! those bytes are not verified yet. Every receiver checks each piece against its sha256
//! when one is known; a piece relayed from its first origin fetch has none yet, and its
//! receivers trust it as they would that fetch, the blob's digest being the final check.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use shoal_common::TaskId;

use super::error::ApiError;
use super::range::{parse_range, RangeError};
use crate::engine::{stream_range, MemoryBudget};
use crate::error::Error;
use crate::metrics::PeerMetrics;
use crate::ratelimit::RateLimit;
use crate::storage::{Relay, Storage, TaskFile};

#[derive(Clone)]
pub struct P2pState {
    pub storage: Arc<Storage>,
    pub metrics: PeerMetrics,
    pub upload_limit: Arc<RateLimit>,
    /// Chunks read for other peers hold their bytes here until sent ([`stream_range`]).
    pub send_memory: MemoryBudget,
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
    // Held bytes from disk; else a whole piece still arriving from a parent, as it arrives.
    // The second look at the disk covers a piece stored (and its relay ended) in between.
    let source: BoxStream<'static, Result<Bytes, Error>> = if file.has_range(range.start, range.end)
    {
        stream_range(file, range.clone(), st.send_memory.clone()).boxed()
    } else if let Some(relay) = relay_for(&file, &range).await {
        let relayed = st.metrics.relayed_bytes.clone();
        relay
            .stream()
            .inspect(move |c| {
                if let Ok(c) = c {
                    relayed.inc_by(c.len() as u64);
                }
            })
            .boxed()
    } else if file.has_range(range.start, range.end) {
        stream_range(file, range.clone(), st.send_memory.clone()).boxed()
    } else {
        return Err(Error::RangeNotHeld {
            task,
            start: range.start,
            end: range.end,
        }
        .into());
    };
    st.metrics.uploads_active.inc();
    let guard = UploadGuard(st.metrics.uploads_active.clone());
    let (metrics, limit) = (st.metrics.clone(), st.upload_limit.clone());
    let body = source.then(move |chunk| {
        let metrics = metrics.clone();
        let limit = limit.clone();
        let _keep = &guard;
        async move {
            let chunk = chunk?;
            limit.consume(chunk.len()).await;
            metrics.upload_bytes.inc_by(chunk.len() as u64);
            Ok::<_, Error>(chunk)
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

/// How long a request for a whole piece we neither hold nor relay waits for its relay to
/// start (see `Relays::wait`) before the answer is that we do not hold it.
const RELAY_START_WAIT: Duration = Duration::from_millis(500);

/// The relay of the piece `range` covers exactly, if that piece is arriving (or about to).
async fn relay_for(file: &TaskFile, range: &Range<u64>) -> Option<Arc<Relay>> {
    let layout = file.layout();
    let piece = u32::try_from(range.start / layout.piece_size).ok()?;
    if layout.range(piece).as_ref() != Some(range) {
        return None;
    }
    let deadline = tokio::time::Instant::now() + RELAY_START_WAIT;
    file.relays().wait(piece, deadline).await
}
