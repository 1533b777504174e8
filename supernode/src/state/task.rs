//! One task's bookkeeping: its layout, the digest recorded for each piece, who holds each piece,
//! what is in flight to whom, the origin leases, and the peers waiting for news.
//!
//! Invariants kept by every method here:
//! - a member is in `pieces[p].holders` iff it holds `p` and is neither blacklisted nor down
//!   (see `down`);
//! - `available` counts the pieces with at least one holder;
//! - a member's `uploads` counts the in-flight entries (of any member) naming it as parent;
//! - `pieces[p].lease` names a member that has `p` in flight from the origin;
//! - `pieces[p].relays` lists the members that have `p` in flight from a parent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexSet;
use shoal_common::api::{PieceDigest, TaskInfo};
use shoal_common::{Digest, PieceLayout, PieceSet, TaskId};
use tokio::sync::oneshot;

use super::member::Decaying;
pub(crate) use super::member::{Inflight, Member, ParentRef};
use super::waiters::{Waiters, Wake};

/// Index of a member in [`Task::members`]; reused after the member leaves.
pub(crate) type Slot = u32;

pub(crate) struct PieceState {
    /// What the origin served for this piece: recorded by the first whole copy reported,
    /// from the origin or relayed from an origin fetch.
    pub digest: Option<Digest>,
    /// `digest` came from a relayed copy and the origin fetch has not confirmed it yet.
    pub digest_by_relay: bool,
    pub holders: IndexSet<Slot>,
    /// Members fetching this piece from a parent: they pass it on while it arrives
    /// (cut-through), so they can serve it too.
    pub relays: IndexSet<Slot>,
    pub lease: Option<Lease>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub slot: Slot,
    pub expires: Instant,
}

pub(crate) struct Task {
    pub id: TaskId,
    pub layout: PieceLayout,
    pub url: String,
    pub pieces: Vec<PieceState>,
    members: Vec<Option<Member>>,
    free: Vec<Slot>,
    by_id: HashMap<Arc<str>, Slot>,
    next_serial: u64,
    /// Members allowed to fetch from the origin.
    pub origin_peers: Vec<Slot>,
    /// Peers that served corrupt pieces of this task too often (kept when they leave).
    pub blacklist: HashSet<Arc<str>>,
    pub available: u32,
    waiters: Waiters,
    /// Since when the task has had no members (for garbage collection).
    pub empty_since: Option<Instant>,
    /// Set when garbage-collected: whoever still holds the `Arc` must look the task up again.
    pub removed: bool,
}

