//! The whole-blob digest check, computed while the download runs.
//!
//! Every piece is checked against its sha256 as it arrives, but those piece digests come from
//! the first peer that fetched each piece from the origin; only the blob's own digest (the
//! task id) proves the bytes are the registry's. Hashing the blob once it is complete costs a
//! full extra read and CPU pass at the moment every peer of a swarm finishes at once, so a
//! background task hashes the pieces in order as the front of the blob fills in (they are
//! still in the page cache), and the final check only hashes what arrived last.

use std::sync::Arc;

use shoal_common::{Digest, Sha256Hasher, TaskId};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, Result};
use crate::storage::TaskFile;

/// Hashes a task's pieces in order as they arrive; aborted when dropped.
pub(super) struct BlobHasher {
    expected: Digest,
    handle: AbortOnDropHandle<Result<Digest>>,
}

impl BlobHasher {
    /// `None` when the task id promises no digest (a plain URL download).
    pub fn start(file: &Arc<TaskFile>) -> Option<BlobHasher> {
        let expected = file.id().content_digest()?;
        let handle = AbortOnDropHandle::new(tokio::spawn(hash_in_order(file.clone())));
        Some(BlobHasher { expected, handle })
    }

    /// Waits for the last pieces to be hashed and compares with the task's digest.
    pub async fn finish(self) -> Result<()> {
        let task = TaskId::Content(self.expected);
        let actual = self.handle.await.map_err(|e| Error::DownloadFailed {
            task,
            message: format!("blob hasher crashed: {e}"),
        })??;
        if actual != self.expected {
            return Err(Error::BlobDigest {
                task,
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

/// Bytes read and hashed at a time.
const HASH_CHUNK: usize = 256 << 10;

async fn hash_in_order(file: Arc<TaskFile>) -> Result<Digest> {
    let count = file.layout().piece_count();
    let mut status = file.subscribe();
    let mut hasher = Sha256Hasher::new();
    let mut next = 0u32;
    loop {
        // Mark the status seen before looking at the pieces: a piece stored after this
        // point wakes the `changed()` below.
        if let Some(e) = status.borrow_and_update().failed.clone() {
            return Err(e.for_waiter(file.id()));
        }
        let run_end = (next..count).find(|&p| !file.has_piece(p)).unwrap_or(count);
        if run_end > next {
            // Hash the run of pieces present from `next` on, off the async threads.
            let f = file.clone();
            let (start, end) = (next, run_end);
            hasher = tokio::task::spawn_blocking(move || -> Result<Sha256Hasher> {
                let (from, to) = match (f.layout().range(start), f.layout().range(end - 1)) {
                    (Some(a), Some(b)) => (a.start, b.end),
                    _ => return Ok(hasher),
                };
                // One small buffer for the whole run: a piece-sized read each time would
                // allocate (and fault in) a fresh 4 MiB per piece.
                let mut buf = vec![0u8; HASH_CHUNK.min((to - from) as usize)];
                let mut pos = from;
                while pos < to {
                    let n = buf.len().min((to - pos) as usize);
                    f.read_into(pos, &mut buf[..n])?;
                    hasher.update(&buf[..n]);
                    pos += n as u64;
                }
                Ok(hasher)
            })
            .await
            .map_err(|e| Error::DownloadFailed {
                task: file.id(),
                message: format!("blob hasher crashed: {e}"),
            })??;
            next = run_end;
        }
        if next >= count {
            return Ok(hasher.finish());
        }
        if status.changed().await.is_err() {
            return Err(Error::Cancelled);
        }
    }
}
