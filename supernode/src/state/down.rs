//! Parents that stopped answering, taken out of scheduling as soon as their children notice
//! rather than when their heartbeats have been missed for `peer_ttl`.
//!
//! Until it expires, a killed peer keeps its place in its tasks: it is offered as a parent
//! (first, even: it has no uploads in flight left), the pieces only it holds are not given to
//! the origin, and the origin leases it held block their pieces. Before this, survivors of a
//! peer killed mid-swarm took about 6 times the fault-free time of `kill_peer`. Its children
//! notice within about a piece time (refused connections, the peer's stall timeouts), so
//! their reports decide. A member is *down* once
//! - one child's connection to it was refused: nothing listens where it said it serves, a
//!   fact about the parent rather than the path; or
//! - [`DOWN_REPORTERS`] different children (fewer when the task has fewer other members)
//!   reported connect failures or stalls within [`REPORT_WINDOW`], on pieces it holds
//!   whole. One child's report may be its own link's fault; a stall while the parent was
//!   still receiving the piece may be the fault of the parent's own source.
//!
//! A down member is not offered as a parent, its pieces count as unheld (those only it had
//! go back to the origin), its assignments in flight and origin leases are released, and it
//! leaves the origin peers. It is offered again after [`DOWN_FOR`]: a live peer whose piece
//! server was stuck gets another chance (and is taken out again if it still fails), a dead one
//! has expired by then.

use std::time::{Duration, Instant};

use shoal_common::api::FailReason;

use super::task::{Slot, Task};
use super::waiters::Wake;

/// Children whose reports together take a parent out.
pub(crate) const DOWN_REPORTERS: usize = 2;
/// Reports older than this no longer count towards [`DOWN_REPORTERS`].
pub(crate) const REPORT_WINDOW: Duration = Duration::from_secs(10);
/// How long a down member stays out of scheduling.
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(30);

impl Task {
    /// Whether `slot` is taken out of scheduling as a parent.
    pub fn is_down(&self, slot: Slot) -> bool {
        self.member(slot).is_some_and(|m| m.down_until.is_some())
    }

    /// Counts a failed transfer from `parent` reported by `reporter`; returns whether it took
    /// the parent out of scheduling.
    pub fn note_unanswered(
        &mut self,
        parent: Slot,
        reporter: Slot,
        piece: u32,
        reason: FailReason,
        refused: bool,
        now: Instant,
    ) -> bool {
        if self.is_down(parent) {
            return false;
        }
        // Other members that could report it: with one other member, its word is all there is.
        let needed = DOWN_REPORTERS
            .min(self.member_count().saturating_sub(1))
            .max(1);
        let Some(m) = self.member_mut(parent) else {
            return false;
        };
        let counts = match reason {
            FailReason::Unreachable => true,
            FailReason::Timeout => m.held.contains(piece),
            _ => false,
        };
        if !refused && !counts {
            return false;
        }
        m.unanswered
            .retain(|&(s, at)| s != reporter && now.saturating_duration_since(at) < REPORT_WINDOW);
        m.unanswered.push((reporter, now));
        if !refused && m.unanswered.len() < needed {
            return false;
        }
        self.take_down(parent, now);
        true
    }

    /// Stops offering `slot` as a parent and gives back what it had claimed.
    fn take_down(&mut self, slot: Slot, now: Instant) {
        let Some(m) = self.member_mut(slot) else {
            return;
        };
        m.down_until = Some(now + DOWN_FOR);
        m.unanswered.clear();
        let id = m.id.clone();
        let serial = m.serial;
        let held: Vec<u32> = m.held.iter().collect();
        let inflight: Vec<u32> = m.inflight.keys().copied().collect();
        tracing::info!(task = %self.id, peer = %id, "parent stopped answering: taken out of scheduling");
        for p in held {
            self.unlist_holder(slot, p);
        }
        for p in inflight {
            self.release(slot, p);
        }
        // Fetches from it are doomed too: their fetchers stop being offered as relays of those
        // pieces (a relay chain rooted at a stalled parent stalls hop by hop), and a piece
        // only it held goes to the origin at once instead of after those fetches fail.
        let children: Vec<(Slot, u32)> = self
            .members()
            .flat_map(|(s, m)| {
                m.inflight
                    .iter()
                    .filter(|(_, e)| {
                        e.parent
                            .is_some_and(|p| p.slot == slot && p.serial == serial)
                    })
                    .map(move |(&p, _)| (s, p))
            })
            .collect();
        for (child, p) in children {
            self.release(child, p);
        }
        self.origin_peers.retain(|&s| s != slot);
        self.wake(Wake::All);
    }

    /// Offers members again whose time out of scheduling is over. Returns whether any was.
    pub fn restore_down(&mut self, now: Instant) -> bool {
        let due: Vec<Slot> = self
            .members()
            .filter(|(_, m)| m.down_until.is_some_and(|t| t <= now))
            .map(|(s, _)| s)
            .collect();
        for &slot in &due {
            let Some(m) = self.member_mut(slot) else {
                continue;
            };
            m.down_until = None;
            let held: Vec<u32> = m.held.iter().collect();
            // Its pieces are listed again (unless it is blacklisted).
            for p in held {
                self.add_holding(slot, p);
            }
        }
        !due.is_empty()
    }
}
