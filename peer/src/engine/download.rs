//! The download loop of one task: keep up to N pieces in flight, asking the supernode (by
//! long-poll) what to fetch next, until every piece is stored. If the supernode cannot be
//! reached the peer degrades to fetching from the origin itself: a pull must never fail only
//! because the scheduler is down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shoal_common::api::{Assignment, RegisterTask, ScheduleReply, ScheduleRequest, MAX_WANTED};
use shoal_common::piece::MIN_PIECE_SIZE;
use shoal_registry::RetryPolicy;

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
/// Most pieces in flight per task, however small they are.
const MAX_SLOTS: u64 = 64;
/// Consecutive supernode failures before fetching from the origin alone.
const DEGRADE_AFTER: u32 = 3;
/// Retries of failed origin piece fetches: the registry client's policy (exponential backoff
/// with jitter, `Retry-After` honoured), counted over a burst of failures with no piece
/// stored in between. Pieces fail independently and a download may last minutes, so the
/// budget restarts with every piece stored; an origin that keeps answering garbage, cutting
/// bodies short or ignoring `Range` for this long is not going to get better within this
/// download, and the client should hear so.
fn origin_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 8,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(4),
        budget: Duration::from_secs(60),
    }
}

pub(super) async fn register(shared: &EngineShared, file: &TaskFile) -> Result<()> {
    let body = RegisterTask {
        peer_id: shared.client.peer_id().to_owned(),
        url: file.meta().url.clone(),
        layout: Some(file.layout()),
        have: Some(file.have()),
        digests: file.digests(),
    };
    match shared.client.register(&file.id(), &body).await? {
        Some(info) if info.layout != file.layout() => Err(Error::LayoutConflict {
            task: file.id(),
            theirs: info.layout,
            ours: file.layout(),
        }),
        _ => Ok(()),
    }
}

/// How a download loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// Every piece is stored (and the blob verified, when its digest is known).
    Complete,
    /// A sparse download had nothing left to fetch for [`SPARSE_IDLE`]: its pieces stay in
    /// the cache, and the next range starts a new download.
    Idle,
}

/// A sparse download idles this long for new ranges before it ends: a lazy mount reads in
/// bursts (a container starting), and each new download costs a supernode round trip.
const SPARSE_IDLE: Duration = Duration::from_secs(20);

type SchedulePoll = BoxFuture<'static, Result<ScheduleReply>>;

/// Fetch slots for pieces of `piece_size`: `concurrent_pieces` of 1 MiB or more, and as many
/// bytes in flight for smaller pieces (a lazy read's 64 KiB pieces would otherwise crawl at
/// one round trip per 8 small pieces), within [`INFLIGHT_BYTES`].
fn fetch_slots(concurrent_pieces: u32, piece_size: u64) -> usize {
    let per_mib = (MIN_PIECE_SIZE / piece_size.max(1)).max(1);
    let slots = (u64::from(concurrent_pieces) * per_mib).min(MAX_SLOTS);
    slots.min((INFLIGHT_BYTES / piece_size.max(1)).max(2)) as usize
}

