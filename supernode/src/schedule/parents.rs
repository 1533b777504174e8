//! Parents for one piece: a bounded sample of its holders (and, while it is rare, its
//! relays), ranked by the [`ParentSelector`](super::ParentSelector), the assignment recorded.

use std::collections::HashSet;
use std::time::Instant;

use rand::Rng;
use shoal_common::api::{Assignment, Parent};

use super::{Candidate, Policy, Requester, COMMON_HOLDERS, PARENT_SAMPLE};
use crate::state::task::{Inflight, ParentRef, Slot, Task};
use crate::state::waiters::Wake;

/// Relay hops followed when looking for a cycle.
const MAX_RELAY_HOPS: usize = 8;

/// Whether `relay`'s copy of `piece` comes (through relays) from `requester`: offering it
/// would make a cycle that stalls until the fetchers' stall timeouts (seen once a parent
/// stalled: two peers each relaying the piece from the other).
fn relays_from(task: &Task, relay: Slot, requester: Slot, piece: u32) -> bool {
    let mut at = relay;
    for _ in 0..MAX_RELAY_HOPS {
        let Some(parent) = relay_source(task, at, piece) else {
            return false;
        };
        if parent.slot == requester {
            return true;
        }
        at = parent.slot;
    }
    // A chain this long is worth avoiding anyway.
    true
}

/// The peer `member`'s copy of `piece` is arriving from, if it is fetching it from a peer
/// (`None`: from the origin, or not fetching it).
fn relay_source(task: &Task, member: Slot, piece: u32) -> Option<ParentRef> {
    task.member(member)
        .and_then(|m| m.inflight.get(&piece))
        .and_then(|e| e.parent)
}

/// Picks parents for one piece and records the assignment; `None` when no usable parent has
/// a free upload slot. Without `relays`, only whole holders are offered, and the requester is
/// not offered to others while its copy arrives (a sparse reader's pieces).
#[allow(clippy::too_many_arguments)]
pub(super) fn assign_from_peers(
    task: &mut Task,
    slot: Slot,
    piece: u32,
    avoid: &HashSet<Slot>,
    relays: bool,
    policy: &Policy,
    now: Instant,
    rng: &mut impl Rng,
) -> Option<Assignment> {
    let me = task.member(slot)?;
    let requester = Requester {
        peer_id: &me.id,
        zone: me.zone.as_deref(),
    };
    let ps = &task.pieces[piece as usize];
    let holders = &ps.holders;
    let h = holders.len();
    if h == 0 && (!relays || ps.relays.is_empty()) {
        return None;
    }
    let start = if h == 0 { 0 } else { rng.random_range(0..h) };
    let mut candidates = Vec::new();
    let (mut fresh, mut saturated) = (0, 0);
    // Whole holders from a random start, then the relays, but only while the piece is
    // rare: relays speed up a new piece's spread, and relay chains over common pieces
    // only add links that can stall (with relays for every piece, 3 of 17 runs of the
    // 8-node benchmark stalled for seconds).
    let rare = relays && h < COMMON_HOLDERS;
    let relay_parents = ps.relays.iter().filter(|_| rare).map(|&s| (s, true));
    let order = (0..h)
        .filter_map(|k| holders.get_index((start + k) % h).map(|&s| (s, false)))
        .chain(relay_parents);
    for (s, relay) in order {
        if s == slot || avoid.contains(&s) {
            continue;
        }
        let Some(m) = task.member(s) else {
            continue;
        };
        // Holders exclude blacklisted and down members already; relays are listed before
        // anyone knows, so check.
        if relay && (task.blacklist.contains(&m.id) || m.down_until.is_some()) {
            continue;
        }
        if relay && relays_from(task, s, slot, piece) {
            continue;
        }
        let is_saturated = m.uploads >= policy.max_uploads;
        if is_saturated {
            if saturated >= policy.max_parents {
                continue;
            }
            saturated += 1;
        } else {
            fresh += 1;
        }
        candidates.push(Candidate {
            peer_id: &m.id,
            uploads: m.uploads,
            saturated: is_saturated,
            failures: m.failures.get(now),
            throughput: m.throughput,
            same_zone: requester.zone.is_some() && m.zone.as_deref() == requester.zone,
            relay,
            slot: s,
        });
        if fresh >= PARENT_SAMPLE {
            break;
        }
    }
    if fresh == 0 {
        return None;
    }
    policy.selector.rank(&requester, &mut candidates);
    candidates.truncate(policy.max_parents);
    let first = candidates.first()?;
    if first.saturated {
        // A custom selector preferred a saturated parent: respect the limit anyway.
        return None;
    }
    let first = first.slot;
    // Fallbacks are whole holders, or relays of the origin's bytes, never relays of another
    // peer's: a relay is checked for a cycle as the first parent only (the one recorded), and
    // two peers each falling back to the other's relay once their first parent failed waited
    // on each other until their stall timeouts (seen in fault-free swarms: a 1.5 s tail).
    let parents: Vec<Parent> = candidates
        .iter()
        .enumerate()
        .filter(|(i, c)| *i == 0 || !c.relay || relay_source(task, c.slot, piece).is_none())
        .map(|(_, c)| c)
        .filter_map(|c| {
            task.member(c.slot).map(|m| Parent {
                peer_id: m.id.to_string(),
                addr: m.addr,
            })
        })
        .collect();
    let sha256 = ps.digest;
    drop(candidates);

    let parent = task.member_mut(first)?;
    parent.uploads += 1;
    let parent = ParentRef {
        slot: first,
        serial: parent.serial,
    };
    task.member_mut(slot)?.inflight.insert(
        piece,
        Inflight {
            parent: Some(parent),
            expires: now + policy.assignment_timeout,
        },
    );
    // The requester relays the piece while it arrives: one more source for those who lack it.
    if relays {
        task.pieces[piece as usize].relays.insert(slot);
        task.wake(Wake::Piece {
            piece,
            budget: policy.max_uploads as usize,
            except: slot,
        });
    }
    Some(Assignment {
        piece,
        sha256,
        parents,
        origin: false,
    })
}
