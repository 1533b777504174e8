//! Single flight: a run of missing chunks is fetched by one spawned task, registered in
//! `inflight` until its bytes are cached, so concurrent readers of any of its chunks await
//! it instead of fetching again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::FutureExt;

use super::{Fetcher, RunResult, SharedError, SharedRun};
use shoal_common::Digest;

use crate::error::Error;
use crate::index::{BlobRun, FileChunk};
use crate::mount::cache::ChunkBytes;

impl Fetcher {
    /// Join or start the runs covering `missing` (positions in `wanted`) plus `ahead`, and
    /// wait for the ones holding `missing`.
    pub(super) async fn fetch_missing(
        self: &Arc<Self>,
        wanted: &[FileChunk],
        missing: &[usize],
        ahead: &[FileChunk],
    ) -> std::result::Result<Vec<(usize, ChunkBytes)>, SharedError> {
        let mut waits: Vec<(usize, u32, SharedRun)> = Vec::new();
        let mut got = Vec::with_capacity(missing.len());
        // Wanted chunks a run put on disk (and unregistered) after the caller's cache lookup.
        let mut on_disk: Vec<(usize, Digest, u32)> = Vec::new();
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
                // A run may have finished since the cache lookup: its chunks are in memory,
                // or (the memory tier being small or choosy) only listed on disk.
                let Ok(chunk) = self.chunk(fc.chunk) else {
                    to_fetch.push(*fc);
                    continue;
                };
                match (self.cache.peek_memory(&chunk.digest), i) {
                    (Some(b), Some(i)) => ready.push((i, b)),
                    (Some(_), None) => {}
                    (None, i) if self.cache.holds(&chunk.digest) => {
                        if let Some(i) = i {
                            on_disk.push((i, chunk.digest, chunk.raw_len));
                        }
                    }
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
        if !on_disk.is_empty() {
            let positions: Vec<usize> = on_disk.iter().map(|(i, _, _)| *i).collect();
            let cache = self.cache.clone();
            let read = tokio::task::spawn_blocking(move || {
                on_disk
                    .into_iter()
                    .map(|(_, d, raw_len)| cache.get_disk(&d, raw_len))
                    .collect::<Vec<_>>()
            })
            .await
            // A failed read task reads as "nothing on disk": those chunks are fetched below.
            .unwrap_or_else(|_| vec![None; positions.len()]);
            let mut gone = Vec::new();
            for (i, bytes) in positions.into_iter().zip(read) {
                match bytes {
                    Some(b) => got.push((i, b)),
                    None => gone.push(i),
                }
            }
            // Evicted (or unreadable) between the listing and the read: fetch after all.
            if !gone.is_empty() {
                got.extend(Box::pin(self.fetch_missing(wanted, &gone, &[])).await?);
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

    /// Fetch one run ([`Fetcher::fetch_from_sources`]); cache what verifies.
    pub(super) async fn fetch_run(self: Arc<Self>, id: u64, run: BlobRun) -> RunResult {
        let results = self.fetch_from_sources(run).await;
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

    pub(super) fn unregister(&self, run: u64) {
        self.inflight.lock().retain(|_, (run_id, _)| *run_id != run);
    }
}
