//! The wanted-pieces pass, before the rest of a schedule: the pieces a request names as
//! wanted (what a lazy reader waits for), from a verified holder or else under an origin
//! lease any peer may take.

use std::collections::HashSet;
use std::time::Instant;

use shoal_common::api::Assignment;

use super::origin::lease_origin;
use super::parents::assign_from_peers;
use super::Policy;
use crate::state::task::{Slot, Task};

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
pub(super) fn assign_wanted(
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
