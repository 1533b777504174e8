//! The disk cache: one [`TaskFile`] per blob under `<data_dir>/tasks/`, a quota on the bytes
//! reserved by all of them, and least-recently-used eviction of whole blobs nobody is using.
//!
//! A task reserves its full length when created, so concurrent downloads cannot together
//! overrun the quota; "in use" means someone (a download, a reader, an upload) holds an `Arc`.
//! Pieces still arriving from a parent can be relayed to other peers ([`Relays`]). The quota
//! does not promise room on the disk itself: [`space`] reserves it and evicts when it runs
//! out.

mod recovery;
mod relay;
mod space;
mod task_file;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use shoal_common::{PieceLayout, TaskId};

use crate::error::{Error, Result};
pub use relay::{Relay, RelayWriter, Relays};
pub use task_file::{TaskFile, TaskMeta, TaskStatus};

/// Gauges and counters the storage keeps current (owned by the peer's metrics).
#[derive(Clone)]
pub struct StorageMetrics {
    pub used_bytes: IntGauge,
    pub evictions: IntCounter,
}

struct Entry {
    file: Arc<TaskFile>,
    last_used: u64,
}

struct Inner {
    tasks: HashMap<TaskId, Entry>,
    clock: u64,
    used: u64,
}

pub struct Storage {
    root: PathBuf,
    quota: u64,
    inner: Mutex<Inner>,
    metrics: StorageMetrics,
}

