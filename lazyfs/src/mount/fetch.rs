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
//!
//! - this module: the cache tiers and what a read needs fetched (with readahead);
//! - `flight`: single flight, one spawned task per run, caching what it got;
//! - `sources`: each source in turn, retries, verification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

mod flight;
mod sources;

use super::cache::{ChunkBytes, ChunkCache};
use super::metrics::Metrics;
use super::sequential::{BlobOrder, Detector};
use super::source::HttpSource;
use crate::error::Error;
use crate::index::{Chunk, FileChunk, Index};

/// A fetch failure shared by every reader that waited for the run.
pub type SharedError = Arc<Error>;
/// One chunk of a run: its bytes, verified, or why no source delivered them.
type ChunkResult = (u32, std::result::Result<ChunkBytes, SharedError>);
type RunResult = Arc<Vec<ChunkResult>>;
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
        Fetcher {
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
            .map(|fc| self.chunk(fc.chunk).ok().map(|c| (c.digest, c.raw_len)))
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
                    lookups.push((Some(i), fc.chunk, c.digest, c.raw_len));
                }
            }
            for fc in &ahead {
                let c = self.chunk(fc.chunk)?;
                lookups.push((None, fc.chunk, c.digest, c.raw_len));
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
