//! Fetching one piece: try the parents the supernode named, best first, then the origin if
//! allowed. Every byte is checked against the piece's sha256 before it is stored; a parent
//! that fails or lies is reported and avoided (for the rest of the task, or for a while when
//! it stalled).

use std::sync::Arc;
use std::time::Instant;

use shoal_common::api::{Assignment, FailReason, PeerId, PieceDone, PieceFailed};
use shoal_common::Digest;

use super::avoid::{Avoid, RELAY_STALLED_FOR, STALLED_FOR};
use super::demand::Demand;
use super::reporter::{ReportItem, Reporter};
use super::EngineShared;
use crate::error::{Error, ParentFault, Result};
use crate::metrics::{FetchedFrom, PeerMetrics};
use crate::source::{HttpFetcher, Origin, ParentPeer, PieceSource};

use crate::storage::TaskFile;

/// Everything a piece fetch needs, shared by the fetches of one task.
pub struct PieceContext {
    pub file: Arc<TaskFile>,
    pub origin: Origin,
    /// For parents: with their connect timeout and stall detection.
    pub http: HttpFetcher,
    pub metrics: PeerMetrics,
    pub reporter: Reporter,
    pub avoid: Arc<Avoid>,
    /// What readers want of this download (the whole blob, or ranges first).
    pub demand: Arc<Demand>,
    /// The engine, to make room when a piece finds the disk full.
    pub shared: Arc<EngineShared>,
}

/// Bytes a sparse download makes room for when its disk is full (at least a piece): it needs
/// only what its readers ask for next, not the whole blob (which may not fit at all). About
/// what a lazy mount's reads keep in flight; pieces beyond it make room again when they land.
const SPARSE_ROOM: u64 = 4 << 20;

impl PieceContext {
    fn fail(&self, piece: u32, parent: Option<PeerId>, reason: FailReason) {
        self.report_failure(piece, parent, reason, ParentFault::Other);
    }

    /// Reports a failed fetch to the supernode, and counts it. A relay that went silent is
    /// reported as an interruption (the silence may be its source's) but counted here as
    /// the timeout it was.
    fn report_failure(
        &self,
        piece: u32,
        parent: Option<PeerId>,
        reason: FailReason,
        fault: ParentFault,
    ) {
        let source = if parent.is_some() {
            FetchedFrom::Peer
        } else {
            FetchedFrom::Origin
        };
        let counted = match fault {
            ParentFault::RelayStalled => FailReason::Timeout,
            _ => reason,
        };
        let reason_label = serde_json::to_value(counted)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let refused = fault == ParentFault::Refused;
        self.metrics
            .piece_failures
            .with_label_values(&[source.label(), &reason_label])
            .inc();
        self.reporter.send(
            self.file.id(),
            ReportItem::Failed(PieceFailed {
                piece,
                parent,
                reason,
                refused,
            }),
        );
    }

    /// Releases an assignment this peer will not fetch (it is fetching the piece already).
    pub fn give_back(&self, a: &Assignment) {
        let parent = a.parents.first().map(|p| p.peer_id.clone());
        self.fail(a.piece, parent, FailReason::Abandoned);
    }