impl Storage {
    /// Opens (creating if needed) the cache under `data_dir`, loading every task found there.
    /// Unreadable task directories are removed: they hold nothing that can be trusted.
    pub fn open(data_dir: &Path, quota: u64, metrics: StorageMetrics) -> Result<Self> {
        let root = data_dir.join("tasks");
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
            let entry = entry.map_err(|e| Error::io(&root, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let loaded = TaskId::from_file_name(&name.to_string_lossy())
                .map_err(Error::from)
                .and_then(|id| {
                    let file = TaskFile::open(&path)?;
                    if file.id() != id {
                        return Err(Error::runtime(
                            path.display().to_string(),
                            format_args!("holds task {}", file.id()),
                        ));
                    }
                    Ok(file)
                });
            match loaded {
                Ok(file) => found.push((TaskFile::last_used(&path), file)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing unreadable cache entry");
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
        found.sort_by_key(|(t, _)| *t);
        let mut inner = Inner {
            tasks: HashMap::new(),
            clock: 0,
            used: 0,
        };
        for (_, file) in found {
            inner.clock += 1;
            inner.used += file.layout().length;
            inner.tasks.insert(
                file.id(),
                Entry {
                    file: Arc::new(file),
                    last_used: inner.clock,
                },
            );
        }
        let storage = Storage {
            root,
            quota,
            inner: Mutex::new(inner),
            metrics,
        };
        // The quota may have shrunk since the last run.
        storage.evict_until_fits(0, None)?;
        storage.publish();
        let tasks = storage.inner.lock().tasks.len();
        tracing::info!(tasks, used = storage.used(), quota, "cache loaded");
        Ok(storage)
    }

    fn task_dir(&self, id: &TaskId) -> PathBuf {
        self.root.join(id.file_name())
    }

    fn publish(&self) {
        self.metrics.used_bytes.set(self.used() as i64);
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn used(&self) -> u64 {
        self.inner.lock().used
    }

    /// The task, if cached; marks it recently used.
    pub fn get(&self, id: &TaskId) -> Option<Arc<TaskFile>> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.tasks.get_mut(id)?;
        entry.last_used = clock;
        Some(entry.file.clone())
    }

    /// Every cached task (for re-announcing).
    pub fn tasks(&self) -> Vec<Arc<TaskFile>> {
        self.inner
            .lock()
            .tasks
            .values()
            .map(|e| e.file.clone())
            .collect()
    }

    /// The cached task, or a new empty one with `layout`, after evicting least recently used
    /// unused tasks to make room. Returns the task and the ids evicted.
    pub fn get_or_create(
        &self,
        id: TaskId,
        url: &str,
        layout: PieceLayout,
    ) -> Result<(Arc<TaskFile>, Vec<TaskId>)> {
        if let Some(file) = self.get(&id) {
            if file.layout() == layout {
                return Ok((file, Vec::new()));
            }
            // A different layout (e.g. a supernode restart chose again): start over.
            self.remove(&id);
        }
        if layout.length > self.quota {
            return Err(Error::CacheFull {
                task: id,
                needed: layout.length,
                quota: self.quota,
                pinned: 0,
            });
        }
        let mut evicted = self.evict_until_fits(layout.length, Some(id))?;
        let dir = self.task_dir(&id);
        let meta = TaskMeta {
            task_id: id,
            url: url.to_owned(),
            layout,
        };
        let file = match TaskFile::create(&dir, meta.clone()) {
            Ok(file) => file,
            // Not even room for the task's metadata: make some, once.
            Err(e) if e.is_out_of_space() => {
                let _ = fs::remove_dir_all(&dir);
                evicted.extend(self.make_room(id, 0, &dir)?);
                TaskFile::create(&dir, meta).map_err(|e| {
                    let _ = fs::remove_dir_all(&dir);
                    match e.is_out_of_space() {
                        true => Error::DiskFull {
                            task: id,
                            path: dir.clone(),
                            needed: 0,
                        },
                        false => e,
                    }
                })?
            }
            Err(e) => return Err(e),
        };
        let file = Arc::new(file);
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let clock = inner.clock;
        if let Some(existing) = inner.tasks.get(&id) {
            // Another caller created it between our check and now: use theirs.
            let file = existing.file.clone();
            drop(inner);
            return Ok((file, evicted));
        }
        inner.used += layout.length;
        inner.tasks.insert(
            id,
            Entry {
                file: file.clone(),
                last_used: clock,
            },
        );
        drop(inner);
        self.publish();
        Ok((file, evicted))
    }

    /// Evicts unused tasks, least recently used first, until `extra` more bytes fit.
    fn evict_until_fits(&self, extra: u64, for_task: Option<TaskId>) -> Result<Vec<TaskId>> {
        let mut evicted = Vec::new();
        loop {
            let victim = {
                let mut inner = self.inner.lock();
                if inner.used + extra <= self.quota {
                    break;
                }
                let victim = inner
                    .tasks
                    .iter()
                    .filter(|(_, e)| Arc::strong_count(&e.file) == 1)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(id, _)| *id);
                match victim {
                    Some(id) => {
                        if let Some(e) = inner.tasks.remove(&id) {
                            inner.used -= e.file.layout().length;
                        }
                        id
                    }
                    None => {
                        let pinned = inner.used;
                        return Err(Error::CacheFull {
                            task: for_task.unwrap_or(TaskId::Url(shoal_common::Digest::of(b""))),
                            needed: extra,
                            quota: self.quota,
                            pinned,
                        });
                    }
                }
            };
            let dir = self.task_dir(&victim);
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(task = %victim, error = %e, "failed to delete evicted task");
            }
            tracing::info!(task = %victim, "evicted from cache");
            self.metrics.evictions.inc();
            evicted.push(victim);
        }
        self.publish();
        Ok(evicted)
    }

    /// Drops a task from the cache (its bytes turned out wrong, or it was evicted).
    pub fn remove(&self, id: &TaskId) {
        let removed = {
            let mut inner = self.inner.lock();
            let removed = inner.tasks.remove(id);
            if let Some(e) = &removed {
                inner.used -= e.file.layout().length;
            }
            removed
        };
        if removed.is_some() {
            let _ = fs::remove_dir_all(self.task_dir(id));
            self.publish();
        }
    }
}

/// Replaces `path` with `data` so that a crash leaves the old or the new content, never a
/// mix: written beside it, synced, then renamed over it. Blocking I/O.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::Digest;

    fn metrics() -> StorageMetrics {
        StorageMetrics {
            used_bytes: IntGauge::new("u", "u").unwrap(),
            evictions: IntCounter::new("e", "e").unwrap(),
        }
    }

    fn id(n: u8) -> TaskId {
        TaskId::Content(Digest::of(&[n]))
    }

    #[test]
    fn lru_eviction_respects_quota_and_pins() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PieceLayout::new(40_000, 4096).unwrap();
        let s = Storage::open(dir.path(), 100_000, metrics()).unwrap();
        let (a, _) = s.get_or_create(id(1), "u", layout).unwrap();
        drop(a);
        let (b, _) = s.get_or_create(id(2), "u", layout).unwrap();
        drop(b);
        s.get(&id(1)); // 1 is now more recent than 2
        let (c, evicted) = s.get_or_create(id(3), "u", layout).unwrap();
        assert_eq!(evicted, vec![id(2)]);
        assert!(s.used() <= 100_000);
        // Everything pinned: a new task cannot fit.
        let a = s.get(&id(1)).unwrap();
        let err = s.get_or_create(id(4), "u", layout).unwrap_err();
        assert!(matches!(err, Error::CacheFull { .. }));
        drop((a, c));
        // Larger than the whole quota.
        let huge = PieceLayout::new(200_000, 4096).unwrap();
        assert!(s.get_or_create(id(5), "u", huge).is_err());
    }

    #[test]
    fn reopen_keeps_tasks_and_drops_debris() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PieceLayout::new(4096, 4096).unwrap();
        {
            let s = Storage::open(dir.path(), 1 << 20, metrics()).unwrap();
            let (t, _) = s.get_or_create(id(1), "u", layout).unwrap();
            let p = vec![7u8; 4096];
            t.write_piece(0, &p, Digest::of(&p)).unwrap();
        }
        fs::create_dir_all(dir.path().join("tasks/garbage")).unwrap();
        fs::create_dir_all(dir.path().join("tasks").join(id(2).file_name())).unwrap();
        let s = Storage::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert!(s.get(&id(1)).unwrap().is_complete());
        assert!(s.get(&id(2)).is_none());
        assert!(!dir.path().join("tasks/garbage").exists());
    }
}
