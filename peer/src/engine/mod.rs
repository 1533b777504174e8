//! The download engine: turns "I want this blob" into a verified file in the cache, sharing one
//! download among all concurrent requesters of the same task, and lets readers stream it while
//! pieces are still arriving.
//!
//! - [`avoid`]: the parents a download gives up on, for good or for a while.
//! - [`demand`]: what readers want of a download: the whole blob, or the pieces under their
//!   ranges (a sparse task), most urgent first.
//! - [`download`]: the per-task loop (schedule, fetch, report).
//! - [`memory`]: memory budgets: piece buffers of all downloads, chunks on their way to readers.
//! - [`piece`]: fetching and verifying one piece from parents or the origin.
//! - [`reporter`]: batching piece reports to the supernode.
//! - [`stream`]: reading a task in order as its pieces arrive.
//! - [`verify`]: the whole-blob digest, hashed in order while the pieces arrive.

mod avoid;
mod demand;
mod download;
mod fetches;
mod memory;
mod piece;
mod reporter;
mod stream;
mod verify;

use std::collections::HashMap;
use std::ops::Range;
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
use crate::source::{AuthPool, HttpFetcher, Origin, OriginAuth};
use crate::storage::{Storage, TaskFile};
use crate::supernode_client::SupernodeClient;
use demand::Demand;
pub use memory::MemoryBudget;
pub use reporter::{ReportItem, Reporter};
pub use stream::{byte_ready, stream_range};

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub url: Url,
    /// When known, the blob's digest: it becomes the task id and is verified at the end.
    pub digest: Option<Digest>,
    /// Extra headers for the origin (credentials).
    pub headers: HeaderMap,
    /// Renews the origin's `Authorization` when it is refused (a token expiring during a
    /// long download). Every requester of a shared download hands in its own; the download
    /// goes on with the next that works ([`AuthPool`]). None at all: a refusal ends it.
    pub auth: Option<Arc<dyn OriginAuth>>,
    /// The blob's length, when the caller already asked the origin (the mirror's `HEAD`):
    /// the first peers of a task then skip asking again before their first piece. Like the
    /// origin's own answer it is checked by the blob's digest at the end.
    pub length: Option<u64>,
    /// The blob's media type, when the caller knows it (from a manifest): blobs read by range
    /// get small pieces ([`PieceLayout::for_blob`]).
    pub media_type: Option<String>,
}

pub struct EngineShared {
    pub storage: Arc<Storage>,
    pub client: Arc<SupernodeClient>,
    /// For the origin.
    pub http: HttpFetcher,
    /// For parents: a short connect timeout and stall detection (see [`crate::source::Liveness`]).
    pub parent_http: HttpFetcher,
    pub metrics: PeerMetrics,
    pub reporter: Reporter,
    pub concurrent_pieces: u32,
    /// Piece buffers of all downloads together.
    pub piece_memory: MemoryBudget,
    /// Chunks on their way to clients and peers ([`stream_range`]), all readers together.
    pub send_memory: MemoryBudget,
    /// Piece size for new tasks (bytes); 0 = automatic.
    pub piece_size: u64,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl EngineShared {
    /// Tells the supernode that this peer no longer holds the evicted tasks.
    pub(super) fn forget(&self, evicted: Vec<TaskId>) {
        for old in evicted {
            let client = self.client.clone();
            self.tracker.spawn(async move {
                let _ = client.leave_task(&old).await;
            });
        }
    }

    /// After a piece write of `file` ran out of space: makes `needed` bytes of room (what
    /// its download still needs), evicting unused tasks. `Err(DiskFull)` when impossible.
    pub(super) async fn make_room(&self, file: &Arc<TaskFile>, needed: u64) -> Result<()> {
        let (storage, task, dir) = (self.storage.clone(), file.id(), file.dir().to_path_buf());
        let evicted = tokio::task::spawn_blocking(move || storage.make_room(task, needed, &dir))
            .await
            .map_err(|e| Error::io(file.dir(), std::io::Error::other(e)))??;
        self.forget(evicted);
        Ok(())
    }
}

/// The download's file once its layout is known, or why it failed (shared by its waiters).
type Outcome = Option<std::result::Result<Arc<TaskFile>, Arc<Error>>>;
type Ready = watch::Receiver<Outcome>;

/// A download running in this process: readers wait on `ready` for its file and tell it what
/// they want through `demand`.
#[derive(Clone)]
struct Active {
    ready: Ready,
    demand: Arc<Demand>,
    /// The credentials of everyone who asked for it: a refusal of one is not the end.
    auths: Arc<AuthPool>,
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
    active: Arc<Mutex<HashMap<TaskId, Active>>>,
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