/// Runs until the task is complete and verified, or, for a sparse task, until it has idled.
pub(super) async fn run(
    shared: Arc<EngineShared>,
    ctx: Arc<PieceContext>,
    mut degraded: bool,
) -> Result<Finished> {
    let file = ctx.file.clone();
    let task = file.id();
    let layout = file.layout();
    let demand = ctx.demand.clone();
    let mut demand_changed = demand.subscribe();
    let max_inflight = fetch_slots(shared.concurrent_pieces, layout.piece_size);
    let mut inflight = Fetches::new(ctx.clone(), shared.piece_memory.clone());
    let mut straggler_at: Option<tokio::time::Instant> = None;
    // The long poll, and a second, immediate request for ranges asked while it waits.
    let mut schedule: Option<SchedulePoll> = None;
    let mut urgent: Option<SchedulePoll> = None;
    let mut asked_generation = 0u64;
    let mut errors = 0u32;
    let origin_retry = origin_retry();
    // Failed origin fetches since the last piece stored, and when the first of them failed.
    let mut origin_failures = 0u32;
    let mut failing_since = Instant::now();
    let mut backoff_until: Option<tokio::time::Instant> = None;
    let mut last_progress = Instant::now();
    let mut progress_mark = file.have().count();
    let mut idle_since: Option<Instant> = None;
    // The whole-blob hash runs only once the whole blob is wanted (or has arrived).
    let mut hasher: Option<BlobHasher> = None;

    loop {
        let generation = *demand_changed.borrow_and_update();
        let whole = demand.is_whole();
        if (whole || file.is_complete()) && hasher.is_none() {
            hasher = BlobHasher::start(&file);
        }
        if file.is_complete() && inflight.is_empty() {
            break;
        }
        let wanted = demand.pending(&file, MAX_WANTED, |p| inflight.contains(p));
        let idle = !whole && wanted.is_empty() && inflight.is_empty();
        let count = file.have().count();
        if count != progress_mark || idle {
            progress_mark = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(Error::DownloadFailed {
                task,
                message: format!("no progress for {STALL_TIMEOUT:?}"),
            });
        }
        let idle_deadline = if idle {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SPARSE_IDLE && demand.retire_if_idle(&file) {
                return Ok(Finished::Idle);
            }
            Some(tokio::time::Instant::from_std(since + SPARSE_IDLE))
        } else {
            idle_since = None;
            None
        };
        if !degraded && whole {
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
        let more = whole || !wanted.is_empty();
        if capacity > 0 && more && backoff_until.is_none() && !file.is_complete() {
            if degraded {
                let mut pieces = wanted.clone();
                if whole {
                    let listed: HashSet<u32> = pieces.iter().copied().collect();
                    pieces.extend(
                        file.have()
                            .missing()
                            .filter(|p| !inflight.contains(*p) && !listed.contains(p))
                            .take(capacity),
                    );
                }
                inflight.start_all(
                    pieces
                        .into_iter()
                        .take(capacity)
                        .map(|piece| Assignment {
                            piece,
                            sha256: None,
                            parents: Vec::new(),
                            origin: true,
                        })
                        .collect(),
                );
            } else if schedule.is_none() {
                asked_generation = generation;
                schedule = Some(ask(&shared, &ctx, capacity, wanted, !whole, WAIT_MS));
            } else if urgent.is_none() && generation != asked_generation && !wanted.is_empty() {
                // The long poll was sent before these ranges were asked for: it may wait
                // seconds for something else. Ask now, without waiting.
                asked_generation = generation;
                urgent = Some(ask(&shared, &ctx, capacity, wanted, !whole, 0));
            }
        }
        tokio::select! {
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                for joined in joined? {
                let Joined::Piece(piece, result) = joined else {
                    continue;
                };
                match result {
                    Ok(()) => origin_failures = 0,
                    // No room on the disk even after evicting: fetching again cannot help.
                    Err(e @ Error::DiskFull { .. }) => return Err(e),
                    Err(e) => {
                        // The origin refusing outright (404, 401, ...) or failing again and
                        // again ends the download; anything else is retried from wherever the
                        // supernode says next.
                        if let Error::Origin { retry_after, .. } = e {
                            if !e.is_retryable() {
                                return Err(e);
                            }
                            // Failures landing during a backoff belong to the same burst
                            // (pieces that were in flight together): count them once.
                            if backoff_until.is_none() {
                                if origin_failures == 0 {
                                    failing_since = Instant::now();
                                }
                                origin_failures += 1;
                                let Some(wait) = origin_retry.delay(origin_failures, failing_since, retry_after) else {
                                    return Err(e);
                                };
                                tracing::debug!(%task, retry = origin_failures, ?wait, "origin failing: backing off");
                                backoff_until = Some(tokio::time::Instant::now() + wait);
                            }
                        }
                        tracing::debug!(%task, piece, error = %e, "piece failed, will retry");
                    }
                }
                }
            }
            reply = next_reply(&mut schedule, &mut urgent), if schedule.is_some() || urgent.is_some() => {
                match reply {
                    Ok(reply) => {
                        errors = 0;
                        if reply.done && !file.is_complete() && inflight.is_empty() {
                            tracing::warn!(%task, "supernode thinks we hold pieces we lack; fetching them from the origin");
                            degraded = true;
                        }
                        inflight.start_all(reply.assignments);
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
            // New ranges (or the whole blob) wanted: look again.
            Ok(()) = demand_changed.changed() => {}
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
            _ = async {
                match idle_deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if idle_deadline.is_some() => {}
            _ = shared.cancel.cancelled() => return Err(Error::Cancelled),
        }
    }
    if let Some(h) = hasher {
        h.finish().await?;
    }
    Ok(Finished::Complete)
}

/// A schedule request: `capacity` pieces, `wanted` first (only those when `sparse`).
fn ask(
    shared: &Arc<EngineShared>,
    ctx: &PieceContext,
    capacity: usize,
    wanted: Vec<u32>,
    sparse: bool,
    wait_ms: u64,
) -> SchedulePoll {
    let client = shared.client.clone();
    let task = ctx.file.id();
    let req = ScheduleRequest {
        peer_id: client.peer_id().to_owned(),
        capacity: capacity as u32,
        wait_ms,
        avoid: ctx.avoid.list(),
        want: wanted,
        sparse,
    };
    Box::pin(async move { client.schedule(&task, &req).await })
}

/// The first of the running schedule requests to answer; its slot is emptied.
async fn next_reply(
    a: &mut Option<SchedulePoll>,
    b: &mut Option<SchedulePoll>,
) -> Result<ScheduleReply> {
    std::future::poll_fn(|cx| {
        for slot in [&mut *a, &mut *b] {
            if let Some(f) = slot.as_mut() {
                if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                    *slot = None;
                    return std::task::Poll::Ready(r);
                }
            }
        }
        std::task::Poll::Pending
    })
    .await
}
