//! The scheduling policy: which pieces a peer should fetch next and from whom.
//!
//! 1. Pieces nobody holds and nobody has leased: from the origin, but only for one of the
//!    task's origin peers, one exclusive lease per piece, in ascending order. Only
//!    `max_origin_pieces_in_flight` leases run at once per task, shared evenly among the
//!    origin peers: the origin's uplink then finishes a few pieces quickly, one after the
//!    other, at different peers, and every peer can forward its share while the origin sends
//!    the next ones (the origin sends each byte once and peers' uplinks carry the rest).
//!    Leases come first in a reply: the origin's uplink is the resource every byte must cross,
//!    so a peer with room for one more piece takes its lease before a piece other peers
//!    could serve it later. (Peer pieces first let busy peers starve the origin: its uplink
//!    fell to 20–70 % for seconds at a time.)
//!    All leases may start at once. (A window opened one lease per available piece, like
//!    TCP's slow start, helped while peers passed on only whole pieces: the first piece then
//!    came at the origin's full rate. With origin fetches relayed (3.) it only kept the
//!    origin's uplink part idle: 16 nodes at 25 Mbit/s took 1.23–1.25 × the bound with it,
//!    1.16–1.17 × without; 8 nodes at 100 Mbit/s were the same either way.)
//! 2. Pieces some usable parent holds fill the rest, rarest first while fewer than
//!    `COMMON_HOLDERS` peers hold them; pieces at least that common count as equally rare.
//!    Among equally rare pieces the lower index goes first, jittered by up to `TIE_JITTER`
//!    pieces per request so that peers spread over different pieces. Near in-order arrival
//!    lets a client stream the blob (containerd unpacks as bytes arrive) and lets the peer
//!    hash it while it downloads, instead of both waiting for the last piece. (Strict
//!    rarest-first starved old, widely held pieces: a peer got piece 3 last, 13 s in, and
//!    had 100 MiB left to hash after its last piece.) Each piece gets up to `max_parents` parents
//!    ranked by a [`ParentSelector`]. Parents are the piece's holders and its relays: peers
//!    fetching it from a parent right now, which pass the bytes on as they arrive, so a
//!    new piece spreads as a tree instead of every peer queueing at its one holder (the
//!    first piece reached 8 peers in 0.24 s instead of 1.1 s). A piece whose best parent is saturated
//!    (`max_uploads_per_parent` assignments in flight) is skipped; saturated parents only
//!    appear as backups.
//! 3. Pieces arriving from the origin right now, with their lessee (and its relays) as
//!    parents and no digest yet: the bytes reach every peer while the origin sends them
//!    instead of one piece time later. The first whole copy reported defines the digest, as
//!    for an origin fetch, until the origin fetch itself reports (it wins over relayed
//!    copies); the blob's digest is the final check. These rank with the common
//!    pieces, by index, so they come after a peer's backlog: taken first, they left old pieces
//!    to the very end, and the in-order blob hash then had up to 80 MiB left to read after
//!    the last piece arrived (0.6–0.9 s in one 8-node run).
//!
//! The work per request is O(missing pieces) plus a bounded sample of holders per assigned
//! piece, never O(peers × pieces).
//!
//! Before all this, the pieces a request names as wanted (a lazy reader's) are served first
//! (`wanted`). Origin leases and their shares are in `origin`, the choice of parents for one
//! piece in `parents`; `schedule` puts the passes together.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_common::api::Assignment;

mod origin;
mod parents;
mod wanted;

use crate::config::SupernodeConfig;
use crate::state::task::{Slot, Task};
use origin::{lease_origin, may_use_origin, origin_room};
use parents::assign_from_peers;
use wanted::assign_wanted;
pub(crate) use wanted::Wanted;