    /// Verifies and stores bytes from `source`; `Ok(false)` when they did not match.
    async fn accept(
        &self,
        piece: u32,
        bytes: bytes::Bytes,
        expected: Option<Digest>,
        from: Option<PeerId>,
        started: Instant,
    ) -> Result<bool> {
        let source = if from.is_some() {
            FetchedFrom::Peer
        } else {
            FetchedFrom::Origin
        };
        let len = bytes.len();
        let stored = match self.store(piece, bytes.clone(), expected).await {
            // No room for the piece (a sparse download reserves nothing, or the filesystem
            // broke the reservation): evict if that can make room, and write once more. The
            // piece is not recorded unless a write succeeds.
            Err(e) if e.is_out_of_space() => {
                self.shared
                    .make_room(&self.file, self.room_needed())
                    .await?;
                self.store(piece, bytes, expected)
                    .await
                    .map_err(|e| self.disk_full(e))?
            }
            other => other?,
        };
        let Some(sha256) = stored else {
            self.metrics
                .pieces_rejected
                .with_label_values(&[source.label()])
                .inc();
            tracing::warn!(task = %self.file.id(), piece, from = ?from, "piece digest mismatch, discarded");
            return Ok(false);
        };
        self.metrics
            .pieces_verified
            .with_label_values(&[source.label()])
            .inc();
        self.metrics
            .download_bytes
            .with_label_values(&[source.label()])
            .inc_by(len as u64);
        if self.demand.is_wanted(piece) {
            self.metrics
                .range_bytes
                .with_label_values(&[source.label()])
                .inc_by(len as u64);
        }
        self.metrics
            .piece_duration
            .with_label_values(&[source.label()])
            .observe(started.elapsed().as_secs_f64());
        // One line per piece at trace level: enough to rebuild a swarm's timeline from the
        // peers' logs (who sent what, when, how long it took).
        tracing::trace!(
            task = %self.file.id(),
            piece,
            from = from.as_deref().unwrap_or("origin"),
            millis = started.elapsed().as_millis() as u64,
            "piece stored"
        );
        self.reporter.send(
            self.file.id(),
            ReportItem::Done(PieceDone {
                piece,
                sha256,
                from,
                millis: started.elapsed().as_millis() as u64,
            }),
        );
        Ok(true)
    }

