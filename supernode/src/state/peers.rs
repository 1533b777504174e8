//! The live peers: who they are, where they listen, when they were last heard from, and which
//! tasks they are registered on (so that forgetting a peer can clean those tasks up).
//!
//! Lock order: the peer map, then one peer's record, then (in `state`) a task. Never the reverse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use shoal_common::api::{Heartbeat, PeerAnnounce};
use shoal_common::TaskId;

/// The label naming a peer's failure domain; parents in the requester's zone are preferred.
pub(crate) const ZONE_LABEL: &str = "zone";

pub(crate) struct PeerRecord {
    pub id: Arc<str>,
    /// Distinguishes this registration from an earlier one of the same id (after a DELETE or an
    /// expiry), so that cleaning up the old one never touches the new one.
    pub incarnation: u64,
    /// The announcing process's `PeerAnnounce::instance`.
    pub instance: u64,
    pub inner: Mutex<PeerInner>,
}

pub(crate) struct PeerInner {
    pub addr: SocketAddr,
    pub upload_capacity: u64,
    pub labels: BTreeMap<String, String>,
    pub last_seen: Instant,
    pub active_uploads: u32,
    pub upload_rate: u64,
    pub tasks: HashSet<TaskId>,
    /// Set once the record has left the map: it must not join tasks any more.
    pub removed: bool,
}

impl PeerInner {
    pub fn zone(&self) -> Option<Arc<str>> {
        self.labels.get(ZONE_LABEL).map(|z| Arc::from(z.as_str()))
    }
}

/// What removing a peer left to clean up in the tasks.
pub(crate) struct Removed {
    pub id: Arc<str>,
    pub incarnation: u64,
    pub tasks: Vec<TaskId>,
}

#[derive(Default)]
pub(crate) struct Peers {
    map: RwLock<HashMap<Arc<str>, Arc<PeerRecord>>>,
    next_incarnation: AtomicU64,
}

impl Peers {
    pub fn get(&self, id: &str) -> Option<Arc<PeerRecord>> {
        self.map.read().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn snapshot(&self) -> Vec<Arc<PeerRecord>> {
        self.map.read().values().cloned().collect()
    }

    /// Registers a peer or refreshes it. Returns the record, whether its address or zone
    /// changed (then the tasks it is on need the new values), and the earlier registration of
    /// the same id when the announce comes from another process (a restart): the caller
    /// removes that one from its tasks.
    pub fn upsert(
        &self,
        a: &PeerAnnounce,
        now: Instant,
    ) -> (Arc<PeerRecord>, bool, Option<Removed>) {
        let mut map = self.map.write();
        let mut replaced = None;
        if let Some(rec) = map.get(a.peer_id.as_str()) {
            if rec.instance != a.instance && a.instance != 0 {
                replaced = Some(Self::retire(rec));
            } else {
                let mut inner = rec.inner.lock();
                let changed = inner.addr != a.addr
                    || inner.labels.get(ZONE_LABEL) != a.labels.get(ZONE_LABEL);
                inner.addr = a.addr;
                inner.upload_capacity = a.upload_capacity;
                inner.labels = a.labels.clone();
                inner.last_seen = now;
                drop(inner);
                return (rec.clone(), changed, None);
            }
        }
        let id: Arc<str> = Arc::from(a.peer_id.as_str());
        let rec = Arc::new(PeerRecord {
            id: id.clone(),
            incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
            instance: a.instance,
            inner: Mutex::new(PeerInner {
                addr: a.addr,
                upload_capacity: a.upload_capacity,
                labels: a.labels.clone(),
                last_seen: now,
                active_uploads: 0,
                upload_rate: 0,
                tasks: HashSet::new(),
                removed: false,
            }),
        });
        map.insert(id, rec.clone());
        (rec, false, replaced)
    }

    /// Refreshes a known peer; `false` when it is unknown.
    pub fn heartbeat(&self, id: &str, hb: &Heartbeat, now: Instant) -> bool {
        let Some(rec) = self.get(id) else {
            return false;
        };
        let mut inner = rec.inner.lock();
        if inner.removed {
            return false;
        }
        inner.last_seen = now;
        inner.active_uploads = hb.active_uploads;
        inner.upload_rate = hb.upload_rate;
        true
    }

    /// Marks a peer as alive (any request from it counts); `None` when it is unknown.
    pub fn touch(&self, id: &str, now: Instant) -> Option<Arc<PeerRecord>> {
        let rec = self.get(id)?;
        let mut inner = rec.inner.lock();
        if inner.removed {
            return None;
        }
        inner.last_seen = now;
        drop(inner);
        Some(rec)
    }

    pub fn remove(&self, id: &str) -> Option<Removed> {
        let rec = self.map.write().remove(id)?;
        Some(Self::retire(&rec))
    }

    /// Removes every peer silent for longer than `ttl`.
    pub fn expire(&self, now: Instant, ttl: std::time::Duration) -> Vec<Removed> {
        let mut map = self.map.write();
        let expired: Vec<Arc<str>> = map
            .iter()
            .filter(|(_, rec)| now.saturating_duration_since(rec.inner.lock().last_seen) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        let records: Vec<Arc<PeerRecord>> =
            expired.iter().filter_map(|id| map.remove(id)).collect();
        drop(map);
        records.iter().map(|r| Self::retire(r)).collect()
    }

    fn retire(rec: &PeerRecord) -> Removed {
        let mut inner = rec.inner.lock();
        inner.removed = true;
        Removed {
            id: rec.id.clone(),
            incarnation: rec.incarnation,
            tasks: inner.tasks.drain().collect(),
        }
    }
}
