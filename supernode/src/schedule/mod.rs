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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_common::api::{Assignment, Parent};

use crate::config::SupernodeConfig;
use crate::state::task::{Inflight, Lease, ParentRef, Slot, Task};
use crate::state::waiters::Wake;

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
        if ps.holders.is_empty() {
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

/// The pieces a request names as wanted, most urgent first: what readers wait for.
pub(crate) struct Wanted<'a> {
    pub pieces: &'a [u32],
    /// The peer wants only these (a lazy reader), not the whole blob.
    pub sparse: bool,
    /// The request's first computation: it replaces the member's wants. A long poll's later
    /// computations use the member's wants as the latest request left them.
    pub fresh: bool,
}

/// Assigns the wanted pieces first, into `out` (up to `cap` in all); returns how many go to
/// the origin. A wanted piece comes from a holder whose copy is verified (a digest the origin
/// fetch reported, never a relayed one still unconfirmed, never a relay of bytes still
/// arriving: a sparse reader has no whole-blob digest to catch a bad copy later); failing
/// that, from the origin under an exclusive lease, which any peer may take for a piece its
/// readers wait for (the origin still sends each piece once). A piece leased to someone else
/// is left alone: its report wakes this peer.
#[allow(clippy::too_many_arguments)]
fn assign_wanted(
    task: &mut Task,
    slot: Slot,
    cap: usize,
    avoid: &HashSet<Slot>,
    wanted: &[u32],
    sparse: bool,
    policy: &Policy,
    now: Instant,
    out: &mut Vec<Assignment>,
) -> usize {
    let mut rng = rand::rng();
    let mut origin = 0;
    let mut seen = HashSet::new();
    for &piece in wanted {
        if out.len() >= cap {
            break;
        }
        if piece >= task.piece_count() || !seen.insert(piece) {
            continue;
        }
        let Some(me) = task.member(slot) else {
            break;
        };
        if me.held.contains(piece) || me.inflight.contains_key(&piece) {
            continue;
        }
        let ps = &task.pieces[piece as usize];
        let leased = ps.lease.is_some_and(|l| l.expires > now);
        if !ps.holders.is_empty() {
            // A relayed copy defined the digest and its origin fetch is still running: wait
            // for the fetch to confirm (or correct) it.
            if ps.digest.is_some() && !(ps.digest_by_relay && leased) {
                if let Some(a) =
                    assign_from_peers(task, slot, piece, avoid, false, policy, now, &mut rng)
                {
                    out.push(a);
                }
            }
        } else if !leased {
            out.push(lease_origin(task, slot, piece, !sparse, policy, now));
            origin += 1;
        }
    }
    origin
}

/// Leases `piece` from the origin to `slot` and records it in flight. With `relay`, other
/// peers may be sent to `slot` for the bytes while they arrive.
fn lease_origin(
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
fn may_use_origin(task: &mut Task, slot: Slot, policy: &Policy) -> bool {
    if task.origin_peers.contains(&slot) {
        return true;
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
fn origin_room(task: &Task, slot: Slot, policy: &Policy, now: Instant) -> usize {
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

/// Picks parents for one piece and records the assignment; `None` when no usable parent has
/// a free upload slot. Without `relays`, only whole holders are offered, and the requester is
/// not offered to others while its copy arrives (a sparse reader's pieces).
#[allow(clippy::too_many_arguments)]
fn assign_from_peers(
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
        // Holders exclude blacklisted members already; relays are listed before anyone
        // knows, so check.
        if relay && task.blacklist.contains(&m.id) {
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
    let parents: Vec<Parent> = candidates
        .iter()
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
