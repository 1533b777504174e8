//! Blob requests of the mirror: `GET|HEAD /v2/<name>/blobs/<digest>` (with `Range`).
//!
//! A blob not complete in the cache is first asked upstream with a `HEAD` (with the client's
//! credentials, else the node's): that resolves the token, turns an unknown blob into a 404,
//! and is the access check. A whole-blob request then downloads it through the P2P engine and
//! streams it while pieces arrive; a `Range` request joins the same task (the digest) but
//! fetches only the pieces under its range, first, from peers that hold them or the origin
//! (a sparse task: lazy mounts read this way). A cached blob, whole or in part, is served
//! only after the same check (unless `verify_blob_access` is off), its positive answers
//! remembered briefly per credential, repository and blob. A whole-blob response holds back
//! its last bytes until the blob is known to match the digest (the download's own check, or
//! a hash as it is sent when nothing checked the file) and is cut if it does not, so a client
//! never receives a complete-looking wrong body.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use shoal_common::{Digest, Sha256Hasher, TaskId};

use super::{
    client_auth, parse_digest, split, upstream_failed, upstream_host, upstream_refused,
    MirrorError, MirrorQuery, MirrorState,
};
use crate::access::AccessCache;
use crate::engine::{byte_ready, stream_range, DownloadRequest};
use crate::error::{Error, Result};
use crate::server::range::{parse_range, RangeError};
use crate::storage::TaskFile;
use crate::upstream::Answer;

pub(super) async fn blob(
    st: &MirrorState,
    method: &Method,
    rest: &str,
    q: MirrorQuery,
    headers: &HeaderMap,
) -> Result<Response, MirrorError> {
    let (name, reference) = split(rest, "/blobs/")?;
    let digest = parse_digest(reference)?;
    let host = upstream_host(st, q)?;
    let auth = client_auth(headers);
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let s = v.to_str().map_err(|_| bad_range("bad Range header"))?;
            // The syntax now, before anything goes upstream; the bounds once the length is known.
            if let Err(RangeError::Malformed(m)) = parse_range(s, u64::MAX) {
                return Err(bad_range(m));
            }
            Some(s.to_owned())
        }
    };

    let held = st.engine.storage().get(&TaskId::Content(digest));
    if let Some(file) = held.as_ref().filter(|f| f.is_complete()).cloned() {
        check_access(st, &host, name, &digest, auth).await?;
        file.touch();
        return respond(st, method, file, digest, range.as_deref());
    }
    // A range of a blob held in part (a lazy mount's next read): the remembered access
    // check, and the length the cache entry already has, spare a HEAD per read.
    let partial = held.filter(|_| range.is_some());
    let (length, upstream_auth) = match partial {
        Some(file) => {
            check_access(st, &host, name, &digest, auth.clone()).await?;
            let length = file.layout().length;
            (Some(length), st.upstream.auth_for(&host, name, auth))
        }
        None => {
            let answer = head_upstream(st, &host, name, &digest, auth).await?;
            let length = answer
                .response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (length, answer.auth)
        }
    };
    if method == Method::HEAD && range.is_none() {
        let mut out = blob_headers(&digest);
        if let Some(length) = length {
            out.insert(header::CONTENT_LENGTH, length.into());
        }
        return Ok((StatusCode::OK, out).into_response());
    }
    let url = url::Url::parse(&blob_url(st, &host, name, &digest)).map_err(|e| {
        MirrorError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!("bad upstream URL: {e}"),
        )
    })?;
    let mut hdrs = reqwest::header::HeaderMap::new();
    if let Some(a) = upstream_auth {
        hdrs.insert(reqwest::header::AUTHORIZATION, a);
    }
    let req = DownloadRequest {
        url,
        digest: Some(digest),
        headers: hdrs,
        length,
        media_type: st.media_types.get(&digest),
    };
    let failed = |e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN");
    let Some(range) = range else {
        let file = st.engine.open(req).await.map_err(failed)?;
        return respond(st, method, file, digest, None);
    };
    let file = st.engine.open_sparse(&req).await.map_err(failed)?;
    if method == Method::GET {
        if let Ok(r) = parse_range(&range, file.layout().length) {
            st.engine
                .want(&req, &file, r.clone())
                .await
                .map_err(failed)?;
            // The first bytes decide between a 206 and an error (an origin that refuses the
            // range, a blob shorter than the registry said): never a 206 cut short at once.
            byte_ready(&file, r.start).await.map_err(failed)?;
        }
    }
    respond(st, method, file, digest, Some(&range))
}