    /// The send budget every [`stream_range`] of this peer reads within.
    pub fn send_memory(&self) -> MemoryBudget {
        self.shared.send_memory.clone()
    }

    /// Whether a download of `task` is running (or about to start) in this process.
    pub fn is_downloading(&self, task: &TaskId) -> bool {
        self.active.lock().contains_key(task)
    }

    /// Makes sure the whole blob is cached or being downloaded, and returns its file once its
    /// layout is known. Readers then follow it with [`stream_range`].
    pub async fn open(&self, req: DownloadRequest) -> Result<Arc<TaskFile>> {
        let task = TaskId::for_download(&req.url, req.digest);
        if let Some(file) = self.complete(&task) {
            return Ok(file);
        }
        loop {
            let active = self.join(task, &req, true);
            if active.demand.want_whole().is_ok() {
                return self.ready(task, active.ready).await;
            }
        }
    }

    /// The blob's file for reading ranges of it, without downloading anything yet: its layout
    /// (and length) is known once this returns. Ask for the bytes with [`Engine::want`].
    pub async fn open_sparse(&self, req: &DownloadRequest) -> Result<Arc<TaskFile>> {
        let task = TaskId::for_download(&req.url, req.digest);
        if let Some(file) = self.complete(&task) {
            return Ok(file);
        }
        let active = self.join(task, req, false);
        self.ready(task, active.ready).await
    }

    /// Fetches the pieces under `range` of `file` (from [`Engine::open_sparse`]) first, and
    /// only those unless someone wants the whole blob. Returns at once: readers follow the
    /// pieces with [`stream_range`].
    pub async fn want(
        &self,
        req: &DownloadRequest,
        file: &Arc<TaskFile>,
        range: Range<u64>,
    ) -> Result<()> {
        let layout = file.layout();
        let pieces: Vec<u32> = layout.pieces_for(range).collect();
        let (held, missing): (Vec<u32>, Vec<u32>) =
            pieces.into_iter().partition(|&p| file.has_piece(p));
        let held_bytes: u64 = held
            .iter()
            .filter_map(|&p| layout.range(p))
            .map(|r| r.end - r.start)
            .sum();
        self.shared
            .metrics
            .range_bytes
            .with_label_values(&["cache"])
            .inc_by(held_bytes);
        if missing.is_empty() {
            return Ok(());
        }
        let task = file.id();
        loop {
            let active = self.join(task, req, false);
            let current = self.ready(task, active.ready.clone()).await?;
            if !Arc::ptr_eq(&current, file) {
                // The cache entry was replaced (evicted, or a new layout): the reader must
                // start again with the new file.
                return Err(Error::DownloadFailed {
                    task,
                    message: "the cached blob changed while it was being read".into(),
                });
            }
            if active.demand.want(missing.iter().copied()).is_ok() {
                return Ok(());
            }
        }
    }

    fn complete(&self, task: &TaskId) -> Option<Arc<TaskFile>> {
        let file = self.shared.storage.get(task).filter(|f| f.is_complete())?;
        file.touch();
        Some(file)
    }

