//! The snapshotter operations containerd calls, over the metadata [`Store`], the directory
//! [`Layout`] and lazy mounts made by the [`Mounter`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{tonic, Info, Usage};
use parking_lot::Mutex;

use super::labels::{self, image_of};
use super::layout::{self, Layout};
use super::metrics::Metrics;
use super::remote::{self, LazyMount, Mounter};
use super::store::{Kind, Lazy, Record, Store};
use super::Options;
use crate::error::{Error, IoContext, Result, SnapshotCode};

pub struct Snapshotter {
    layout: Layout,
    mounter: Mounter,
    store: Mutex<Store>,
    /// Lazy mounts are made one at a time: two unpacks of one image then mount it once.
    lazy: tokio::sync::Mutex<()>,
    pub(super) metrics: Metrics,
}

impl Snapshotter {
    /// Opens the metadata under `opts.root` and brings back lazy mounts that are gone (after
    /// a reboot) or whose process died.
    pub fn open(opts: &Options, exe: PathBuf, registry: &prometheus::Registry) -> Result<Self> {
        let layout = Layout {
            root: opts.root.clone(),
            cache: opts.chunks.cache_dir.clone(),
        };
        for dir in [layout.snapshots(), layout.cache.clone()] {
            std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let store = Store::open(&layout.metadata())?;
        let s = Snapshotter {
            mounter: Mounter {
                exe,
                peer: opts.chunks.peer.clone(),
                insecure: opts.chunks.insecure.clone(),
                cache_size: opts.chunks.cache_size.0,
                prefetch: opts.chunks.prefetch,
                start_timeout: opts.mount_timeout,
            },
            layout,
            store: Mutex::new(store),
            lazy: tokio::sync::Mutex::new(()),
            metrics: Metrics::new(registry)?,
        };
        s.restore_mounts();
        s.metrics.observe(&s.store.lock());
        Ok(s)
    }

    fn restore_mounts(&self) {
        let lazy: Vec<(String, u64, String)> = self
            .store
            .lock()
            .iter()
            .filter_map(|(k, r)| match &r.lazy {
                Some(Lazy::Index { image, .. }) => Some((k.clone(), r.id, image.clone())),
                _ => None,
            })
            .collect();
        for (key, id, image) in lazy {
            let fs = self.layout.fs(id);
            let mounted = remote::is_mounted(&fs).unwrap_or(false);
            if mounted && remote::is_alive(&fs) {
                tracing::info!(snapshot = %key, %image, "lazy mount still served");
                continue;
            }
            if mounted {
                let _ = remote::unmount(&fs);
            }
            match self.mount_lazy(id, &image) {
                Ok(metrics) => {
                    let lazy = Lazy::Index {
                        image: image.clone(),
                        metrics: Some(metrics),
                    };
                    if let Err(e) = self.store.lock().set_lazy(&key, lazy) {
                        tracing::warn!(snapshot = %key, error = %e, "recording a remount");
                    }
                    tracing::info!(snapshot = %key, %image, "lazy mount restored");
                }
                Err(e) => {
                    tracing::error!(snapshot = %key, %image, error = %e, "restoring a lazy mount")
                }
            }
        }
    }

    fn mount_lazy(&self, id: u64, image: &str) -> Result<std::net::SocketAddr> {
        let cache = self.layout.chunk_cache(id);
        std::fs::create_dir_all(&cache).ctx(|| format!("creating {}", cache.display()))?;
        self.mounter.mount(&LazyMount {
            image,
            mountpoint: &self.layout.fs(id),
            cache_dir: &cache,
            log: &self.layout.mount_log(id),
        })
    }

    /// Prepare and View: a new active or view snapshot on `parent`, or, for a layer of a
    /// lazy image, the committed snapshot containerd will find instead of unpacking.
    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if let Some(role) = labels.get(labels::ROLE) {
            let role = role.clone();
            return self.create_lazy(&key, &parent, labels, &role).await;
        }
        let mut store = self.store.lock();
        let id = store.check_new(&key, &parent)?;
        let dirs = [self.layout.fs(id), self.layout.work(id)];
        for dir in &dirs {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let now = SystemTime::now();
        let record = Record {
            id,
            kind,
            parent,
            labels,
            created: now,
            updated: now,
            lazy: None,
        };
        if let Err(e) = store.insert(&key, record) {
            let _ = std::fs::remove_dir_all(self.layout.dir(id));
            return Err(e);
        }
        let mounts = self.mounts_of(&store, &key)?;
        self.metrics.observe(&store);
        Ok(mounts)
    }

    async fn create_lazy(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        role: &str,
    ) -> Result<Vec<Mount>> {
        let invalid = |reason: String| Error::snapshot(key, SnapshotCode::InvalidArgument, reason);
        let target = labels.get(labels::TARGET).cloned().ok_or_else(|| {
            invalid(format!(
                "a lazyfs layer needs the {} label; pull the image through CRI",
                labels::TARGET
            ))
        })?;
        let _one_at_a_time = self.lazy.lock().await;
        let id = {
            let store = self.store.lock();
            if store.contains(&target) {
                return Err(already_exists(&target));
            }
            let id = store.check_new(&target, parent)?;
            let below_index = store
                .ancestors_of_parent(parent)?
                .iter()
                .any(|r| matches!(r.lazy, Some(Lazy::Index { .. })));
            match role {
                "index" if below_index => {
                    return Err(invalid("a lazyfs index layer on top of another one".into()))
                }
                "data" if !below_index => {
                    return Err(invalid(
                        "a lazyfs data layer without its index layer".into(),
                    ))
                }
                "index" | "data" => {}
                other => return Err(invalid(format!("unknown lazyfs layer role {other:?}"))),
            }
            id
        };
        let fs = self.layout.fs(id);
        std::fs::create_dir_all(&fs).ctx(|| format!("creating {}", fs.display()))?;
        let lazy = if role == "index" {
            let image = image_of(&labels).map_err(invalid)?;
            let started = Instant::now();
            let mounted = tokio::task::block_in_place(|| self.mount_lazy(id, &image));
            self.metrics
                .mount_seconds
                .observe(started.elapsed().as_secs_f64());
            match mounted {
                Ok(metrics) => Lazy::Index {
                    image,
                    metrics: Some(metrics),
                },
                Err(e) => {
                    self.metrics.mount_failures.inc();
                    self.discard_files(id);
                    return Err(e);
                }
            }
        } else {
            Lazy::Data
        };
        let now = SystemTime::now();
        let record = Record {
            id,
            kind: Kind::Committed,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            lazy: Some(lazy),
        };
        let mut store = self.store.lock();
        if let Err(e) = store.insert(&target, record) {
            drop(store);
            self.discard(id, true);
            return Err(e);
        }
        self.metrics.observe(&store);
        tracing::info!(key, snapshot = %target, role, "lazy layer ready, no download");
        Err(already_exists(&target))
    }

    /// What every lazy layer holds (for the metrics of their mounts).
    pub(super) fn lazy_layers(&self) -> Vec<Lazy> {
        self.store
            .lock()
            .iter()
            .filter_map(|(_, r)| r.lazy.clone())
            .collect()
    }

    fn mounts_of(&self, store: &Store, key: &str) -> Result<Vec<Mount>> {
        let record = store.get(key)?;
        let ancestors = store.ancestors(key)?;
        Ok(layout::mounts(&self.layout, record, &ancestors))
    }

    /// Removes a snapshot's files: unmounts a lazy mount first.
    fn discard(&self, id: u64, lazy_index: bool) {
        if lazy_index {
            if let Err(e) = remote::unmount(&self.layout.fs(id)) {
                tracing::warn!(id, error = %e, "unmounting a lazy mount");
            }
        }
        self.discard_files(id);
    }

    fn discard_files(&self, id: u64) {
        for dir in [self.layout.dir(id), self.layout.chunk_cache(id)] {
            remove_dir(&dir);
        }
    }

    async fn remove(&self, key: String) -> Result<()> {
        let record = self.store.lock().check_remove(&key)?;
        let lazy_index = matches!(record.lazy, Some(Lazy::Index { .. }));
        if lazy_index {
            let fs = self.layout.fs(record.id);
            tokio::task::block_in_place(|| remote::unmount(&fs))?;
        }
        let mut store = self.store.lock();
        store.remove(&key)?;
        self.metrics.observe(&store);
        drop(store);
        self.discard(record.id, lazy_index);
        Ok(())
    }

    /// Removes directories and caches no snapshot owns (left by a crash between steps).
    async fn cleanup(&self) -> Result<()> {
        let owned: std::collections::HashSet<u64> =
            self.store.lock().iter().map(|(_, r)| r.id).collect();
        for base in [self.layout.snapshots(), self.layout.cache.clone()] {
            let entries = std::fs::read_dir(&base).ctx(|| format!("listing {}", base.display()))?;
            for e in entries.flatten() {
                let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                if !owned.contains(&id) {
                    let fs = e.path().join("fs");
                    let _ = tokio::task::block_in_place(|| remote::unmount(&fs));
                    remove_dir(&e.path());
                }
            }
        }
        Ok(())
    }

    fn info(key: &str, r: &Record) -> Info {
        Info {
            kind: match r.kind {
                Kind::View => containerd_snapshots::Kind::View,
                Kind::Active => containerd_snapshots::Kind::Active,
                Kind::Committed => containerd_snapshots::Kind::Committed,
            },
            name: key.to_string(),
            parent: r.parent.clone(),
            labels: r.labels.clone(),
            created_at: r.created,
            updated_at: r.updated,
        }
    }

    /// Runs one operation: counts it, and logs a failure once (what containerd gets back
    /// is the same message).
    async fn op<T>(
        &self,
        op: &'static str,
        key: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let out = f.await;
        let result = match &out {
            Ok(_) => "ok",
            Err(Error::Snapshot {
                code: SnapshotCode::AlreadyExists,
                ..
            }) if op == "prepare" || op == "view" => "exists",
            Err(e) => {
                tracing::warn!(op, key, error = %e, "snapshot operation failed");
                "error"
            }
        };
        self.metrics.record(op, result, started.elapsed());
        out
    }
}

fn already_exists(target: &str) -> Error {
    Error::snapshot(
        target,
        SnapshotCode::AlreadyExists,
        "already exists (lazy layer)",
    )
}

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a snapshot directory")
        }
        _ => {}
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Snapshot { code, .. } => match code {
                SnapshotCode::NotFound => tonic::Status::not_found(message),
                SnapshotCode::AlreadyExists => tonic::Status::already_exists(message),
                SnapshotCode::FailedPrecondition => tonic::Status::failed_precondition(message),
                SnapshotCode::InvalidArgument => tonic::Status::invalid_argument(message),
            },
            Error::Invalid(_) => tonic::Status::invalid_argument(message),
            _ => tonic::Status::internal(message),
        }
    }
}

