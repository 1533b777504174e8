//! The download engine: turns "I want this blob" into a verified file in the cache, sharing one
//! download among all concurrent requesters of the same task, and lets readers stream it while
//! pieces are still arriving.
//!
//! - [`download`]: the per-task loop (schedule, fetch, report).
//! - [`memory`]: the budget for piece buffers shared by all downloads.
//! - [`piece`]: fetching and verifying one piece from parents or the origin.
//! - [`reporter`]: batching piece reports to the supernode.
//! - [`stream`]: reading a task in order as its pieces arrive.
//! - [`verify`]: the whole-blob digest, hashed in order while the pieces arrive.

mod download;
mod fetches;
mod memory;
mod piece;
mod reporter;
mod stream;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use reqwest::header::HeaderMap;
use shoal_common::{Digest, PieceLayout, TaskId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::error::{Error, Result};
use crate::metrics::PeerMetrics;
use crate::source::{HttpFetcher, Origin};
use crate::storage::{Storage, TaskFile};
use crate::supernode_client::SupernodeClient;
pub use memory::PieceMemory;
pub use reporter::{ReportItem, Reporter};
pub use stream::stream_range;

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub url: Url,
    /// When known, the blob's digest: it becomes the task id and is verified at the end.
    pub digest: Option<Digest>,
    /// Extra headers for the origin (credentials).
    pub headers: HeaderMap,
    /// The blob's length, when the caller already asked the origin (the mirror's `HEAD`):
    /// the first peers of a task then skip asking again before their first piece. Like the
    /// origin's own answer it is checked by the blob's digest at the end.
    pub length: Option<u64>,
}

pub struct EngineShared {
    pub storage: Arc<Storage>,
    pub client: Arc<SupernodeClient>,
    pub http: HttpFetcher,
    pub metrics: PeerMetrics,
    pub reporter: Reporter,
    pub concurrent_pieces: u32,
    /// Piece buffers of all downloads together.
    pub piece_memory: PieceMemory,
    /// Piece size for new tasks (bytes); 0 = automatic.
    pub piece_size: u64,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

type Ready = watch::Receiver<Option<std::result::Result<Arc<TaskFile>, String>>>;

#[derive(Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
    active: Arc<Mutex<HashMap<TaskId, Ready>>>,
}

