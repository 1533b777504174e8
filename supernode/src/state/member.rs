//! One member of a task: a peer registered on it, with the pieces it holds, what it has in
//! flight and from whom, and how it has done as a parent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_common::PieceSet;

use super::task::Slot;

/// Failure counts halve this often, so that a parent that had a bad minute recovers.
const FAILURE_HALF_LIFE: Duration = Duration::from_secs(60);

/// A parent named by an in-flight entry. `serial` tells whether the slot still holds that
/// member (slots are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParentRef {
    pub slot: Slot,
    pub serial: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Inflight {
    /// `None`: from the origin, under a lease.
    pub parent: Option<ParentRef>,
    pub expires: Instant,
}

/// A count that decays exponentially over time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decaying {
    value: f64,
    at: Instant,
}

impl Decaying {
    pub(super) fn new(now: Instant) -> Self {
        Decaying {
            value: 0.0,
            at: now,
        }
    }

    pub fn get(&self, now: Instant) -> f64 {
        if self.value == 0.0 {
            return 0.0;
        }
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(age / FAILURE_HALF_LIFE.as_secs_f64())
    }

    pub(super) fn add(&mut self, now: Instant, x: f64) {
        self.value = self.get(now) + x;
        self.at = now;
    }
}

pub(crate) struct Member {
    pub id: Arc<str>,
    /// The peer registration this member belongs to (see `PeerRecord::incarnation`).
    pub incarnation: u64,
    /// Unique within the task, never reused (slots are).
    pub serial: u64,
    pub joined_at: Instant,
    pub addr: SocketAddr,
    pub zone: Option<Arc<str>>,
    pub held: PieceSet,
    /// Pieces this member is fetching right now.
    pub inflight: HashMap<u32, Inflight>,
    /// Assignments in flight with this member as first parent.
    pub uploads: u32,
    pub failures: Decaying,
    /// Corrupt pieces served; three make a blacklisting.
    pub strikes: u32,
    /// Bytes per millisecond as a parent (moving average); 0 when unknown.
    pub throughput: f64,
    /// A sparse member (a lazy reader): the pieces it asked for in its last schedule request.
    /// It lacks only these as far as waking and origin shares go. `None`: it wants the blob.
    pub wants: Option<HashSet<u32>>,
    /// The pieces its last schedule request wanted first, most urgent first.
    pub want_order: Vec<u32>,
    /// Recent reports of it not answering as a parent: (reporter, when).
    pub unanswered: Vec<(Slot, Instant)>,
    /// Out of scheduling as a parent until then (see `down`).
    pub down_until: Option<Instant>,
}
