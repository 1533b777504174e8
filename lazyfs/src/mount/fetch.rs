//! Getting verified chunk bytes: memory cache → disk cache → one HTTP range request per run
//! of adjacent missing chunks (at most `max_run` bytes), tried on each source in turn (the
//! peer mirror, then the registry unless `--no-fallback`) with bounded retries.
//!
//! Single flight: while a run is being fetched, its chunks are registered in `inflight`;
//! a concurrent reader needing one of them awaits that run instead of fetching again. Runs
//! are spawned as their own tasks so they complete even if no reader waits any more.
//!
//! Every chunk is verified (sha256 of its decompressed bytes and its size) before it is
//! cached or returned; a chunk that no source delivers intact is an error, never data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use super::cache::{ChunkBytes, ChunkCache};
use super::metrics::Metrics;
use super::sequential::{BlobOrder, Detector};
use super::source::HttpSource;
use crate::error::{Error, Result};
use crate::index::{BlobRun, Chunk, FileChunk, Index};

/// A fetch failure shared by every reader that waited for the run.
pub type SharedError = Arc<Error>;
type RunResult = Arc<Vec<(u32, std::result::Result<ChunkBytes, SharedError>)>>;
type SharedRun = Shared<BoxFuture<'static, RunResult>>;

pub struct FetchOptions {
    /// Attempts per source after the first, for retryable failures.
    pub retries: u32,
    /// Largest merged range request.
    pub max_run: u64,
    /// Largest window of following blob chunks fetched along on a sequential walk
    /// ([`super::sequential`]; 0: off).
    pub blob_readahead: u64,
}

pub struct Fetcher {
    index: Arc<Index>,
    sources: Vec<HttpSource>,
    opts: FetchOptions,
    cache: Arc<ChunkCache>,
    metrics: Metrics,
    inflight: Mutex<HashMap<u32, (u64, SharedRun)>>,
    next_run: AtomicU64,
    /// On-demand reads in progress; the prefetcher yields while this is non-zero.
    demand: AtomicUsize,
    /// Per chunk: the first file inode using it (for error messages).
    owner: Vec<u32>,
    order: BlobOrder,
    detector: Detector,
}

