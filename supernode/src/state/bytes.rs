//! Bytes by source: how many piece bytes peers fetched from the origin and from other peers,
//! counted from piece reports as the state applies them (shown by `GET /api/v1/status`).

use std::sync::atomic::{AtomicU64, Ordering};

use shoal_common::api::PieceReport;

use super::task::{Slot, Task};
use crate::status::BytesBySource;

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
