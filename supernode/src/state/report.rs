//! Applying a peer's [`PieceReport`] to a task: which finished pieces to believe, and what
//! failed transfers say about the parents involved.

use std::time::Instant;

use shoal_common::api::{FailReason, PieceReport, ReportReply};

use super::task::{Slot, Task};
use super::waiters::Wake;
use crate::error::Error;

/// Reason label for a piece whose bytes did not match the recorded digest.
pub(crate) const DIGEST_MISMATCH: &str = "digest_mismatch";

pub(crate) struct ReportOutcome {
    pub reply: ReportReply,
    /// One reason label per failure counted, for metrics.
    pub failures: Vec<&'static str>,
    /// Parents this report took out of scheduling (see `down`).
    pub downed: u64,
}

pub(crate) fn reason_label(reason: FailReason) -> &'static str {
    match reason {
        FailReason::Unreachable => "unreachable",
        FailReason::NotFound => "not_found",
        FailReason::Corrupt => "corrupt",
        FailReason::Timeout => "timeout",
        FailReason::Interrupted => "interrupted",
        FailReason::Abandoned => "abandoned",
    }
}

impl Task {
    /// Applies a report from member `slot`. The whole report is refused (nothing applied) when
    /// it names a piece past the end.
    pub fn apply_report(
        &mut self,
        slot: Slot,
        report: &PieceReport,
        max_uploads: u32,
        now: Instant,
    ) -> Result<ReportOutcome, Error> {
        let n = self.piece_count();
        let indices = report.done.iter().map(|d| d.piece);
        if let Some(p) = indices
            .chain(report.failed.iter().map(|f| f.piece))
            .find(|&p| p >= n)
        {
            return Err(Error::bad(format!(
                "piece {p} is past the end of task {} ({n} pieces)",
                self.id
            )));
        }
        let mut reply = ReportReply::default();
        let mut failures = Vec::new();
        let mut downed = 0;
        for d in &report.done {
            let p = d.piece;
            let i = p as usize;
            let recorded = self.pieces[i].digest;
            let parent = d
                .from
                .as_deref()
                .and_then(|id| self.slot_of(id))
                .filter(|&s| s != slot);
            if self.member(slot).is_some_and(|m| m.held.contains(p)) {
                // Said before (a retried report): fine as long as it says the same.
                self.release(slot, p);
                if recorded == Some(d.sha256) {
                    reply.accepted += 1;
                } else {
                    reply.rejected.push(p);
                }
                continue;
            }
            let leased = self.pieces[i].lease.is_some_and(|l| l.slot == slot);
            let released = self.release(slot, p);
            let ok = match (&d.from, recorded) {
                (None, Some(r)) if leased && self.pieces[i].digest_by_relay => {
                    // The origin fetch a relayed copy came from: it has the registry's bytes
                    // first hand, so it wins. A relayed copy that differs was corrupted (or
                    // lied about) on the way; its holders are no longer offered.
                    if r != d.sha256 {
                        let holders: Vec<Slot> = self.pieces[i].holders.iter().copied().collect();
                        for h in holders {
                            self.drop_holding(h, p);
                        }
                        self.pieces[i].digest = Some(d.sha256);
                        failures.push(DIGEST_MISMATCH);
                    }
                    self.pieces[i].digest_by_relay = false;
                    true
                }
                (_, Some(r)) => r == d.sha256,
                (from, None) => {
                    // Trust the first whole copy of an origin fetch: from the origin, only
                    // by a peer allowed to go there; from a peer, only as assigned (the
                    // supernode offers a piece without digest only as a relay of a live
                    // origin fetch). The blob's digest is the final check either way.
                    let allowed = match from {
                        None => leased || self.origin_peers.contains(&slot),
                        Some(_) => released.as_ref().is_some_and(|e| e.parent.is_some()),
                    };
                    if allowed {
                        self.pieces[i].digest = Some(d.sha256);
                        self.pieces[i].digest_by_relay = from.is_some();
                    }
                    allowed
                }
            };
            if ok {
                self.add_holding(slot, p);
                if let Some(parent) = parent {
                    self.record_throughput(parent, p, d.millis);
                }
                reply.accepted += 1;
                self.wake(Wake::Piece {
                    piece: p,
                    budget: max_uploads as usize + 1,
                    except: slot,
                });
                continue;
            }
            reply.rejected.push(p);
            if d.from.is_some() {
                failures.push(DIGEST_MISMATCH);
                if let Some(parent) = parent {
                    self.note_failure(parent, now);
                }
            }
            if let Some(entry) = released {
                self.wake_released(slot, p, entry.parent.is_none());
            }
        }
        for f in &report.failed {
            let p = f.piece;
            failures.push(reason_label(f.reason));
            let released = self.release(slot, p);
            let parent = f
                .parent
                .as_deref()
                .and_then(|id| self.slot_of(id))
                .filter(|&s| s != slot);
            if let Some(parent) = parent {
                match f.reason {
                    FailReason::Corrupt => {
                        self.drop_holding(parent, p);
                        self.strike(parent, now);
                    }
                    FailReason::NotFound => self.drop_holding(parent, p),
                    FailReason::Unreachable | FailReason::Timeout | FailReason::Interrupted => {
                        self.note_failure(parent, now);
                        if self.note_unanswered(parent, slot, p, f.reason, f.refused, now) {
                            downed += 1;
                        }
                    }
                    FailReason::Abandoned => {}
                }
            }
            if let Some(entry) = released {
                self.wake_released(slot, p, entry.parent.is_none());
            }
        }
        for cut in &report.uploads_cut {
            self.upload_cut(slot, cut.piece, &cut.child);
        }
        Ok(ReportOutcome {
            reply,
            failures,
            downed,
        })
    }

    /// `parent`'s upload of `piece` to `child` broke off: the child's assignment is over,
    /// whether the child gave up (it reports that too) or died (it never will). Only an
    /// assignment still naming `parent` is released: the child may have been given the piece
    /// again, elsewhere, meanwhile.
    fn upload_cut(&mut self, parent: Slot, piece: u32, child: &str) {
        let Some(child) = self.slot_of(child).filter(|&c| c != parent) else {
            return;
        };
        let Some(serial) = self.member(parent).map(|m| m.serial) else {
            return;
        };
        let names_parent = self
            .member(child)
            .and_then(|m| m.inflight.get(&piece))
            .and_then(|e| e.parent)
            .is_some_and(|p| p.slot == parent && p.serial == serial);
        if names_parent && self.release(child, piece).is_some() {
            self.wake_released(child, piece, false);
        }
    }

    /// A fetch ended without a new holder: a parent's upload slot or an origin lease is free.
    fn wake_released(&mut self, slot: Slot, piece: u32, was_origin: bool) {
        if was_origin {
            self.wake(Wake::All);
        } else {
            self.wake(Wake::Piece {
                piece,
                budget: 1,
                except: slot,
            });
        }
    }
}
