//! The read path of a mount: a file byte range → its chunks (index) → verified chunk bytes
//! (cache or fetch) → the requested bytes. Counted and timed for the metrics. When a read
//! has to fetch, the file's next chunks (up to `readahead` bytes) ride along in the same
//! range requests, so a cold sequential read costs one round trip per megabyte or so rather
//! than one per chunk.

use std::sync::Arc;
use std::time::Instant;

use super::access::AccessLog;
use super::cache::ChunkBytes;
use super::fetch::{Fetcher, SharedError};
use super::metrics::Metrics;
use crate::index::{FileChunk, Index};

pub struct Reader {
    pub index: Arc<Index>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Metrics,
    pub access: Option<Arc<AccessLog>>,
    /// File bytes after a read whose missing chunks join the read's range requests.
    pub readahead: u64,
}

impl Reader {
    /// Up to `size` bytes at `offset` of file inode `inode` (short only at end of file).
    pub async fn read(&self, inode: u32, offset: u64, size: u32) -> Result<Vec<u8>, SharedError> {
        let started = Instant::now();
        let _demand = self.fetcher.demand_guard();
        let result = self.read_inner(inode, offset, size).await;
        self.finish(started, inode, offset, size, result)
    }

    /// The same read answered from the caches alone, or `None` when a chunk must be
    /// fetched (then call [`Reader::read`]; nothing has been counted yet). Blocking. It
    /// cannot fail: a cache entry that does not check out is a miss.
    pub fn read_local(&self, inode: u32, offset: u64, size: u32) -> Option<Vec<u8>> {
        let started = Instant::now();
        let _demand = self.fetcher.demand_guard();
        let (offset, end) = self.bounds(inode, offset, size);
        let chunks = self.index.chunks_for_range(inode, offset, end - offset);
        let datas = self.fetcher.get_local(&chunks)?;
        let out = assemble(&chunks, &datas, offset, end);
        self.finish(started, inode, offset, size, Ok(out)).ok()
    }

    /// Counts, times and logs a finished read.
    fn finish(
        &self,
        started: Instant,
        inode: u32,
        offset: u64,
        size: u32,
        result: Result<Vec<u8>, SharedError>,
    ) -> Result<Vec<u8>, SharedError> {
        if let Some(a) = &self.access {
            a.record(inode);
        }
        self.metrics
            .read_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(data) => self.metrics.read_bytes.inc_by(data.len() as u64),
            Err(e) => {
                self.metrics.read_errors.inc();
                tracing::error!(
                    file = %self.index.inode_path(inode),
                    offset,
                    size,
                    error = %e,
                    "read failed: answering EIO"
                );
            }
        }
        result
    }

    /// `[offset, end)` clipped to the file (empty past its end).
    fn bounds(&self, inode: u32, offset: u64, size: u32) -> (u64, u64) {
        let file_size = self.index.inode(inode).map_or(0, |i| i.size);
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        (offset.min(end), end)
    }

    async fn read_inner(&self, inode: u32, offset: u64, size: u32) -> Result<Vec<u8>, SharedError> {
        let (offset, end) = self.bounds(inode, offset, size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let chunks = self.index.chunks_for_range(inode, offset, end - offset);
        let ahead = match chunks.last() {
            Some(last) if self.readahead > 0 => {
                let size = self
                    .index
                    .chunks
                    .get(last.chunk as usize)
                    .map_or(0, |c| u64::from(c.raw_len));
                self.index
                    .chunks_for_range(inode, last.file_offset + size, self.readahead)
            }
            _ => Vec::new(),
        };
        let datas = self.fetcher.get_ahead(&chunks, &ahead).await?;
        Ok(assemble(&chunks, &datas, offset, end))
    }
}

/// The bytes `[offset, end)` of a file out of its chunks covering that range.
fn assemble(chunks: &[FileChunk], datas: &[ChunkBytes], offset: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    for (fc, data) in chunks.iter().zip(datas) {
        let chunk_end = fc.file_offset + data.len() as u64;
        let from = offset.max(fc.file_offset) - fc.file_offset;
        let to = end.min(chunk_end).saturating_sub(fc.file_offset);
        if let Some(part) = data.get(from as usize..to as usize) {
            out.extend_from_slice(part);
        }
    }
    out
}
