//! What `GET /api/v1/status` returns: one snapshot of everything the status page shows (the
//! peer and task listings plus bytes by source), and [`SourceBytes`], the counters behind
//! "bytes by source", fed by piece reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_common::api::PieceReport;

use crate::state::task::{Slot, Task};
use crate::state::State;
use crate::status::{PeerStatus, TaskStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// The supernode's version.
    pub version: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// Piece bytes peers reported fetching since the supernode started, by source.
    pub bytes: BytesBySource,
    /// As `GET /api/v1/peers`.
    pub peers: Vec<PeerStatus>,
    pub tasks: Vec<TaskSummary>,
}

/// Bytes of pieces newly held by a peer, by where the peer fetched them. Counted from piece
/// reports, so they cover what the live supernode was told, not what peers fetched before it
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BytesBySource {
    pub origin: u64,
    pub peers: u64,
}

/// A task as `GET /api/v1/tasks` lists it, plus what the page would otherwise count itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    #[serde(flatten)]
    pub status: TaskStatus,
    /// Members holding every piece.
    pub completed_peers: u32,
}

impl From<TaskStatus> for TaskSummary {
    fn from(status: TaskStatus) -> Self {
        let completed_peers = status.peers.iter().filter(|p| p.completed).count() as u32;
        TaskSummary {
            status,
            completed_peers,
        }
    }
}

/// Takes the snapshot (each listing is consistent per peer and per task, not across them).
pub(crate) fn summary(state: &State) -> StatusSummary {
    let generated_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    StatusSummary {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        generated_at_ms,
        bytes: state.bytes.get(),
        peers: state.list_peers(),
        tasks: state.list_tasks().into_iter().map(Into::into).collect(),
    }
}

/// A piece named in a report that its reporter did not hold before: whether it came from the
/// origin, to be counted once the report is applied if the reporter holds it then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fresh {
    piece: u32,
    from_origin: bool,
}

/// Counters behind [`BytesBySource`]. Lock-free; updated under the task's lock by
/// `State::report`, read by the status endpoint.
#[derive(Debug, Default)]
pub(crate) struct SourceBytes {
    origin: AtomicU64,
    peers: AtomicU64,
}

impl SourceBytes {
    /// Before a report is applied: the finished pieces it names that member `slot` does not
    /// hold yet (a retried report must not count twice).
    pub fn unheld(t: &Task, slot: Slot, report: &PieceReport) -> Vec<Fresh> {
        let Some(member) = t.member(slot) else {
            return Vec::new();
        };
        report
            .done
            .iter()
            .filter(|d| d.piece < t.piece_count() && !member.held.contains(d.piece))
            .map(|d| Fresh {
                piece: d.piece,
                from_origin: d.from.is_none(),
            })
            .collect()
    }

    /// After the report is applied: counts the pieces of `fresh` member `slot` holds now (the
    /// accepted ones).
    pub fn count(&self, t: &Task, slot: Slot, fresh: &[Fresh]) {
        let Some(member) = t.member(slot) else {
            return;
        };
        let (mut origin, mut peers) = (0u64, 0u64);
        for f in fresh.iter().filter(|f| member.held.contains(f.piece)) {
            let len = t.layout.range(f.piece).map_or(0, |r| r.end - r.start);
            if f.from_origin {
                origin = origin.saturating_add(len);
            } else {
                peers = peers.saturating_add(len);
            }
        }
        if origin > 0 {
            self.origin.fetch_add(origin, Ordering::Relaxed);
        }
        if peers > 0 {
            self.peers.fetch_add(peers, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> BytesBySource {
        BytesBySource {
            origin: self.origin.load(Ordering::Relaxed),
            peers: self.peers.load(Ordering::Relaxed),
        }
    }
}
