//! The download loop of one task: keep up to N pieces in flight, asking the supernode (by
//! long-poll) what to fetch next, until every piece is stored. If the supernode cannot be
//! reached the peer degrades to fetching from the origin itself: a pull must never fail only
//! because the scheduler is down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use shoal_common::api::{Assignment, RegisterTask, ScheduleReply, ScheduleRequest};

use super::fetches::{Fetches, Joined};
use super::piece::PieceContext;
use super::verify::BlobHasher;
use super::EngineShared;
use crate::error::{Error, Result};
use crate::storage::TaskFile;

/// Long-poll length asked of the supernode.
const WAIT_MS: u64 = 5_000;
/// A download that makes no progress for this long gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes in flight per task, to bound memory: pieces are buffered whole before verification.
const INFLIGHT_BYTES: u64 = 48 << 20;
/// Consecutive supernode failures before fetching from the origin alone.
const DEGRADE_AFTER: u32 = 3;
/// Consecutive failed origin fetches (no piece stored in between) before the download gives
/// up: an origin that keeps answering garbage, cutting bodies short or ignoring `Range` is
/// not going to get better within this download, and the client should hear so.
const MAX_ORIGIN_FAILURES: u32 = 8;
/// Wait after a failed origin fetch, doubled per consecutive failure up to the maximum, so a
/// failing registry is not hammered.
const ORIGIN_BACKOFF: Duration = Duration::from_millis(100);
const ORIGIN_BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(super) async fn register(shared: &EngineShared, file: &TaskFile) -> Result<()> {
    let body = RegisterTask {
        peer_id: shared.client.peer_id().to_owned(),
        url: file.meta().url.clone(),
        layout: Some(file.layout()),
        have: Some(file.have()),
        digests: file.digests(),
    };
    match shared.client.register(&file.id(), &body).await? {
        Some(info) if info.layout != file.layout() => Err(Error::Supernode {
            url: String::new(),
            message: format!(
                "task {} has layout {:?} at the supernode, {:?} here",
                file.id(),
                info.layout,
                file.layout()
            ),
            unknown_peer: false,
        }),
        _ => Ok(()),
    }
}

/// Runs until the task is complete and verified.
pub(super) async fn run(
    shared: Arc<EngineShared>,
    ctx: Arc<PieceContext>,
    mut degraded: bool,
) -> Result<()> {
    let file = ctx.file.clone();
    let task = file.id();
    let layout = file.layout();
    let max_inflight =
        (shared.concurrent_pieces as u64).min((INFLIGHT_BYTES / layout.piece_size).max(2)) as usize;
    let mut inflight = Fetches::new(ctx.clone(), shared.piece_memory.clone());
    let mut straggler_at: Option<tokio::time::Instant> = None;
    let mut schedule: Option<BoxFuture<'static, Result<ScheduleReply>>> = None;
    let mut errors = 0u32;
    let mut origin_failures = 0u32;
    let mut backoff_until: Option<tokio::time::Instant> = None;
    let mut last_progress = Instant::now();
    let mut progress_mark = file.have().count();
    let hasher = BlobHasher::start(&file);

    loop {
        if file.is_complete() && inflight.is_empty() {
            break;
        }
        let count = file.have().count();
        if count != progress_mark {
            progress_mark = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(Error::DownloadFailed {
                task,
                message: format!("no progress for {STALL_TIMEOUT:?}"),
            });
        }
        if !degraded {
            let missing = layout.piece_count().saturating_sub(count) as usize;
            let room = max_inflight.saturating_sub(inflight.len());
            straggler_at = inflight
                .duplicate_stragglers(missing, room)
                .map(tokio::time::Instant::from_std);
        }
        // After any second fetches, which take slots too.
        let capacity = max_inflight.saturating_sub(inflight.len());
        if backoff_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
            backoff_until = None;
        }
        if capacity > 0 && schedule.is_none() && backoff_until.is_none() && !file.is_complete() {
            if degraded {
                let missing: Vec<u32> = file
                    .have()
                    .missing()
                    .filter(|&p| !inflight.contains(p))
                    .take(capacity)
                    .collect();
                for piece in missing {
                    let a = Assignment {
                        piece,
                        sha256: None,
                        parents: Vec::new(),
                        origin: true,
                    };
                    inflight.start(a);
                }
            } else {
                let client = shared.client.clone();
                let req = ScheduleRequest {
                    peer_id: client.peer_id().to_owned(),
                    capacity: capacity as u32,
                    wait_ms: WAIT_MS,
                    avoid: ctx.avoid.lock().iter().cloned().collect(),
                };
                schedule = Some(Box::pin(async move { client.schedule(&task, &req).await }));
            }
        }
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let Joined::Piece(piece, result) = joined? else {
                    continue;
                };
                match result {
                    Ok(()) => origin_failures = 0,
                    Err(e) => {
                        // The origin refusing outright (404, 401, ...) or failing again and
                        // again ends the download; anything else is retried from wherever the
                        // supernode says next.
                        if let Error::Origin { .. } = e {
                            if !e.is_retryable() {
                                return Err(e);
                            }
                            // Failures landing during a backoff belong to the same burst
                            // (pieces that were in flight together): count them once.
                            if backoff_until.is_none() {
                                origin_failures += 1;
                                if origin_failures >= MAX_ORIGIN_FAILURES {
                                    return Err(e);
                                }
                                let wait = (ORIGIN_BACKOFF * 2u32.pow(origin_failures.min(5)))
                                    .min(ORIGIN_BACKOFF_MAX);
                                backoff_until = Some(tokio::time::Instant::now() + wait);
                            }
                        }
                        tracing::debug!(%task, piece, error = %e, "piece failed, will retry");
                    }
                }
            }
            reply = async {
                match schedule.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if schedule.is_some() => {
                schedule = None;
                match reply {
                    Ok(reply) => {
                        errors = 0;
                        if reply.done && !file.is_complete() && inflight.is_empty() {
                            tracing::warn!(%task, "supernode thinks we hold pieces we lack; fetching them from the origin");
                            degraded = true;
                        }
                        for a in reply.assignments {
                            inflight.start(a);
                        }
                    }
                    Err(Error::Supernode { unknown_peer: true, .. }) => {
                        shared.metrics.supernode_errors.inc();
                        tracing::info!(%task, "supernode forgot us; announcing again");
                        let again = async {
                            shared.client.announce().await?;
                            register(&shared, &file).await
                        };
                        if let Err(e) = again.await {
                            errors += 1;
                            tracing::warn!(%task, error = %e, "re-announce failed");
                        }
                    }
                    Err(e) => {
                        shared.metrics.supernode_errors.inc();
                        errors += 1;
                        tracing::warn!(%task, error = %e, attempt = errors, "schedule failed");
                        if errors >= DEGRADE_AFTER {
                            tracing::warn!(%task, "supernode unreachable: fetching from the origin directly");
                            degraded = true;
                        } else {
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(errors))).await;
                        }
                    }
                }
            }
            _ = async {
                match backoff_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if backoff_until.is_some() && schedule.is_none() => {}
            _ = async {
                match straggler_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if straggler_at.is_some() => {}
            _ = shared.cancel.cancelled() => return Err(Error::Cancelled),
        }
    }
    match hasher {
        Some(h) => h.finish().await,
        None => Ok(()),
    }
}

/// The per-task set of parents given up on, shared by its piece fetches.
pub(super) fn new_avoid_set() -> Arc<Mutex<HashSet<String>>> {
    Arc::new(Mutex::new(HashSet::new()))
}
