//! Returning freed memory to the operating system once the peer goes quiet.
//!
//! A burst of downloads allocates and frees many piece-sized buffers; glibc's allocator keeps
//! the freed pages, so a peer that served a hundred downloads would go on showing that peak as
//! its RSS for hours. The node's memory belongs to the node's workloads: when no download or
//! upload has run for a while, hand the pages back (`malloc_trim`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::PeerMetrics;

/// How often the peer looks whether it is idle.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Trims once per quiet period: after activity, the first check that finds no download and
/// no upload in progress.
pub async fn trim_when_idle(metrics: PeerMetrics, cancel: CancellationToken) {
    let mut busy_since_trim = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        let busy = metrics.tasks_active.get() > 0 || metrics.uploads_active.get() > 0;
        if busy {
            busy_since_trim = true;
        } else if busy_since_trim {
            busy_since_trim = false;
            release_free_memory();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes the allocator's
    // locks like any malloc call and is safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "returned free memory to the OS");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
