//! Reading a task in order while it downloads: each read waits for the piece it needs, so a
//! client receives bytes as soon as they are verified rather than when the blob is complete.
//!
//! The chunks read are the peer's send buffers: a connection's writer (hyper) queues what it
//! is given until the socket takes it, so a thousand clients of one blob would otherwise hold
//! a thousand full write buffers. Each chunk therefore holds its bytes in the shared send
//! budget ([`MemoryBudget`]) until it is dropped (written to the socket): readers beyond the
//! budget queue (fairly) instead of being refused, and a writer's queue is bounded by hyper's
//! own write-buffer limit. A stream does not wait for its previous chunk to be dropped: a
//! consumer that keeps the chunks it was given (a body collected in memory, as in-process
//! callers do) would then wait on itself forever.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::MemoryBudget;
use crate::error::{Error, Result};
use crate::storage::{TaskFile, TaskStatus};

/// Largest read handed to the client at once.
const READ_CHUNK: u64 = 256 << 10;

struct State {
    file: Arc<TaskFile>,
    status: watch::Receiver<TaskStatus>,
    pos: u64,
    end: u64,
    budget: MemoryBudget,
}

/// A chunk on its way out: its bytes and their share of the send budget, released when the
/// writer drops it.
struct Held {
    buf: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Waits until the piece holding byte `offset` is stored, or the download fails: a response
/// can then promise bytes (a `206`) or give a clear error instead of a body cut short.
pub async fn byte_ready(file: &TaskFile, offset: u64) -> Result<()> {
    let piece = (offset / file.layout().piece_size) as u32;
    piece_ready(file, &mut file.subscribe(), piece).await
}

async fn piece_ready(
    file: &TaskFile,
    status: &mut watch::Receiver<TaskStatus>,
    piece: u32,
) -> Result<()> {
    loop {
        if file.has_piece(piece) {
            return Ok(());
        }
        // Marks the status seen before the check above is repeated, so a change after it
        // wakes `changed()`.
        let failed = status.borrow_and_update().failed.clone();
        if let Some(e) = failed {
            return Err(e.for_waiter(file.id()));
        }
        if file.has_piece(piece) {
            return Ok(());
        }
        if status.changed().await.is_err() {
            return Err(Error::Cancelled);
        }
    }
}

/// Streams `range` of the task (clamped to its length), waiting for pieces as needed and for
/// room in `budget`. A consumer gets the next chunk only after dropping the previous one: it
/// must pass chunks on (or drop them), never collect them.
pub fn stream_range(
    file: Arc<TaskFile>,
    range: Range<u64>,
    budget: MemoryBudget,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let end = range.end.min(file.layout().length);
    let status = file.subscribe();
    let state = State {
        file,
        status,
        pos: range.start.min(end),
        end,
        budget,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.pos >= st.end {
            return None;
        }
        let layout = st.file.layout();
        let piece = (st.pos / layout.piece_size) as u32;
        if let Err(e) = piece_ready(&st.file, &mut st.status, piece).await {
            st.pos = st.end;
            return Some((Err(e), st));
        }
        // Read up to the end of this piece (it is present), at most READ_CHUNK.
        let piece_end = layout.range(piece).map(|r| r.end).unwrap_or(st.end);
        let len = (piece_end.min(st.end) - st.pos).min(READ_CHUNK);
        // The budget is never closed: `None` cannot happen while the stream exists.
        let Some(budget) = st.budget.reserve(len).await else {
            st.pos = st.end;
            return Some((Err(Error::Cancelled), st));
        };
        let file = st.file.clone();
        let pos = st.pos;
        let read = tokio::task::spawn_blocking(move || file.read_at(pos, len as usize)).await;
        match read {
            Ok(Ok(buf)) => {
                st.pos += len;
                let held = Held {
                    buf,
                    _budget: budget,
                };
                Some((Ok(Bytes::from_owner(held)), st))
            }
            Ok(Err(e)) => {
                st.pos = st.end;
                Some((Err(e), st))
            }
            Err(e) => {
                st.pos = st.end;
                Some((Err(Error::io(st.file.dir(), std::io::Error::other(e))), st))
            }
        }
    })
}