type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info>>>;

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Snapshotter {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info> {
        self.op("stat", &key, async {
            let store = self.store.lock();
            Ok(Self::info(&key, store.get(&key)?))
        })
        .await
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        let key = info.name.clone();
        self.op("update", &key, async {
            let paths = fieldpaths.unwrap_or_default();
            let r = self.store.lock().update_labels(&key, info.labels, &paths)?;
            Ok(Self::info(&key, &r))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<Usage> {
        self.op("usage", &key, async {
            let record = self.store.lock().get(&key)?.clone();
            if record.lazy.is_some() {
                // The image's bytes live in the registry and the peer, not here.
                return Ok(Usage::default());
            }
            let fs = self.layout.fs(record.id);
            let (size, inodes) = tokio::task::block_in_place(|| layout::usage(&fs));
            Ok(Usage { inodes, size })
        })
        .await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        self.op("mounts", &key, async {
            self.mounts_of(&self.store.lock(), &key)
        })
        .await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let k = key.clone();
        self.op(
            "prepare",
            &k,
            self.create(Kind::Active, key, parent, labels),
        )
        .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let k = key.clone();
        self.op("view", &k, self.create(Kind::View, key, parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.op("commit", &key, async {
            let mut store = self.store.lock();
            store.commit(&name, &key, labels)?;
            self.metrics.observe(&store);
            Ok(())
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<()> {
        let k = key.clone();
        self.op("remove", &k, self.remove(key)).await
    }

    async fn clear(&self) -> Result<()> {
        self.op("cleanup", "", self.cleanup()).await
    }

    type InfoStream = InfoStream;

    async fn list(&self, _snapshotter: String, _filters: Vec<String>) -> Result<InfoStream> {
        // containerd filters on its own side; it asks the backend for everything.
        let infos: Vec<Result<Info>> = self
            .store
            .lock()
            .iter()
            .map(|(k, r)| Ok(Self::info(k, r)))
            .collect();
        Ok(futures::stream::iter(infos))
    }
}
