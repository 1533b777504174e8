//! What `GET /api/v1/peers` and `GET /api/v1/tasks` return: a read-only view for tests, operators
//! and the status UI. Lists are sorted by id so that output is stable.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_common::api::PeerId;
use shoal_common::{PieceLayout, TaskId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer_id: PeerId,
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the peer was last heard from.
    pub last_seen_ms: u64,
    /// Piece uploads in progress, as of the last heartbeat.
    pub active_uploads: u32,
    /// Bytes per second uploaded, as of the last heartbeat.
    pub upload_rate: u64,
    /// Announced upload capacity in bytes per second; 0 when unknown.
    pub upload_capacity: u64,
    /// Tasks the peer is registered on.
    pub tasks: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub layout: PieceLayout,
    pub url: String,
    pub piece_count: u32,
    /// Pieces some live peer holds.
    pub pieces_available: u32,
    /// Peers allowed to fetch this task from the origin.
    pub origin_peers: Vec<PeerId>,
    /// Peers no longer offered as parents for this task (corrupt pieces).
    pub blacklisted: Vec<PeerId>,
    /// Schedule requests waiting (long-poll) right now.
    pub waiting: u32,
    pub peers: Vec<TaskPeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPeerStatus {
    pub peer_id: PeerId,
    /// Pieces held.
    pub pieces: u32,
    /// Holds every piece.
    pub completed: bool,
    /// Pieces it is fetching now.
    pub downloading: u32,
    /// Assignments in flight with it as first parent.
    pub uploading: u32,
    /// Not offered as a parent for now: its children could not reach it.
    #[serde(default)]
    pub down: bool,
}

/// Bytes of pieces newly held by a peer, by where the peer fetched them. Counted from piece
/// reports, so they cover what the live supernode was told, not what peers fetched before it
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BytesBySource {
    pub origin: u64,
    pub peers: u64,
}