/// Equally rare pieces are taken in index order give or take this many pieces.
const TIE_JITTER: u32 = 16;
/// Pieces held by at least this many peers are equally rare: enough holders that their
/// uplinks are not the constraint, so order by index (for streaming and hashing) instead.
const COMMON_HOLDERS: usize = 3;
/// Upper bound on assignments per request, whatever capacity a peer claims.
const MAX_CAPACITY: u32 = 256;
/// Unsaturated holders looked at per piece: enough to find lightly loaded parents among
/// thousands of holders without scanning them all.
const PARENT_SAMPLE: usize = 16;

/// The peer asking for work, as a [`ParentSelector`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub peer_id: &'a str,
    pub zone: Option<&'a str>,
}

/// A holder of the piece that could serve it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub peer_id: &'a str,
    /// Assignments in flight with this peer as first parent (for this task).
    pub uploads: u32,
    /// `uploads` reached `max_uploads_per_parent`.
    pub saturated: bool,
    /// Recent failures reported against it (decaying; about one per failure in the last minute).
    pub failures: f64,
    /// Measured bytes per millisecond as a parent; 0 when unknown.
    pub throughput: f64,
    /// Same `zone` label as the requester.
    pub same_zone: bool,
    /// Still receiving the piece itself: it relays the bytes as they arrive.
    pub relay: bool,
    pub(crate) slot: Slot,
}

/// Ranks the parents offered for a piece. The scheduler offers the first few, best first, and
/// counts the assignment against the first.
pub trait ParentSelector: Send + Sync + 'static {
    fn rank(&self, requester: &Requester<'_>, candidates: &mut [Candidate<'_>]);
}

/// Unsaturated first, then fewest uploads in flight, then whole holders before relays, then
/// fewest recent failures, then the requester's zone, then the highest throughput.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

impl ParentSelector for LeastLoaded {
    fn rank(&self, _requester: &Requester<'_>, candidates: &mut [Candidate<'_>]) {
        candidates.sort_by(|a, b| {
            a.saturated
                .cmp(&b.saturated)
                .then(a.uploads.cmp(&b.uploads))
                .then(a.relay.cmp(&b.relay))
                .then((a.failures.floor()).total_cmp(&b.failures.floor()))
                .then(b.same_zone.cmp(&a.same_zone))
                .then(b.throughput.total_cmp(&a.throughput))
        });
    }
}

/// The knobs of the policy, from the config.
pub(crate) struct Policy {
    pub max_parents: usize,
    pub max_uploads: u32,
    pub max_origin_peers: usize,
    pub max_origin_inflight: usize,
    pub assignment_timeout: Duration,
    pub lease_timeout: Duration,
    pub selector: Arc<dyn ParentSelector>,
}

impl Policy {
    pub fn new(config: &SupernodeConfig, selector: Arc<dyn ParentSelector>) -> Self {
        Policy {
            max_parents: config.max_parents as usize,
            max_uploads: config.max_uploads_per_parent,
            max_origin_peers: config.max_origin_peers_per_task as usize,
            max_origin_inflight: config.max_origin_pieces_in_flight as usize,
            assignment_timeout: config.assignment_timeout,
            lease_timeout: config.origin_lease_timeout,
            selector,
        }
    }
}

#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The peer holds every piece.
    Done,
    /// Nothing to do right now.
    Empty,
    Assigned {
        assignments: Vec<Assignment>,
        from_origin: usize,
    },
}