impl Engine {
    pub fn new(shared: EngineShared) -> Self {
        Engine {
            shared: Arc::new(shared),
            active: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.shared.storage
    }

    /// Whether a download of `task` is running (or about to start) in this process.
    pub fn is_downloading(&self, task: &TaskId) -> bool {
        self.active.lock().contains_key(task)
    }

    /// Makes sure the blob is cached or being downloaded, and returns its file once its layout
    /// is known. Readers then follow it with [`stream_range`].
    pub async fn open(&self, req: DownloadRequest) -> Result<Arc<TaskFile>> {
        let task = TaskId::for_download(&req.url, req.digest);
        if let Some(file) = self.shared.storage.get(&task) {
            if file.is_complete() {
                file.touch();
                return Ok(file);
            }
        }
        let mut ready = {
            let mut active = self.active.lock();
            match active.get(&task) {
                Some(r) => r.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    active.insert(task, rx.clone());
                    let engine = self.clone();
                    self.shared.tracker.spawn(async move {
                        engine.download(task, req, tx).await;
                    });
                    rx
                }
            }
        };
        let outcome = ready
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| Error::Cancelled)?
            .clone();
        match outcome {
            Some(Ok(file)) => Ok(file),
            Some(Err(message)) => Err(Error::DownloadFailed { task, message }),
            None => Err(Error::Cancelled),
        }
    }

    async fn download(
        &self,
        task: TaskId,
        req: DownloadRequest,
        ready: watch::Sender<Option<std::result::Result<Arc<TaskFile>, String>>>,
    ) {
        let shared = &self.shared;
        shared.metrics.tasks_active.inc();
        let started = Instant::now();
        let mut file_for_failure = None;
        let result = async {
            let (file, origin, degraded) = self.prepare(task, &req).await?;
            file_for_failure = Some(file.clone());
            let _ = ready.send(Some(Ok(file.clone())));
            let ctx = Arc::new(piece::PieceContext {
                file: file.clone(),
                origin,
                http: shared.http.clone(),
                metrics: shared.metrics.clone(),
                reporter: shared.reporter.clone(),
                avoid: download::new_avoid_set(),
            });
            download::run(shared.clone(), ctx, degraded).await?;
            if task.content_digest().is_some() {
                // Readers holding back a blob's last bytes wait for this (see the mirror).
                let f = file.clone();
                let marked = tokio::task::spawn_blocking(move || f.mark_verified()).await;
                if let Ok(Err(e)) = marked {
                    tracing::warn!(%task, error = %e, "could not record the verification");
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        shared.metrics.tasks_active.dec();
        match result {
            Ok(()) => {
                shared.metrics.downloads.with_label_values(&["ok"]).inc();
                shared
                    .metrics
                    .download_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(%task, elapsed = ?started.elapsed(), "download complete");
            }
            Err(e) => {
                shared
                    .metrics
                    .downloads
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(%task, error = %e, "download failed");
                let message = e.to_string();
                if let Some(file) = &file_for_failure {
                    file.set_failed(message.clone());
                    if matches!(e, Error::BlobDigest { .. }) {
                        shared.storage.remove(&task);
                    }
                }
                let _ = ready.send(Some(Err(message)));
            }
        }
        self.active.lock().remove(&task);
    }

    /// Learns the layout (from the supernode, else from the origin), reserves the cache entry
    /// and registers. Returns whether to run without the supernode.
    async fn prepare(
        &self,
        task: TaskId,
        req: &DownloadRequest,
    ) -> Result<(Arc<TaskFile>, Origin, bool)> {
        let shared = &self.shared;
        let origin = Origin::new(req.url.clone(), req.headers.clone(), shared.http.clone());
        let mut degraded = false;
        let known = match shared.client.task_info(&task).await {
            Ok(info) => info.map(|i| i.layout),
            Err(e) => {
                shared.metrics.supernode_errors.inc();
                tracing::warn!(%task, error = %e, "supernode unreachable: downloading from the origin alone");
                degraded = true;
                None
            }
        };
        let layout = match known {
            Some(l) => {
                l.validate()?;
                l
            }
            None => {
                let length = match req.length {
                    Some(length) => length,
                    None => origin.probe_length().await?,
                };
                match shared.piece_size {
                    0 => PieceLayout::for_length(length),
                    size => PieceLayout::new(length, size).map_err(|e| {
                        Error::BadRequest(format!("piece size {size} for task {task}: {e}"))
                    })?,
                }
            }
        };
        let origin = origin.with_length(layout.length);
        let (file, evicted) = shared
            .storage
            .get_or_create(task, req.url.as_str(), layout)?;
        for old in evicted {
            let client = shared.client.clone();
            shared.tracker.spawn(async move {
                let _ = client.leave_task(&old).await;
            });
        }
        file.clear_failed();
        if !degraded {
            if let Err(e) = download::register(shared, &file).await {
                shared.metrics.supernode_errors.inc();
                if let Error::Supernode {
                    unknown_peer: true, ..
                } = e
                {
                    shared.client.announce().await.ok();
                    degraded = download::register(shared, &file).await.is_err();
                } else {
                    tracing::warn!(%task, error = %e, "register failed: downloading from the origin alone");
                    degraded = true;
                }
            }
        }
        Ok((file, origin, degraded))
    }

    /// Re-registers every cached task with the supernode (after a restart or when the
    /// supernode forgot us), so other peers can fetch from this cache.
    pub async fn announce_cache(&self) {
        for file in self.shared.storage.tasks() {
            if file.have().count() == 0 {
                continue;
            }
            if let Err(e) = download::register(&self.shared, &file).await {
                tracing::warn!(task = %file.id(), error = %e, "re-announcing cached task failed");
            }
        }
    }
}
