//! The listing endpoints' views of the state: every peer, every task with its members.

use std::time::Instant;

use super::task::{Slot, Task};
use super::{millis, State, TaskRef};
use crate::status::{PeerStatus, TaskPeerStatus, TaskStatus};

impl State {
    pub fn list_peers(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let mut out: Vec<PeerStatus> = self
            .peers
            .snapshot()
            .into_iter()
            .map(|rec| {
                let inner = rec.inner.lock();
                PeerStatus {
                    peer_id: rec.id.to_string(),
                    addr: inner.addr,
                    labels: inner.labels.clone(),
                    last_seen_ms: millis(now.saturating_duration_since(inner.last_seen)),
                    active_uploads: inner.active_uploads,
                    upload_rate: inner.upload_rate,
                    upload_capacity: inner.upload_capacity,
                    tasks: inner.tasks.len() as u32,
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }

    pub fn list_tasks(&self) -> Vec<TaskStatus> {
        let tasks: Vec<TaskRef> = self.tasks.read().values().cloned().collect();
        let mut out: Vec<TaskStatus> = tasks.iter().map(|t| status(&t.lock())).collect();
        out.sort_by_key(|t| t.task_id);
        out
    }
}

fn status(t: &Task) -> TaskStatus {
    let name = |slot: &Slot| t.member(*slot).map(|m| m.id.to_string());
    let mut peers: Vec<TaskPeerStatus> = t
        .members()
        .map(|(_, m)| TaskPeerStatus {
            peer_id: m.id.to_string(),
            pieces: m.held.count(),
            completed: m.held.is_complete(),
            downloading: m.inflight.len() as u32,
            uploading: m.uploads,
            down: m.down_until.is_some(),
        })
        .collect();
    peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    let mut blacklisted: Vec<String> = t.blacklist.iter().map(|id| id.to_string()).collect();
    blacklisted.sort();
    TaskStatus {
        task_id: t.id,
        layout: t.layout,
        url: t.url.clone(),
        piece_count: t.piece_count(),
        pieces_available: t.available,
        origin_peers: t.origin_peers.iter().filter_map(name).collect(),
        blacklisted,
        waiting: t.waiter_count() as u32,
        peers,
    }
}
