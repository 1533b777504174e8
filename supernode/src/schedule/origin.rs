//! Origin leases: one exclusive lease per piece, for a bounded set of origin peers, each with
//! an even share of the task's origin fetches in flight.

use std::time::Instant;

use shoal_common::api::Assignment;

use super::Policy;
use crate::state::task::{Inflight, Lease, Slot, Task};
use crate::state::waiters::Wake;

/// Leases `piece` from the origin to `slot` and records it in flight. With `relay`, other
/// peers may be sent to `slot` for the bytes while they arrive.
pub(super) fn lease_origin(
    task: &mut Task,
    slot: Slot,
    piece: u32,
    relay: bool,
    policy: &Policy,
    now: Instant,
) -> Assignment {
    let expires = now + policy.lease_timeout;
    let ps = &mut task.pieces[piece as usize];
    ps.lease = Some(Lease { slot, expires });
    if relay {
        ps.relays.insert(slot);
        task.wake(Wake::Piece {
            piece,
            budget: policy.max_uploads as usize,
            except: slot,
        });
    }
    if let Some(me) = task.member_mut(slot) {
        me.inflight.insert(
            piece,
            Inflight {
                parent: None,
                expires,
            },
        );
    }
    Assignment {
        piece,
        sha256: task.pieces[piece as usize].digest,
        parents: Vec::new(),
        origin: true,
    }
}

/// Whether `slot` is, or may become, one of the task's origin peers.
pub(super) fn may_use_origin(task: &mut Task, slot: Slot, policy: &Policy) -> bool {
    if task.origin_peers.contains(&slot) {
        return true;
    }
    // Its children cannot reach it: what it fetched from the origin would reach nobody else,
    // and the origin would send those pieces again to someone who can pass them on.
    if task.is_down(slot) {
        return false;
    }
    if task.origin_peers.len() < policy.max_origin_peers {
        task.origin_peers.push(slot);
        return true;
    }
    false
}

/// How many more origin leases `slot` may take now: what is left of the task's
/// `max_origin_inflight`, and at most an even share of it per origin peer (so that the pieces being fetched from the origin
/// are at different peers, whose uplinks then pass them on). O(pieces + members), like the
/// rest of a schedule.
pub(super) fn origin_room(task: &Task, slot: Slot, policy: &Policy, now: Instant) -> usize {
    let (mut busy, mut mine) = (0usize, 0usize);
    for lease in task.pieces.iter().filter_map(|ps| ps.lease.as_ref()) {
        if lease.expires > now {
            busy += 1;
            mine += usize::from(lease.slot == slot);
        }
    }
    // Sparse members take leases for what their readers wait for, outside this share.
    let wanting = task
        .members()
        .filter(|(_, m)| !m.held.is_complete() && m.wants.is_none())
        .count()
        .clamp(1, policy.max_origin_peers.max(1));
    let share = policy.max_origin_inflight.div_ceil(wanting).max(1);
    policy
        .max_origin_inflight
        .saturating_sub(busy)
        .min(share.saturating_sub(mine))
}