    /// The running download of `task`, or a new one (wanting the whole blob when `whole`).
    fn join(&self, task: TaskId, req: &DownloadRequest, whole: bool) -> Active {
        let mut active = self.active.lock();
        if let Some(a) = active.get(&task).filter(|a| !a.demand.is_retired()) {
            a.auths.add(req.auth.as_ref());
            return a.clone();
        }
        let (tx, rx) = watch::channel(None);
        let entry = Active {
            ready: rx,
            demand: Arc::new(Demand::new(whole)),
            auths: Arc::new(AuthPool::new(req.auth.clone())),
        };
        active.insert(task, entry.clone());
        let engine = self.clone();
        let (demand, auths) = (entry.demand.clone(), entry.auths.clone());
        let req = req.clone();
        self.shared.tracker.spawn(async move {
            engine.download(task, req, auths, tx, demand).await;
        });
        entry
    }

    async fn ready(&self, task: TaskId, mut ready: Ready) -> Result<Arc<TaskFile>> {
        let outcome = ready
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| Error::Cancelled)?
            .clone();
        match outcome {
            Some(Ok(file)) => Ok(file),
            Some(Err(e)) => Err(e.for_waiter(task)),
            None => Err(Error::Cancelled),
        }
    }

    async fn download(
        &self,
        task: TaskId,
        req: DownloadRequest,
        auths: Arc<AuthPool>,
        ready: watch::Sender<Outcome>,
        demand: Arc<Demand>,
    ) {
        let shared = &self.shared;
        shared.metrics.tasks_active.inc();
        let started = Instant::now();
        let mut file_for_failure = None;
        let result = async {
            let (file, origin, degraded) = self.prepare(task, &req, auths).await?;
            file_for_failure = Some(file.clone());
            if demand.is_whole() {
                // Before any byte is fetched: a disk without room fails the download now.
                self.reserve_disk(&file).await?;
            }
            let _ = ready.send(Some(Ok(file.clone())));
            let ctx = Arc::new(piece::PieceContext {
                file: file.clone(),
                origin,
                http: shared.parent_http.clone(),
                metrics: shared.metrics.clone(),
                reporter: shared.reporter.clone(),
                avoid: Default::default(),
                demand: demand.clone(),
                shared: shared.clone(),
            });
            let finished = download::run(shared.clone(), ctx, degraded).await?;
            if finished == download::Finished::Idle {
                return Ok(false);
            }
            if task.content_digest().is_some() {
                // Readers holding back a blob's last bytes wait for this (see the mirror).
                let f = file.clone();
                let marked = tokio::task::spawn_blocking(move || f.mark_verified()).await;
                if let Ok(Err(e)) = marked {
                    tracing::warn!(%task, error = %e, "could not record the verification");
                }
            }
            Ok::<bool, Error>(true)
        }
        .await;
        if let Err(Error::DiskFull { .. }) = &result {
            // Drop the task: its file holds space the disk lacks (a partial reservation
            // included), and its stored pieces, though verified, matter less than room. The
            // supernode hears it before a new download of the task can register again
            // (retiring the demand allows that), or it would send peers here for them.
            shared.storage.remove(&task);
            if let Err(e) = shared.client.leave_task(&task).await {
                tracing::debug!(%task, error = %e, "could not leave the dropped task");
            }
        } else if let Some(file) = file_for_failure.clone() {
            // What this download stored is believed after a restart without being read again
            // (a complete task was flushed already: then this costs nothing).
            let flushed = tokio::task::spawn_blocking(move || file.checkpoint()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(%task, error = %e, "could not flush the task's pieces");
            }
        }
        shared.metrics.tasks_active.dec();
        demand.retire();
        match result {
            Ok(false) => {
                tracing::debug!(%task, elapsed = ?started.elapsed(), "sparse download idle: pieces kept");
            }
            Ok(true) => {
                shared.metrics.downloads.with_label_values(&["ok"]).inc();
                shared
                    .metrics
                    .download_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(%task, elapsed = ?started.elapsed(), "download complete");
            }
            Err(e) => {
                let disk_full = matches!(e, Error::DiskFull { .. });
                shared
                    .metrics
                    .downloads
                    .with_label_values(&[if disk_full { "disk_full" } else { "failed" }])
                    .inc();
                if let Error::DiskFull { path, .. } = &e {
                    // Once per download (it is not retried); the path is for the operator.
                    tracing::error!(%task, path = %path.display(), error = %e, "download failed");
                } else {
                    tracing::warn!(%task, error = %e, "download failed");
                }
                let e = Arc::new(e);
                if let Some(file) = &file_for_failure {
                    file.set_failed(e.clone());
                    if matches!(*e, Error::BlobDigest { .. }) {
                        shared.storage.remove(&task);
                    }
                }
                let _ = ready.send(Some(Err(e)));
            }
        }
        let mut active = self.active.lock();
        // A new download may have taken the entry since this one retired.
        if active
            .get(&task)
            .is_some_and(|a| Arc::ptr_eq(&a.demand, &demand))
        {
            active.remove(&task);
        }
    }

