//! The body of a blob response. A whole blob is never handed over unverified: its last
//! bytes are held back until it is known to match the digest (the download's own check, or
//! a hash as it is sent when nothing checked the file) and the stream is cut if it does not,
//! so a client never receives a complete-looking wrong body.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use shoal_common::{Digest, Sha256Hasher, TaskId};

use super::super::MirrorState;
use crate::engine::stream_range;
use crate::error::{Error, Result};
use crate::storage::TaskFile;

/// The bytes of `r`, counted as served to local clients. A whole blob is never handed over
/// unverified: the client (containerd) trusts a complete body. The download's own whole-blob
/// check is awaited when there is one; only a file nobody checked (complete from before a
/// restart) is hashed here. A range needs neither: its pieces are verified one by one, and
/// the client checks what it asked for (lazyfs verifies every chunk).
pub(super) fn body(
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
    let stream = stream_range(file.clone(), r, st.engine.send_memory());
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
    let failed = file.subscribe().borrow().failed.clone();
    let e = match failed {
        Some(e) => e.for_waiter(file.id()),
        None => Error::DownloadFailed {
            task: file.id(),
            message: "the blob could not be verified".into(),
        },
    };
    tracing::warn!(task = %file.id(), error = %e, "blob not verified: response cut");
    e
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