impl Task {
    pub fn new(id: TaskId, layout: PieceLayout, url: String, now: Instant) -> Self {
        let pieces = (0..layout.piece_count())
            .map(|_| PieceState {
                digest: None,
                digest_by_relay: false,
                holders: IndexSet::new(),
                relays: IndexSet::new(),
                lease: None,
            })
            .collect();
        Task {
            id,
            layout,
            url,
            pieces,
            members: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            next_serial: 0,
            origin_peers: Vec::new(),
            blacklist: HashSet::new(),
            available: 0,
            waiters: Waiters::default(),
            empty_since: Some(now),
            removed: false,
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.layout.piece_count()
    }

    pub fn member_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn slot_of(&self, id: &str) -> Option<Slot> {
        self.by_id.get(id).copied()
    }

    pub fn member(&self, slot: Slot) -> Option<&Member> {
        self.members.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn member_mut(&mut self, slot: Slot) -> Option<&mut Member> {
        self.members.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub fn members(&self) -> impl Iterator<Item = (Slot, &Member)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i as Slot, m)))
    }

    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            task_id: self.id,
            layout: self.layout,
            peers: self.member_count() as u32,
            pieces_available: self.available,
        }
    }

    /// Adds a peer (or refreshes its address and zone) and returns its slot.
    pub fn join(
        &mut self,
        id: &Arc<str>,
        incarnation: u64,
        addr: SocketAddr,
        zone: Option<Arc<str>>,
        now: Instant,
    ) -> Slot {
        if let Some(slot) = self.slot_of(id) {
            if let Some(m) = self.member_mut(slot) {
                if m.incarnation == incarnation {
                    m.addr = addr;
                    m.zone = zone;
                    return slot;
                }
            }
            // A stale registration of an earlier incarnation: start afresh.
            self.leave(slot, now);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let member = Member {
            id: id.clone(),
            incarnation,
            serial,
            joined_at: Instant::now(),
            addr,
            zone,
            held: PieceSet::new(self.piece_count()),
            inflight: HashMap::new(),
            wants: None,
            want_order: Vec::new(),
            uploads: 0,
            failures: Decaying::new(now),
            strikes: 0,
            throughput: 0.0,
            unanswered: Vec::new(),
            down_until: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.members[slot as usize] = Some(member);
                slot
            }
            None => {
                self.members.push(Some(member));
                (self.members.len() - 1) as Slot
            }
        };
        self.by_id.insert(id.clone(), slot);
        self.empty_since = None;
        slot
    }

    /// Removes a member with everything it holds, has in flight and has leased.
    pub fn leave(&mut self, slot: Slot, now: Instant) {
        let pieces: Vec<u32> = match self.member(slot) {
            Some(m) => m.held.iter().collect(),
            None => return,
        };
        let available = self.available;
        for p in pieces {
            self.drop_holding(slot, p);
        }
        let inflight: Vec<u32> = self
            .member(slot)
            .map(|m| m.inflight.keys().copied().collect())
            .unwrap_or_default();
        // Released upload slots or leases, a free origin-peer place, or pieces nobody holds
        // any more (the origin's again) may help others.
        let frees_something =
            !inflight.is_empty() || self.origin_peers.contains(&slot) || self.available < available;
        for p in inflight {
            self.release(slot, p);
        }
        self.origin_peers.retain(|&s| s != slot);
        if let Some(m) = self.members[slot as usize].take() {
            self.by_id.remove(&m.id);
        }
        self.free.push(slot);
        if self.by_id.is_empty() {
            self.empty_since = Some(now);
        }
        if frees_something {
            self.wake(Wake::All);
        }
    }

    /// Leaves if the member belongs to that incarnation of the peer.
    pub fn leave_incarnation(&mut self, id: &str, incarnation: u64, now: Instant) {
        if let Some(slot) = self.slot_of(id) {
            if self
                .member(slot)
                .is_some_and(|m| m.incarnation == incarnation)
            {
                self.leave(slot, now);
            }
        }
    }

    pub fn is_blacklisted(&self, slot: Slot) -> bool {
        self.member(slot)
            .is_some_and(|m| self.blacklist.contains(&m.id))
    }

    pub fn add_holding(&mut self, slot: Slot, piece: u32) {
        let unlisted = self.is_blacklisted(slot) || self.is_down(slot);
        let Some(m) = self.member_mut(slot) else {
            return;
        };
        m.held.insert(piece);
        if unlisted {
            return;
        }
        if let Some(ps) = self.pieces.get_mut(piece as usize) {
            if ps.holders.insert(slot) && ps.holders.len() == 1 {
                self.available += 1;
            }
        }
    }

    pub fn drop_holding(&mut self, slot: Slot, piece: u32) {
        if let Some(m) = self.member_mut(slot) {
            m.held.remove(piece);
        }
        self.unlist_holder(slot, piece);
    }

    pub(super) fn unlist_holder(&mut self, slot: Slot, piece: u32) {
        if let Some(ps) = self.pieces.get_mut(piece as usize) {
            if ps.holders.swap_remove(&slot) && ps.holders.is_empty() {
                self.available -= 1;
            }
        }
    }

    /// Keeps a blacklisted member's pieces for itself but stops offering it as a parent.
    pub fn blacklist_member(&mut self, slot: Slot) {
        let Some(m) = self.member(slot) else {
            return;
        };
        let id = m.id.clone();
        let pieces: Vec<u32> = m.held.iter().collect();
        tracing::info!(task = %self.id, peer = %id, "blacklisting parent after repeated corrupt pieces");
        self.blacklist.insert(id);
        for p in pieces {
            self.unlist_holder(slot, p);
        }
        self.wake(Wake::All);
    }

    /// A restarted peer declares what it holds: its held set becomes the declared pieces whose
    /// digest matches the record (or is recorded now, when there is none). Returns how many.
    pub fn set_have(&mut self, slot: Slot, have: &PieceSet, digests: &[PieceDigest]) -> u32 {
        let declared: HashMap<u32, Digest> = digests.iter().map(|d| (d.piece, d.sha256)).collect();
        let old: Vec<u32> = match self.member(slot) {
            Some(m) => m.held.iter().filter(|&p| !have.contains(p)).collect(),
            None => return 0,
        };
        for p in old {
            self.drop_holding(slot, p);
        }
        let mut accepted = 0;
        for p in have.iter() {
            let Some(&digest) = declared.get(&p) else {
                self.drop_holding(slot, p);
                continue;
            };
            let Some(ps) = self.pieces.get_mut(p as usize) else {
                continue;
            };
            match ps.digest {
                Some(recorded) if recorded != digest => {
                    self.drop_holding(slot, p);
                    continue;
                }
                Some(_) => {}
                None => ps.digest = Some(digest),
            }
            self.add_holding(slot, p);
            accepted += 1;
        }
        if accepted > 0 {
            self.wake(Wake::All);
        }
        accepted
    }

    /// Ends a member's in-flight fetch of a piece: frees the parent's upload slot or the lease.
    pub fn release(&mut self, slot: Slot, piece: u32) -> Option<Inflight> {
        let entry = self.member_mut(slot)?.inflight.remove(&piece)?;
        match entry.parent {
            Some(parent) => {
                if let Some(ps) = self.pieces.get_mut(piece as usize) {
                    ps.relays.swap_remove(&slot);
                }
                if let Some(p) = self.member_mut(parent.slot) {
                    if p.serial == parent.serial {
                        p.uploads = p.uploads.saturating_sub(1);
                    }
                }
            }
            None => {
                if let Some(ps) = self.pieces.get_mut(piece as usize) {
                    if ps.lease.is_some_and(|l| l.slot == slot) {
                        ps.lease = None;
                    }
                    ps.relays.swap_remove(&slot);
                }
            }
        }
        Some(entry)
    }

    /// Releases expired in-flight entries of one member. Returns whether any was released.
    pub fn expire_member(&mut self, slot: Slot, now: Instant) -> bool {
        let expired: Vec<u32> = match self.member(slot) {
            Some(m) => m
                .inflight
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(&p, _)| p)
                .collect(),
            None => return false,
        };
        for &p in &expired {
            self.release(slot, p);
        }
        !expired.is_empty()
    }

    /// Releases all expired entries and leases, drops closed waiters. Returns whether any
    /// entry was released (waiters have then been woken).
    pub fn expire(&mut self, now: Instant) -> bool {
        let slots: Vec<Slot> = self.members().map(|(s, _)| s).collect();
        let mut released = false;
        for slot in slots {
            released |= self.expire_member(slot, now);
        }
        for ps in &mut self.pieces {
            if let Some(lease) = ps.lease.filter(|l| l.expires <= now) {
                ps.lease = None;
                ps.relays.swap_remove(&lease.slot);
                released = true;
            }
        }
        released |= self.restore_down(now);
        self.waiters.prune();
        if released {
            self.wake(Wake::All);
        }
        released
    }

    pub fn note_failure(&mut self, slot: Slot, now: Instant) {
        if let Some(m) = self.member_mut(slot) {
            m.failures.add(now, 1.0);
        }
    }

    /// Counts a corrupt piece against a parent; returns whether it is now blacklisted.
    pub fn strike(&mut self, slot: Slot, now: Instant) -> bool {
        let Some(m) = self.member_mut(slot) else {
            return false;
        };
        m.strikes += 1;
        m.failures.add(now, 1.0);
        let out = m.strikes >= 3;
        if out && !self.is_blacklisted(slot) {
            self.blacklist_member(slot);
        }
        out
    }

    pub fn record_throughput(&mut self, slot: Slot, piece: u32, millis: u64) {
        let Some(range) = self.layout.range(piece) else {
            return;
        };
        if millis == 0 {
            return;
        }
        let rate = (range.end - range.start) as f64 / millis as f64;
        if let Some(m) = self.member_mut(slot) {
            m.throughput = if m.throughput == 0.0 {
                rate
            } else {
                0.7 * m.throughput + 0.3 * rate
            };
        }
    }

    /// Registers a long-poll waiter; the receiver fires (or is dropped) when something changed.
    pub fn add_waiter(&mut self, slot: Slot) -> oneshot::Receiver<()> {
        self.waiters.add(slot)
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Wakes the waiters that may benefit from a change (see [`Waiters::wake`]).
    pub fn wake(&mut self, hint: Wake) {
        let members = &self.members;
        self.waiters.wake(hint, |slot, piece| {
            members
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_none_or(|m| {
                    !m.held.contains(piece)
                        && !m.inflight.contains_key(&piece)
                        && m.wants.as_ref().is_none_or(|w| w.contains(&piece))
                })
        });
    }
}