/// Computes (and records as in flight) up to `capacity` assignments for member `slot`.
pub(crate) fn schedule(
    task: &mut Task,
    slot: Slot,
    capacity: u32,
    avoid: &[String],
    wanted: &Wanted<'_>,
    policy: &Policy,
    now: Instant,
) -> Outcome {
    task.expire_member(slot, now);
    let Some(me) = task.member_mut(slot) else {
        return Outcome::Empty;
    };
    // A long poll woken later asks with the wants of its own time; the peer's latest request
    // (perhaps an immediate one sent since, for new ranges) says what it wants now.
    if wanted.fresh {
        me.want_order = wanted.pieces.to_vec();
        me.wants = wanted
            .sparse
            .then(|| wanted.pieces.iter().copied().collect());
    }
    let want_order = me.want_order.clone();
    let sparse = me.wants.is_some();
    if me.held.is_complete() {
        return Outcome::Done;
    }
    let cap = capacity.min(MAX_CAPACITY) as usize;
    if cap == 0 {
        return Outcome::Empty;
    }
    let avoid: HashSet<Slot> = avoid.iter().filter_map(|id| task.slot_of(id)).collect();
    let mut rng = rand::rng();

    let mut out = Vec::new();
    let wanted_from_origin = assign_wanted(
        task,
        slot,
        cap,
        &avoid,
        &want_order,
        sparse,
        policy,
        now,
        &mut out,
    );
    if sparse {
        return if out.is_empty() {
            Outcome::Empty
        } else {
            Outcome::Assigned {
                assignments: out,
                from_origin: wanted_from_origin,
            }
        };
    }
    let Some(me) = task.member(slot) else {
        return Outcome::Empty;
    };

    // (holders, jittered index, piece): sorting gives rarest first, then roughly in order.
    let mut from_peers: Vec<(usize, u32, u32)> = Vec::new();
    let mut from_origin: Vec<u32> = Vec::new();
    for p in me.held.missing() {
        if me.inflight.contains_key(&p) {
            continue;
        }
        let ps = &task.pieces[p as usize];
        // Held only by parents this peer gave up on (they stalled or went away, and the
        // supernode has not taken them out yet): as good as held by no one, for this peer.
        // The origin lease is exclusive, so one copy comes from the origin and others fetch
        // it from this peer.
        if ps.holders.iter().all(|h| avoid.contains(h)) {
            let leased = ps.lease.is_some_and(|l| l.expires > now);
            if !leased {
                if from_origin.len() < cap {
                    from_origin.push(p);
                }
            } else if !ps.relays.is_empty() {
                // Arriving from the origin right now: its lessee (and whoever relays from
                // it) passes the bytes on as they come, so peers need not wait for the
                // first whole copy.
                let jittered = p.saturating_add(rng.random_range(0..TIE_JITTER));
                from_peers.push((COMMON_HOLDERS, jittered, p));
            }
        } else if ps.digest.is_some() {
            let jittered = p.saturating_add(rng.random_range(0..TIE_JITTER));
            from_peers.push((ps.holders.len().min(COMMON_HOLDERS), jittered, p));
        }
    }

    // Origin leases first: the origin's uplink is the one resource every byte must cross
    // once, so a lease this peer may take must not wait behind peer pieces that any other
    // peer could serve later.
    // Only origin peers count their room: that is O(pieces + members), too much for each of
    // thousands of peers on a hot task. (Registering a peer only once it gets a lease kept
    // the origin-peer list short of full, so every peer counted: p99 scheduling latency went
    // from 43 to 74 ms with 5,000 peers.)
    if !from_origin.is_empty() && may_use_origin(task, slot, policy) {
        let room = origin_room(task, slot, policy, now);
        let room = room.min(cap.saturating_sub(out.len()));
        for piece in from_origin.into_iter().take(room) {
            // The lessee relays the piece while the origin sends it.
            out.push(lease_origin(task, slot, piece, true, policy, now));
        }
    }
    let origin_count = out.iter().filter(|a| a.origin).count();
    // Sort only as much as is likely needed: most pieces end up assigned from the first few.
    let head = (4 * cap + 32).min(from_peers.len());
    if head < from_peers.len() {
        from_peers.select_nth_unstable(head);
    }
    from_peers[..head].sort_unstable();
    let mut tail_sorted = head == from_peers.len();
    let mut i = 0;
    while i < from_peers.len() && out.len() < cap {
        if i == head && !tail_sorted {
            from_peers[head..].sort_unstable();
            tail_sorted = true;
        }
        let piece = from_peers[i].2;
        i += 1;
        if let Some(a) = assign_from_peers(task, slot, piece, &avoid, true, policy, now, &mut rng) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Outcome::Empty;
    }
    Outcome::Assigned {
        assignments: out,
        from_origin: origin_count,
    }
}