    /// Learns the layout (from the supernode, else from the origin), reserves the cache entry
    /// and registers. Returns whether to run without the supernode.
    async fn prepare(
        &self,
        task: TaskId,
        req: &DownloadRequest,
        auths: Arc<AuthPool>,
    ) -> Result<(Arc<TaskFile>, Origin, bool)> {
        let shared = &self.shared;
        let origin = Origin::new(req.url.clone(), req.headers.clone(), shared.http.clone())
            .with_auth(Some(auths as Arc<dyn OriginAuth>));
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
        // What the cache holds of the blob keeps its layout when the supernode has none (a
        // restart): pieces already verified are worth more than a fresh choice.
        let cached = || shared.storage.get(&task).map(|f| f.layout());
        let layout = match known.or_else(cached) {
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
                    0 => PieceLayout::for_blob(length, req.media_type.as_deref()),
                    size => PieceLayout::new(length, size).map_err(|e| {
                        Error::BadRequest(format!("piece size {size} for task {task}: {e}"))
                    })?,
                }
            }
        };
        let mut file = self.cache_entry(task, req, layout)?;
        if !degraded {
            let mut registered = download::register(shared, &file).await;
            if let Err(Error::LayoutConflict { theirs, .. }) = &registered {
                // Another peer registered the task first, with its own choice of layout
                // (both asked before either registered): take theirs unless this file
                // already holds pieces.
                if file.have().count() == 0 && theirs.validate().is_ok() {
                    tracing::info!(%task, layout = ?theirs, "taking the supernode's layout");
                    shared.storage.remove(&task);
                    file = self.cache_entry(task, req, *theirs)?;
                    registered = download::register(shared, &file).await;
                }
            }
            if let Err(e) = registered {
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
        let origin = origin.with_length(file.layout().length);
        Ok((file, origin, degraded))
    }

    /// The cache entry for `task` with `layout` (evicting others to make room).
    fn cache_entry(
        &self,
        task: TaskId,
        req: &DownloadRequest,
        layout: PieceLayout,
    ) -> Result<Arc<TaskFile>> {
        let shared = &self.shared;
        let (file, evicted) = shared
            .storage
            .get_or_create(task, req.url.as_str(), layout)?;
        self.shared.forget(evicted);
        file.clear_failed();
        Ok(file)
    }

    /// Reserves the disk space of a whole-blob download (see `Storage::reserve_disk`).
    async fn reserve_disk(&self, file: &Arc<TaskFile>) -> Result<()> {
        let (storage, f) = (self.shared.storage.clone(), file.clone());
        let (evicted, reserved) = tokio::task::spawn_blocking(move || storage.reserve_disk(&f))
            .await
            .map_err(|e| Error::io(file.dir(), std::io::Error::other(e)))?;
        self.shared.forget(evicted);
        reserved
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
