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

async fn hash_in_order(file: Arc<TaskFile>) -> Result<Digest> {
    let count = file.layout().piece_count();
    let mut status = file.subscribe();
    let mut hasher = Sha256Hasher::new();
    let mut next = 0u32;
    loop {
        // Mark the status seen before looking at the pieces: a piece stored after this
        // point wakes the `changed()` below.
        if let Some(message) = status.borrow_and_update().failed.clone() {
            return Err(Error::DownloadFailed {
                task: file.id(),
                message,
            });
        }
        let run_end = (next..count).find(|&p| !file.has_piece(p)).unwrap_or(count);
        if run_end > next {
            // Hash the run of pieces present from `next` on, off the async threads.
            let f = file.clone();
            let (start, end) = (next, run_end);
            hasher = tokio::task::spawn_blocking(move || -> Result<Sha256Hasher> {
                for p in start..end {
                    if let Some(r) = f.layout().range(p) {
                        hasher.update(&f.read_at(r.start, (r.end - r.start) as usize)?);
                    }
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