fn bad_range(message: impl Into<String>) -> MirrorError {
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

/// The answer for `file` (complete, or with the pieces under `range` on their way): headers,
/// and for a `GET` the bytes as they arrive, a whole blob held back until verified.
fn respond(
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

/// The bytes of `r`, counted as served to local clients. A whole blob is never handed over
/// unverified: the client (containerd) trusts a complete body. The download's own whole-blob
/// check is awaited when there is one; only a file nobody checked (complete from before a
/// restart) is hashed here. A range needs neither: its pieces are verified one by one, and
/// the client checks what it asked for (lazyfs verifies every chunk).
fn body(
    st: &MirrorState,
    file: Arc<TaskFile>,
    digest: Digest,
    r: Range<u64>,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let length = file.layout().length;
    let whole = r.start == 0 && r.end == length;
    let check = if !whole || file.is_verified() {
        Check::None
    } else if st.engine.is_downloading(&file.id()) {
        Check::AwaitDownload
    } else {
        Check::Hash
    };
    let stream = stream_range(file.clone(), r);
    let metrics = st.metrics.clone();
    match check {
        Check::None => stream.boxed(),
        Check::AwaitDownload => held_until_verified(stream, file, length).boxed(),
        Check::Hash => verified(stream, digest, length).boxed(),
    }
    .map(move |chunk| {
        if let Ok(c) = &chunk {
            metrics.local_bytes_served.inc_by(c.len() as u64);
        }
        chunk
    })
}

fn blob_url(st: &MirrorState, host: &str, name: &str, digest: &Digest) -> String {
    format!("{}/v2/{name}/blobs/{digest}", st.upstream.base_url(host))
}

/// `HEAD` of the blob upstream with the client's (else the node's) credentials: the access
/// check, the blob's length and the token for the download. Remembers a positive answer.
async fn head_upstream(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
) -> Result<Answer, MirrorError> {
    st.metrics
        .upstream_requests
        .with_label_values(&["blob"])
        .inc();
    let key = st.upstream.access().map(|_| {
        AccessCache::key(
            &st.upstream.identity(host, auth.as_ref()),
            host,
            name,
            digest,
        )
    });
    let answer = st
        .upstream
        .send(
            Method::HEAD,
            host,
            name,
            &blob_url(st, host, name, digest),
            reqwest::header::HeaderMap::new(),
            auth,
        )
        .await
        .map_err(|e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN"))?;
    if !answer.response.status().is_success() {
        return Err(upstream_refused(
            st,
            &answer.response,
            "BLOB_UNKNOWN",
            "blob",
        ));
    }
    if let (Some(cache), Some(key)) = (st.upstream.access(), key) {
        cache.remember(key);
    }
    Ok(answer)
}

/// Before a cached blob is served: may this client read it upstream? Fails closed (an
/// unreachable registry means no answer, so no blob).
async fn check_access(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
) -> Result<(), MirrorError> {
    let Some(cache) = st.upstream.access() else {
        return Ok(());
    };
    let count = |result: &str| {
        st.metrics
            .blob_access_checks
            .with_label_values(&[result])
            .inc()
    };
    let key = AccessCache::key(
        &st.upstream.identity(host, auth.as_ref()),
        host,
        name,
        digest,
    );
    if cache.allowed(&key) {
        count("cache_hit");
        return Ok(());
    }
    match head_upstream(st, host, name, digest, auth).await {
        Ok(_) => {
            count("allowed");
            Ok(())
        }
        Err(e) => {
            let denied = matches!(e.status.as_u16(), 401 | 403 | 404);
            count(if denied { "denied" } else { "failed" });
            tracing::info!(
                repo = name,
                %digest,
                status = e.status.as_u16(),
                "cached blob not served: upstream did not confirm the client may read it"
            );
            Err(e)
        }
    }
}

/// How a whole-blob response is checked before its last bytes go out.
enum Check {
    /// Already verified (or a range: the client checks what it asked for).
    None,
    /// The running download verifies the blob; wait for its verdict.
    AwaitDownload,
    /// Nobody did: hash the bytes on the way out.
    Hash,
}

/// Passes `stream` on, holding back the last chunk until the running download has checked
/// the whole blob against its digest; if that check fails (or the body is short) the stream
/// ends with an error, which cuts the connection before the client has `length` bytes.
fn held_until_verified(
    stream: impl Stream<Item = Result<Bytes>> + Send + 'static,
    file: Arc<TaskFile>,
    length: u64,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let status = file.subscribe();
    let state = (Box::pin(stream), status, file, 0u64, false);
    futures::stream::unfold(
        state,
        move |(mut inner, mut status, file, mut sent, done)| async move {
            if done {
                return None;
            }
            let item = match inner.next().await {
                Some(Ok(chunk)) => {
                    sent += chunk.len() as u64;
                    if sent < length {
                        Ok(chunk)
                    } else {
                        let verdict = status
                            .wait_for(|s| s.verified || s.failed.is_some())
                            .await
                            .map(|s| s.verified)
                            .unwrap_or(false);
                        if sent == length && verdict {
                            Ok(chunk)
                        } else {
                            Err(unverified(&file))
                        }
                    }
                }
                Some(Err(e)) => Err(e),
                None if sent == length => return None,
                None => Err(unverified(&file)),
            };
            let done = item.is_err() || sent >= length;
            Some((item, (inner, status, file, sent, done)))
        },
    )
}

fn unverified(file: &TaskFile) -> Error {
    let message = file
        .subscribe()
        .borrow()
        .failed
        .clone()
        .unwrap_or_else(|| "the blob could not be verified".into());
    tracing::warn!(task = %file.id(), %message, "blob not verified: response cut");
    Error::DownloadFailed {
        task: file.id(),
        message,
    }
}

/// Passes `stream` on while hashing it, holding back the last chunk until the whole body is
/// known to have `digest`: on a mismatch (or a short body) the stream ends with an error, which
/// cuts the connection before the client has `length` bytes.
fn verified(
    stream: impl Stream<Item = Result<Bytes>> + Send + 'static,
    digest: Digest,
    length: u64,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let state = (Box::pin(stream), Sha256Hasher::new(), 0u64, false);
    futures::stream::unfold(
        state,
        move |(mut inner, mut hasher, mut sent, done)| async move {
            if done {
                return None;
            }
            let item = match inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    sent += chunk.len() as u64;
                    if sent < length {
                        Ok(chunk)
                    } else {
                        let actual = std::mem::take(&mut hasher).finish();
                        if sent == length && actual == digest {
                            Ok(chunk)
                        } else {
                            Err(mismatch(digest, actual))
                        }
                    }
                }
                Some(Err(e)) => Err(e),
                None if sent == length => return None,
                None => Err(mismatch(digest, std::mem::take(&mut hasher).finish())),
            };
            let done = item.is_err() || sent >= length;
            Some((item, (inner, hasher, sent, done)))
        },
    )
}

fn mismatch(expected: Digest, actual: Digest) -> Error {
    tracing::warn!(%expected, %actual, "blob bytes do not match the digest: response cut");
    Error::BlobDigest {
        task: TaskId::Content(expected),
        expected,
        actual,
    }
}