    /// Verifies `bytes` and writes them as `piece` (on a blocking thread); `None` when they
    /// do not match `expected`.
    async fn store(
        &self,
        piece: u32,
        bytes: bytes::Bytes,
        expected: Option<Digest>,
    ) -> Result<Option<Digest>> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let sha = Digest::of(&bytes);
            if expected.is_some_and(|e| e != sha) {
                return Ok(None);
            }
            file.write_piece(piece, &bytes, sha).map(|_| Some(sha))
        })
        .await
        .map_err(|e| Error::io(self.file.dir(), std::io::Error::other(e)))?
    }

    /// Bytes this download still needs room for: the rest of the blob, or for a sparse
    /// download the next few pieces.
    fn room_needed(&self) -> u64 {
        let layout = self.file.layout();
        let missing = u64::from(
            layout
                .piece_count()
                .saturating_sub(self.file.have().count()),
        ) * layout.piece_size;
        if self.demand.is_whole() {
            missing
        } else {
            missing.min(SPARSE_ROOM.max(layout.piece_size))
        }
    }

    /// A write that still found no room after making some ends the download: fetching the
    /// piece again elsewhere would not help.
    fn disk_full(&self, e: Error) -> Error {
        match e {
            Error::Io { ref path, .. } if e.is_out_of_space() => Error::DiskFull {
                task: self.file.id(),
                path: path.clone(),
                needed: self.room_needed(),
            },
            other => other,
        }
    }

    /// Fetches a run of contiguous pieces from one source (the origin, or the first parent
    /// of every assignment) with one range request, and verifies and stores each piece on its
    /// own. Small pieces (a lazy blob's 16 KiB) would otherwise cost a request each, at the
    /// registry and at the parent: one read of a 50 KB chunk was four. Results are per piece;
    /// a failed request fails every piece of the run, and a piece that does not match its
    /// digest fails alone (each is reported, so it is scheduled again, elsewhere).
    pub async fn fetch_run(&self, run: &[Assignment]) -> Vec<(u32, Result<()>)> {
        let layout = self.file.layout();
        let ranges: Vec<_> = run.iter().map(|a| layout.range(a.piece)).collect();
        let (Some(Some(first)), Some(Some(last))) = (ranges.first(), ranges.last()) else {
            return run
                .iter()
                .map(|a| {
                    let e = Error::BadRequest(format!(
                        "supernode assigned piece {} past the end of task {}",
                        a.piece,
                        self.file.id()
                    ));
                    (a.piece, Err(e))
                })
                .collect();
        };
        let (start, end) = (first.start, last.end);
        let parent = run[0].parents.first().cloned();
        let from = parent.as_ref().map(|p| p.peer_id.clone());
        let started = Instant::now();
        let fetched = match &parent {
            None => self.origin.fetch(start..end).await,
            Some(p) => {
                ParentPeer::new(
                    p.peer_id.clone(),
                    p.addr,
                    &self.file.id(),
                    layout.length,
                    self.http.clone(),
                )
                .fetch(start..end)
                .await
            }
        };
        let bytes = match fetched {
            Ok(b) => b,
            // A parent that cannot serve the whole run (it lost a piece, or died): each piece
            // on its own, so that each outcome (and each report) is exact.
            Err(_) if from.is_some() => {
                let each = run
                    .iter()
                    .map(|a| async move { (a.piece, self.fetch(a.clone()).await) });
                return futures::future::join_all(each).await;
            }
            // The origin: every piece of the run fails alike (and is scheduled again); asking
            // piece by piece would only hammer a failing registry.
            Err(e) => {
                return run
                    .iter()
                    .map(|a| {
                        self.fail(a.piece, None, FailReason::Unreachable);
                        (a.piece, Err(self.copy_origin_error(&e)))
                    })
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(run.len());
        for (a, r) in run.iter().zip(ranges) {
            let Some(r) = r else { continue };
            let piece_bytes = bytes.slice((r.start - start) as usize..(r.end - start) as usize);
            let result = match self
                .accept(a.piece, piece_bytes, a.sha256, from.clone(), started)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => {
                    self.fail(a.piece, from.clone(), FailReason::Corrupt);
                    let message = format!("piece {} did not match its digest", a.piece);
                    Err(match &from {
                        Some(peer) => {
                            self.avoid.liar(peer);
                            Error::Parent {
                                peer: peer.clone(),
                                message,
                                reason: FailReason::Corrupt,
                                fault: ParentFault::Other,
                            }
                        }
                        None => self.origin.err(message, None),
                    })
                }
                Err(e) => {
                    self.fail(a.piece, from.clone(), FailReason::Abandoned);
                    Err(e)
                }
            };
            out.push((a.piece, result));
        }
        out
    }

    /// The same origin failure for each piece of a run (errors are not `Clone`), keeping the
    /// status the download loop looks at.
    fn copy_origin_error(&self, e: &Error) -> Error {
        match e {
            Error::Origin {
                url,
                message,
                status,
                retry_after,
            } => Error::Origin {
                url: url.clone(),
                message: message.clone(),
                status: *status,
                retry_after: *retry_after,
            },
            other => Error::DownloadFailed {
                task: self.file.id(),
                message: other.to_string(),
            },
        }
    }

    /// Fetches one assigned piece; the error is the last source's.
    pub async fn fetch(&self, a: Assignment) -> Result<()> {
        let layout = self.file.layout();
        let range = layout.range(a.piece).ok_or_else(|| {
            Error::BadRequest(format!(
                "supernode assigned piece {} past the end of task {}",
                a.piece,
                self.file.id()
            ))
        })?;
        let mut last_err = None;
        for parent in &a.parents {
            if self.avoid.contains(&parent.peer_id) {
                continue;
            }
            // Without a digest the parent is relaying the piece's first fetch from the
            // origin (the only case the supernode offers one): its bytes are then trusted
            // like that fetch, and the blob's digest is the final check.
            let started = Instant::now();
            // Other peers may fetch this piece from us while it arrives; the relay ends (and
            // fails its readers if incomplete) when `relay` is dropped, after the piece is
            // stored or this attempt failed.
            let relay = self.file.relays().start(a.piece, range.end - range.start);
            let src = ParentPeer::new(
                parent.peer_id.clone(),
                parent.addr,
                &self.file.id(),
                layout.length,
                self.http.clone(),
            )
            .relaying(&relay);
            // Another fetch from this parent failing makes it avoided: this one is then given
            // up at once rather than waiting out its own stall timeout.
            let fetched = tokio::select! {
                r = src.fetch(range.clone()) => r,
                () = self.avoid.until_avoided(&parent.peer_id) => Err(Error::Parent {
                    peer: parent.peer_id.clone(),
                    message: "given up: another fetch from this parent failed".into(),
                    reason: FailReason::Abandoned,
                    fault: ParentFault::Other,
                }),
            };
            match fetched {
                Ok(bytes) => {
                    if self
                        .accept(
                            a.piece,
                            bytes,
                            a.sha256,
                            Some(parent.peer_id.clone()),
                            started,
                        )
                        .await
                        // Not stored (a full disk): release the piece for scheduling.
                        .inspect_err(|_| {
                            self.fail(a.piece, Some(parent.peer_id.clone()), FailReason::Abandoned)
                        })?
                    {
                        return Ok(());
                    }
                    relay.fail();
                    self.avoid.liar(&parent.peer_id);
                    self.fail(a.piece, Some(parent.peer_id.clone()), FailReason::Corrupt);
                    last_err = Some(Error::Parent {
                        peer: parent.peer_id.clone(),
                        message: format!("piece {} did not match its digest", a.piece),
                        reason: FailReason::Corrupt,
                        fault: ParentFault::Other,
                    });
                }
                Err(e) => {
                    let (reason, fault) = match &e {
                        Error::Parent { reason, fault, .. } => (*reason, *fault),
                        _ => (FailReason::Unreachable, ParentFault::Other),
                    };
                    match reason {
                        FailReason::Unreachable => self.avoid.always(&parent.peer_id),
                        // Without a digest the parent relays a piece the origin is sending
                        // right now: a stall may be the origin's, not the parent's.
                        FailReason::Timeout if a.sha256.is_some() => {
                            self.avoid.for_a_while(&parent.peer_id, STALLED_FOR)
                        }
                        _ if fault == ParentFault::RelayStalled => {
                            self.avoid.for_a_while(&parent.peer_id, RELAY_STALLED_FOR)
                        }
                        _ => {}
                    }
                    tracing::debug!(task = %self.file.id(), piece = a.piece, error = %e, "parent failed");
                    self.report_failure(a.piece, Some(parent.peer_id.clone()), reason, fault);
                    last_err = Some(e);
                }
            }
        }
        if a.origin {
            let started = Instant::now();
            // Peers the supernode sends here get the bytes as they arrive from the origin.
            let relay = self.file.relays().start(a.piece, range.end - range.start);
            match self.origin.fetch_relaying(range, &relay).await {
                Ok(bytes) => {
                    let stored = self.accept(a.piece, bytes, a.sha256, None, started).await;
                    if stored.inspect_err(|_| self.fail(a.piece, None, FailReason::Abandoned))? {
                        return Ok(());
                    }
                    relay.fail();
                    self.fail(a.piece, None, FailReason::Corrupt);
                    return Err(self.origin.err(
                        format!("piece {} differs from the digest on record", a.piece),
                        None,
                    ));
                }
                Err(e) => {
                    self.fail(a.piece, None, FailReason::Unreachable);
                    return Err(e);
                }
            }
        }
        if last_err.is_none() {
            // Nothing was tried (every parent avoided): release the assignment anyway.
            let parent = a.parents.first().map(|p| p.peer_id.clone());
            self.fail(a.piece, parent, FailReason::Abandoned);
        }
        Err(last_err.unwrap_or_else(|| Error::DownloadFailed {
            task: self.file.id(),
            message: format!("no usable source for piece {}", a.piece),
        }))
    }
}
