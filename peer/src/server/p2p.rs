//! The piece server other peers fetch from: byte ranges of tasks this peer holds, complete or
//! still downloading. Stored pieces come from disk, verified. A whole piece still arriving
//! from a parent or the origin is relayed as it arrives (cut-through, see `storage::Relays`):
//! those bytes are not verified yet. Every receiver checks each piece against its sha256
//! when one is known; a piece relayed from its first origin fetch has none yet, and its
//! receivers trust it as they would that fetch, the blob's digest being the final check.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
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
use shoal_common::api::UploadCut;
use shoal_common::TaskId;

use super::error::ApiError;
use super::range::{parse_range, RangeError};
use crate::engine::{stream_range, MemoryBudget, ReportItem, Reporter};
use crate::error::Error;
use crate::metrics::PeerMetrics;
use crate::ratelimit::RateLimit;
use crate::storage::{Relay, Storage, TaskFile};

#[derive(Clone)]
pub struct P2pState {
    pub storage: Arc<Storage>,
    pub metrics: PeerMetrics,
    pub upload_limit: Arc<RateLimit>,
    /// Tells the supernode about uploads that broke off.
    pub reporter: Reporter,
    /// Chunks read for other peers hold their bytes here until sent ([`stream_range`]).
    pub send_memory: MemoryBudget,
}

pub fn router(state: P2pState) -> Router {
    Router::new()
        .route("/api/v1/tasks/{task}/data", get(serve_range))
        .with_state(state)
}

/// Decrements the active-uploads gauge when the response body is dropped, and reports the
/// upload to the supernode if it broke off before its last byte (the child went away: if it
/// died, nobody else would free the upload slot its assignment holds until it expires).
struct UploadGuard {
    active: prometheus::IntGauge,
    sent: Arc<AtomicU64>,
    len: u64,
    cut: Option<(Reporter, TaskId, UploadCut)>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.active.dec();
        if self.sent.load(Ordering::Relaxed) < self.len {
            if let Some((reporter, task, cut)) = self.cut.take() {
                reporter.send(task, ReportItem::UploadCut(cut));
            }
        }
    }
}

/// The piece a request is for, and the child that names itself, when both are known.
fn upload_cut(file: &TaskFile, range: &Range<u64>, headers: &HeaderMap) -> Option<UploadCut> {
    let child = headers
        .get(shoal_common::PEER_ID_HEADER)?
        .to_str()
        .ok()
        .filter(|id| shoal_common::api::validate_peer_id(id).is_ok())?;
    let layout = file.layout();
    let piece = u32::try_from(range.start / layout.piece_size).ok()?;
    (layout.range(piece).as_ref() == Some(range)).then(|| UploadCut {
        piece,
        child: child.to_owned(),
    })
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
    let cut = upload_cut(&file, &range, &headers);
    let mut relayed = false;
    let source: BoxStream<'static, Result<Bytes, Error>> = if file.has_range(range.start, range.end)
    {
        stream_range(file, range.clone(), st.send_memory.clone()).boxed()
    } else if let Some(relay) = relay_for(&file, &range).await {
        relayed = true;
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
    let sent = Arc::new(AtomicU64::new(0));
    let guard = UploadGuard {
        active: st.metrics.uploads_active.clone(),
        sent: sent.clone(),
        len: range.end - range.start,
        cut: cut.map(|c| (st.reporter.clone(), task, c)),
    };
    let (metrics, limit) = (st.metrics.clone(), st.upload_limit.clone());
    // Sent in slices: under an upload limit each read would otherwise wait for all its
    // tokens and then go out at once, and a child sharing the limit with seven others would
    // hear nothing for 8 × 256 KiB / rate (1.7 s at 10 Mbit/s), long enough to take this
    // parent for stalled (`parent_stall_timeout`).
    let sliced = source.flat_map(|chunk| futures::stream::iter(slices(chunk)));
    let body = sliced.then(move |chunk| {
        let metrics = metrics.clone();
        let limit = limit.clone();
        let sent = sent.clone();
        let _keep = &guard;
        async move {
            let chunk = chunk?;
            limit.consume(chunk.len()).await;
            metrics.upload_bytes.inc_by(chunk.len() as u64);
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
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
    if relayed {
        h.insert(
            shoal_common::RELAY_HEADER,
            header::HeaderValue::from_static("1"),
        );
    }
    Ok(resp)
}

/// Largest slice of the body sent (and counted against the upload limit) at once.
const SEND_SLICE: usize = 64 << 10;

fn slices(chunk: Result<Bytes, Error>) -> Vec<Result<Bytes, Error>> {
    match chunk {
        Ok(b) if b.len() > SEND_SLICE => (0..b.len())
            .step_by(SEND_SLICE)
            .map(|at| Ok(b.slice(at..(at + SEND_SLICE).min(b.len()))))
            .collect(),
        other => vec![other],
    }
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
