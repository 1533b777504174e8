//! Background prefetch (`--prefetch all|list|none`) at low priority: chunks are fetched in
//! batches of about one range request, and before each batch the prefetcher waits until no
//! on-demand read is in progress, so application reads always go first.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::fetch::Fetcher;
use super::metrics::Metrics;
use crate::index::{FileChunk, Index, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefetchMode {
    /// Every chunk of the image, in blob order.
    All,
    /// The files of the index's prefetch list, in order.
    List,
    None,
}

impl FromStr for PrefetchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(PrefetchMode::All),
            "list" => Ok(PrefetchMode::List),
            "none" => Ok(PrefetchMode::None),
            _ => Err(format!("--prefetch {s}: expected all, list or none")),
        }
    }
}

impl std::fmt::Display for PrefetchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchMode::All => "all",
            PrefetchMode::List => "list",
            PrefetchMode::None => "none",
        })
    }
}

/// The chunks to prefetch, in order, each once.
pub fn plan(index: &Index, mode: PrefetchMode) -> Vec<FileChunk> {
    let mut seen = vec![false; index.chunks.len()];
    let mut out = Vec::new();
    let mut add = |chunk: u32| {
        if let Some(s) = seen.get_mut(chunk as usize) {
            if !*s {
                *s = true;
                out.push(FileChunk {
                    chunk,
                    file_offset: 0,
                });
            }
        }
    };
    match mode {
        PrefetchMode::None => {}
        PrefetchMode::List => {
            for &inode in &index.prefetch {
                if index.inode(inode).is_some_and(|i| i.kind == Kind::File) {
                    for fc in index.file_chunks(inode) {
                        add(fc.chunk);
                    }
                }
            }
        }
        PrefetchMode::All => {
            for &inode in &index.prefetch {
                for fc in index.file_chunks(inode) {
                    add(fc.chunk);
                }
            }
            // Chunk table order is blob order: adjacent chunks merge into few requests.
            for chunk in 0..index.chunks.len() as u32 {
                add(chunk);
            }
        }
    }
    out
}

/// Run the prefetch to completion (spawn it as a task).
pub async fn run(
    fetcher: Arc<Fetcher>,
    index: Arc<Index>,
    mode: PrefetchMode,
    batch: u64,
    metrics: Metrics,
) {
    let chunks = plan(&index, mode);
    if chunks.is_empty() {
        return;
    }
    tracing::info!(chunks = chunks.len(), ?mode, "prefetch starting");
    let mut failed = 0usize;
    let mut start = 0;
    while start < chunks.len() {
        // One batch: chunks up to `batch` compressed bytes.
        let mut end = start;
        let mut bytes = 0u64;
        while let Some(fc) = chunks.get(end) {
            let stored_len = index
                .chunks
                .get(fc.chunk as usize)
                .map_or(0, |c| u64::from(c.stored_len));
            if end > start && bytes + stored_len > batch {
                break;
            }
            bytes += stored_len;
            end += 1;
        }
        while fetcher.demand_active() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let part = chunks.get(start..end).unwrap_or_default();
        match fetcher.get(part).await {
            Ok(_) => metrics.prefetch_chunks.inc_by(part.len() as u64),
            Err(e) => {
                failed += part.len();
                tracing::debug!(error = %e, "prefetch batch failed");
            }
        }
        start = end;
    }
    tracing::info!(chunks = chunks.len(), failed, "prefetch finished");
}