/// Counts an on-demand read as in progress while alive.
pub struct DemandGuard<'a>(&'a AtomicUsize);

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Fetcher {
    pub fn new(
        index: Arc<Index>,
        sources: Vec<HttpSource>,
        opts: FetchOptions,
        cache: Arc<ChunkCache>,
        metrics: Metrics,
    ) -> Self {
        let mut owner = vec![u32::MAX; index.chunks.len()];
        for (ino, inode) in index.inodes.iter().enumerate() {
            for pos in inode.chunks.start..inode.chunks.end {
                let chunk = index.file_chunks.get(pos as usize).copied();
                if let Some(slot) = chunk.and_then(|c| owner.get_mut(c as usize)) {
                    if *slot == u32::MAX {
                        *slot = ino as u32;
                    }
                }
            }
        }
        Fetcher {
            owner,
            order: BlobOrder::new(&index),
            detector: Detector::new(opts.blob_readahead),
            index,
            sources,
            opts,
            cache,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(0),
            demand: AtomicUsize::new(0),
        }
    }

    pub fn demand_guard(&self) -> DemandGuard<'_> {
        self.demand.fetch_add(1, Ordering::Relaxed);
        DemandGuard(&self.demand)
    }

    pub fn demand_active(&self) -> bool {
        self.demand.load(Ordering::Relaxed) > 0
    }

    fn chunk(&self, id: u32) -> std::result::Result<&Chunk, SharedError> {
        self.index
            .chunks
            .get(id as usize)
            .ok_or_else(|| Arc::new(Error::index(format!("chunk #{id}"), "out of range")))
    }

    /// The decompressed bytes of each chunk of `wanted`, in order.
    pub async fn get(
        self: &Arc<Self>,
        wanted: &[FileChunk],
    ) -> std::result::Result<Vec<ChunkBytes>, SharedError> {
        self.get_ahead(wanted, &[]).await
    }

    /// The chunks of `wanted` when every one is cached (memory or disk), `None` as soon as
    /// one would have to be fetched. Blocking (disk reads): meant for the FUSE thread, so a
    /// warm read is answered without a hop through the runtime. Hits are counted only when
    /// the whole read is local, so the async path that follows a `None` counts them once.
    pub fn get_local(&self, wanted: &[FileChunk]) -> Option<Vec<ChunkBytes>> {
        let digests: Vec<(shoal_common::Digest, u32)> = wanted
            .iter()
            .map(|fc| self.chunk(fc.chunk).ok().map(|c| (c.digest, c.usize)))
            .collect::<Option<_>>()?;
        if !digests.iter().all(|(d, _)| self.cache.holds(d)) {
            return None;
        }
        digests
            .iter()
            .map(|(d, u)| {
                self.cache
                    .get_memory(d)
                    .or_else(|| self.cache.get_disk(d, *u))
            })
            .collect()
    }

    /// Like [`Fetcher::get`]; when something must be fetched, the missing chunks of `ahead`
    /// (the file's next chunks: readahead) join the same range requests, without being
    /// waited for.
    pub async fn get_ahead(
        self: &Arc<Self>,
        wanted: &[FileChunk],
        ahead: &[FileChunk],
    ) -> std::result::Result<Vec<ChunkBytes>, SharedError> {
        let mut out: Vec<Option<ChunkBytes>> = vec![None; wanted.len()];
        let mut missing = Vec::new();
        for (i, fc) in wanted.iter().enumerate() {
            let c = self.chunk(fc.chunk)?;
            match (self.cache.get_memory(&c.digest), out.get_mut(i)) {
                (Some(b), Some(slot)) => *slot = Some(b),
                _ => missing.push(i),
            }
        }
        if missing.is_empty() {
            return collect(out, wanted);
        }
        let mut ahead: Vec<FileChunk> = ahead
            .iter()
            .filter(|fc| {
                self.chunk(fc.chunk)
                    .is_ok_and(|c| !self.cache.contains_memory(&c.digest))
            })
            .copied()
            .collect();
        if self.cache.has_disk() {
            // Position in `out` for wanted chunks, `None` for readahead chunks.
            let mut lookups = Vec::new();
            for &i in &missing {
                if let Some(fc) = wanted.get(i) {
                    let c = self.chunk(fc.chunk)?;
                    lookups.push((Some(i), fc.chunk, c.digest, c.usize));
                }
            }
            for fc in &ahead {
                let c = self.chunk(fc.chunk)?;
                lookups.push((None, fc.chunk, c.digest, c.usize));
            }
            let cache = self.cache.clone();
            let found = tokio::task::spawn_blocking(move || {
                lookups
                    .into_iter()
                    .filter_map(|(i, id, d, u)| cache.get_disk(&d, u).map(|b| (i, id, b)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (i, id, b) in found {
                match i.and_then(|i| out.get_mut(i)) {
                    Some(slot) => *slot = Some(b),
                    None => ahead.retain(|fc| fc.chunk != id),
                }
            }
            missing.retain(|&i| out.get(i).is_some_and(Option::is_none));
        }
        if !missing.is_empty() {
            self.metrics.cache_misses.inc_by(missing.len() as u64);
            self.add_blob_ahead(wanted, &missing, &mut ahead);
            for (i, b) in self.fetch_missing(wanted, &missing, &ahead).await? {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(b);
                }
            }
        }
        collect(out, wanted)
    }

    /// On a sequential miss, the blob chunks after the read (and its file readahead) that
    /// are not cached yet join `ahead`.
    fn add_blob_ahead(&self, wanted: &[FileChunk], missing: &[usize], ahead: &mut Vec<FileChunk>) {
        let first = missing.first().and_then(|&i| wanted.get(i));
        let anchor = ahead.last().or(wanted.last());
        let (Some(first), Some(anchor)) = (first, anchor) else {
            return;
        };
        let (Ok(first_c), Ok(anchor_c)) = (self.chunk(first.chunk), self.chunk(anchor.chunk))
        else {
            return;
        };
        let window = self.detector.on_miss(first_c, anchor_c);
        if window == 0 {
            return;
        }
        for id in self.order.following(&self.index, anchor.chunk, window) {
            let known = ahead.iter().chain(wanted).any(|fc| fc.chunk == id);
            if !known && self.chunk(id).is_ok_and(|c| !self.cache.holds(&c.digest)) {
                // Not part of the file being read: its file offset is never used.
                ahead.push(FileChunk {
                    chunk: id,
                    file_offset: 0,
                });
            }
        }
    }

    /// Join or start the runs covering `missing` (positions in `wanted`) plus `ahead`, and
    /// wait for the ones holding `missing`.
    async fn fetch_missing(
        self: &Arc<Self>,
        wanted: &[FileChunk],
        missing: &[usize],
        ahead: &[FileChunk],
    ) -> std::result::Result<Vec<(usize, ChunkBytes)>, SharedError> {
        let mut waits: Vec<(usize, u32, SharedRun)> = Vec::new();
        let mut got = Vec::with_capacity(missing.len());
        {
            let mut inflight = self.inflight.lock();
            let mut to_fetch: Vec<FileChunk> = Vec::new();
            let mut ready = Vec::new();
            let candidates = missing
                .iter()
                .filter_map(|&i| wanted.get(i).map(|fc| (Some(i), fc)))
                .chain(ahead.iter().map(|fc| (None, fc)));
            for (i, fc) in candidates {
                if inflight.contains_key(&fc.chunk) || to_fetch.iter().any(|f| f.chunk == fc.chunk)
                {
                    continue;
                }
                // A run may have finished since the cache lookup.
                let cached = self
                    .chunk(fc.chunk)
                    .ok()
                    .and_then(|c| self.cache.peek_memory(&c.digest));
                match (cached, i) {
                    (Some(b), Some(i)) => ready.push((i, b)),
                    (Some(_), None) => {}
                    (None, _) => to_fetch.push(*fc),
                }
            }
            for run in self.index.blob_runs(&to_fetch, self.opts.max_run) {
                let id = self.next_run.fetch_add(1, Ordering::Relaxed);
                let ids: Vec<u32> = run.chunks.iter().map(|c| c.chunk).collect();
                let this = self.clone();
                let handle = tokio::spawn(async move { this.fetch_run(id, run).await });
                let this = self.clone();
                let shared = async move {
                    handle.await.unwrap_or_else(|_| {
                        // The task panicked before unregistering its run: do it here so
                        // later reads start a new fetch instead of reusing this failure.
                        this.unregister(id);
                        RunResult::default()
                    })
                }
                .boxed()
                .shared();
                for c in ids {
                    inflight.insert(c, (id, shared.clone()));
                }
            }
            for &i in missing {
                let Some(fc) = wanted.get(i) else { continue };
                if let Some((_, s)) = inflight.get(&fc.chunk) {
                    waits.push((i, fc.chunk, s.clone()));
                } else if let Some(b) = ready.iter().find(|(j, _)| *j == i).map(|(_, b)| b.clone())
                {
                    got.push((i, b));
                }
            }
        }
        for (i, chunk, run) in waits {
            let result = run.await;
            match result.iter().find(|(c, _)| *c == chunk) {
                Some((_, Ok(b))) => got.push((i, b.clone())),
                Some((_, Err(e))) => return Err(e.clone()),
                None => {
                    return Err(Arc::new(Error::Invalid(format!(
                        "fetch task for chunk #{chunk} ended without a result"
                    ))))
                }
            }
        }
        Ok(got)
    }

    /// Fetch one run from the sources in turn; cache what verifies.
    async fn fetch_run(self: Arc<Self>, id: u64, run: BlobRun) -> RunResult {
        let mut results = Vec::new();
        let mut pending: Vec<FileChunk> = run.chunks.clone();
        let mut last_err: Option<Error> = None;
        let blob = self.index.blobs.get(run.blob as usize).map(|b| b.digest);
        if let Some(blob) = blob {
            let n = self.sources.len();
            for (si, src) in self.sources.iter().enumerate() {
                if pending.is_empty() {
                    break;
                }
                if src.is_down() && si + 1 < n {
                    continue;
                }
                pending = self
                    .try_source(src, &blob, pending, &mut results, &mut last_err)
                    .await;
            }
        }
        let err =
            Arc::new(last_err.unwrap_or_else(|| Error::Invalid("no source to fetch from".into())));
        for fc in pending {
            tracing::warn!(chunk = fc.chunk, error = %err, "every source failed");
            results.push((fc.chunk, Err(err.clone())));
        }
        // Cache successes: memory now, disk in the background. The memory tier may refuse
        // or soon evict a chunk (moka admits by frequency), so the run stays registered as
        // in flight, its bytes available to late readers, until the disk holds them too:
        // otherwise a reader arriving in between would fetch the chunk a second time.
        let mut to_disk = Vec::new();
        for (c, r) in &results {
            if let (Ok(b), Ok(chunk)) = (r, self.chunk(*c)) {
                self.cache.insert_memory(chunk.digest, b.clone());
                to_disk.push((chunk.digest, b.clone()));
            }
        }
        if self.cache.has_disk() && !to_disk.is_empty() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                for (d, b) in to_disk {
                    this.cache.insert_disk(&d, &b);
                }
                this.unregister(id);
            });
        } else {
            self.unregister(id);
        }
        Arc::new(results)
    }

    fn unregister(&self, run: u64) {
        self.inflight.lock().retain(|_, (run_id, _)| *run_id != run);
    }

    /// One source, with retries. Returns the chunks still missing afterwards.
    async fn try_source(
        &self,
        src: &HttpSource,
        blob: &shoal_common::Digest,
        pending: Vec<FileChunk>,
        results: &mut Vec<(u32, std::result::Result<ChunkBytes, SharedError>)>,
        last_err: &mut Option<Error>,
    ) -> Vec<FileChunk> {
        let label = src.kind.label();
        // The pending chunks are part of one contiguous run: fetch their span.
        let spans: Vec<(u64, u64)> = pending
            .iter()
            .filter_map(|fc| self.chunk(fc.chunk).ok().map(|c| (c.offset, c.end())))
            .collect();
        let (Some(start), Some(end)) = (
            spans.iter().map(|s| s.0).min(),
            spans.iter().map(|s| s.1).max(),
        ) else {
            return pending;
        };
        for attempt in 0..=self.opts.retries {
            self.metrics
                .fetch_requests
                .with_label_values(&[label])
                .inc();
            match src.range(blob, start, end - start).await {
                Ok(bytes) => {
                    src.mark_up();
                    self.metrics
                        .fetch_bytes
                        .with_label_values(&[label])
                        .inc_by(bytes.len() as u64);
                    return self
                        .verify_all(label, bytes, start, pending, results, last_err)
                        .await;
                }
                Err(e) => {
                    self.metrics.fetch_error(label, reason(&e));
                    tracing::warn!(source = label, attempt, error = %e, "fetch failed");
                    let retry = e.is_retryable() && attempt < self.opts.retries;
                    let transport = matches!(e, Error::Timeout { .. } | Error::Http { .. });
                    *last_err = Some(e);
                    if !retry {
                        if transport {
                            src.mark_down();
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
            }
        }
        pending
    }

    /// Verify each pending chunk's slice of `bytes` (which start at blob offset `start`).
    async fn verify_all(
        &self,
        label: &str,
        bytes: Bytes,
        start: u64,
        pending: Vec<FileChunk>,
        results: &mut Vec<(u32, std::result::Result<ChunkBytes, SharedError>)>,
        last_err: &mut Option<Error>,
    ) -> Vec<FileChunk> {
        let mut jobs = Vec::new();
        for fc in &pending {
            if let Ok(c) = self.chunk(fc.chunk) {
                jobs.push((fc.chunk, c.clone()));
            }
        }
        let index = self.index.clone();
        let mut verified: HashMap<u32, Result<ChunkBytes>> =
            tokio::task::spawn_blocking(move || {
                jobs.into_iter()
                    .map(|(id, c)| {
                        let from = (c.offset - start) as usize;
                        let data = bytes.get(from..from + c.csize as usize).unwrap_or_default();
                        (id, verify_chunk(&index, id, &c, data))
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        let mut still = Vec::new();
        for fc in pending {
            match verified.remove(&fc.chunk) {
                Some(Ok(data)) => results.push((fc.chunk, Ok(data))),
                Some(Err(mut e)) => {
                    if let Error::Chunk { path, .. } = &mut e {
                        if let Some(&ino) = self.owner.get(fc.chunk as usize) {
                            *path = self.index.inode_path(ino);
                        }
                    }
                    self.metrics.fetch_error(label, "verify");
                    tracing::warn!(source = label, error = %e, "chunk failed verification");
                    *last_err = Some(e);
                    still.push(fc);
                }
                None => still.push(fc),
            }
        }
        still
    }
}

fn collect(
    out: Vec<Option<ChunkBytes>>,
    wanted: &[FileChunk],
) -> std::result::Result<Vec<ChunkBytes>, SharedError> {
    out.into_iter()
        .zip(wanted)
        .map(|(b, fc)| {
            b.ok_or_else(|| {
                Arc::new(Error::Invalid(format!(
                    "chunk #{} was not fetched",
                    fc.chunk
                )))
            })
        })
        .collect()
}

/// Decompress (capped at the chunk's size) and check size and sha256.
pub fn verify_chunk(index: &Index, id: u32, c: &Chunk, data: &[u8]) -> Result<ChunkBytes> {
    let bad = |reason: String| Error::Chunk {
        chunk: id,
        blob: index
            .blobs
            .get(c.blob as usize)
            .map(|b| b.digest)
            .unwrap_or_else(|| shoal_common::Digest::of(b"")),
        offset: c.offset,
        path: String::new(),
        reason,
    };
    if data.len() != c.csize as usize {
        return Err(bad(format!("got {} of {} bytes", data.len(), c.csize)));
    }
    let out =
        zstd::bulk::decompress(data, c.usize as usize).map_err(|e| bad(format!("zstd: {e}")))?;
    if out.len() != c.usize as usize {
        return Err(bad(format!(
            "decompressed to {} bytes, expected {}",
            out.len(),
            c.usize
        )));
    }
    let got = shoal_common::Digest::of(&out);
    if got != c.digest {
        return Err(bad(format!(
            "content hashes to {got}, expected {}",
            c.digest
        )));
    }
    Ok(Arc::new(out))
}

/// The `reason` label of a failed fetch attempt.
fn reason(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "timeout",
        Error::Http { source, .. } if source.is_connect() => "connect",
        Error::Http { source, .. } if source.is_timeout() => "timeout",
        Error::Http { .. } => "transfer",
        Error::Fetch { reason, .. } if reason.starts_with("HTTP") => "status",
        Error::Fetch { .. } => "transfer",
        _ => "other",
    }
}
