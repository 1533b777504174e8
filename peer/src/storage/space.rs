//! Room on the data directory's filesystem, which the quota does not guarantee: the disk may
//! be smaller than the quota, shared with other data, or filled by someone else.
//!
//! A whole-blob download reserves its bytes before fetching any (`fallocate`): a task's data
//! file is sparse, so without the reservation a full disk shows up only as a failed piece
//! write, after bytes were fetched for nothing, and a write into a hole can fail at any point
//! of the download. With it, a download that cannot fit fails at once with a clear error.
//! When there is no room, unused blobs are evicted, least recently used first, but only if
//! evicting can make enough room: a download that cannot fit anyway must not empty the cache
//! of blobs that other clients still want.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use shoal_common::TaskId;

use super::{Storage, TaskFile};
use crate::error::{Error, Result};

/// Room asked for beyond a task's data: its metadata and piece log, and the filesystem's
/// own bookkeeping, so that a reservation that just fits does not fail on the next record.
const SLACK: u64 = 256 << 10;

/// Bytes the regular files directly under `dir` occupy on disk (what deleting it frees).
fn allocated_in(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn out_of_space(e: Errno) -> bool {
    e == Errno::NOSPC || e == Errno::DQUOT
}

impl Storage {
    /// Bytes the data directory's filesystem still grants us; `None` if it cannot say.
    fn free_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.root).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Makes `needed` bytes (plus a little slack) free on the data directory's filesystem for
    /// `task`, evicting other unused tasks least recently used first. Evicts nothing and
    /// reports [`Error::DiskFull`] (naming `path`, where the space was missing) when even
    /// evicting all of them would not be enough. Returns the tasks evicted (blocking I/O).
    pub fn make_room(&self, task: TaskId, needed: u64, path: &Path) -> Result<Vec<TaskId>> {
        let needed = needed.saturating_add(SLACK);
        let full = || Error::DiskFull {
            task,
            path: path.to_path_buf(),
            needed,
        };
        let Some(free) = self.free_bytes() else {
            return Err(full());
        };
        if free >= needed {
            return Ok(Vec::new());
        }
        // Unused tasks, least recently used first ("unused": only the cache holds them).
        let mut candidates: Vec<(u64, TaskId)> = self
            .inner
            .lock()
            .tasks
            .iter()
            .filter(|(id, e)| **id != task && Arc::strong_count(&e.file) == 1)
            .map(|(id, e)| (e.last_used, *id))
            .collect();
        candidates.sort_unstable();
        let sizes: Vec<u64> = candidates
            .iter()
            .map(|(_, id)| allocated_in(&self.task_dir(id)))
            .collect();
        if free.saturating_add(sizes.iter().sum()) < needed {
            return Err(full());
        }
        let mut evicted = Vec::new();
        for (_, id) in candidates {
            if self.free_bytes().is_some_and(|f| f >= needed) {
                break;
            }
            if self.evict_if_unused(&id) {
                tracing::info!(task = %id, for_task = %task, "evicted from cache: disk full");
                evicted.push(id);
            }
        }
        self.publish();
        if self.free_bytes().is_some_and(|f| f >= needed) {
            Ok(evicted)
        } else {
            // Someone started using a candidate meanwhile, or another process writes there.
            Err(full())
        }
    }

    /// Removes `id` and its files if nobody but the cache holds it.
    fn evict_if_unused(&self, id: &TaskId) -> bool {
        {
            let mut inner = self.inner.lock();
            let unused = inner
                .tasks
                .get(id)
                .is_some_and(|e| Arc::strong_count(&e.file) == 1);
            if !unused {
                return false;
            }
            if let Some(e) = inner.tasks.remove(id) {
                inner.used -= e.file.layout().length;
            }
        }
        let dir = self.task_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(task = %id, error = %e, "failed to delete evicted task");
        }
        self.metrics.evictions.inc();
        true
    }

    /// Reserves the disk space for all of `file`'s bytes (a whole-blob download), evicting
    /// unused tasks if that makes room (blocking I/O). Returns the tasks evicted, also when
    /// the reservation failed after all. A filesystem that cannot reserve space
    /// (`EOPNOTSUPP`) is not an error: piece writes then report a full disk instead.
    pub fn reserve_disk(&self, file: &TaskFile) -> (Vec<TaskId>, Result<()>) {
        let data = match file.data_file() {
            Ok(d) => d,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let length = file.layout().length;
        let reserve = || rustix::fs::fallocate(&data, FallocateFlags::empty(), 0, length);
        let io = |e: Errno| Error::io(file.dir(), e.into());
        match reserve() {
            Ok(()) | Err(Errno::OPNOTSUPP) => return (Vec::new(), Ok(())),
            Err(e) if out_of_space(e) => {}
            Err(e) => return (Vec::new(), Err(io(e))),
        }
        // What the reservation still lacks: the file's length less what it already holds
        // (pieces stored earlier, or blocks a failed reservation left allocated).
        let held = data.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        let needed = length.saturating_sub(held);
        let evicted = match self.make_room(file.id(), needed, file.dir()) {
            Ok(evicted) => evicted,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let result = match reserve() {
            Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
            Err(e) if out_of_space(e) => Err(Error::DiskFull {
                task: file.id(),
                path: file.dir().to_path_buf(),
                needed,
            }),
            Err(e) => Err(io(e)),
        };
        (evicted, result)
    }
}
