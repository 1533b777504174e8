//! The supernode protocol: HTTP/JSON, spoken by peers (and by the embedded supernode, over
//! loopback, with the same code). The supernode only schedules; piece bytes never pass it.
//!
//! | method | path | body → reply |
//! |---|---|---|
//! | POST | `/api/v1/peers` | [`PeerAnnounce`] → [`AnnounceReply`] |
//! | POST | `/api/v1/peers/{peer}/heartbeat` | [`Heartbeat`] → [`HeartbeatReply`] (404: announce again) |
//! | DELETE | `/api/v1/peers/{peer}` | peer leaves |
//! | GET | `/api/v1/tasks/{task}` | → [`TaskInfo`] (404: unknown) |
//! | POST | `/api/v1/tasks/{task}/peers` | [`RegisterTask`] → [`TaskInfo`] |
//! | DELETE | `/api/v1/tasks/{task}/peers/{peer}` | peer dropped the task (evicted) |
//! | POST | `/api/v1/tasks/{task}/schedule` | [`ScheduleRequest`] → [`ScheduleReply`] (long-poll) |
//! | POST | `/api/v1/tasks/{task}/reports` | [`PieceReport`] → [`ReportReply`] |
//!
//! Errors are [`ErrorBody`] with a 4xx/5xx status.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::clip;
use crate::piece::PieceLayout;
use crate::pieceset::PieceSet;
use crate::task::TaskId;

pub const API_PREFIX: &str = "/api/v1";

/// Longest long-poll a supernode honours; peers ask for less.
pub const MAX_WAIT_MS: u64 = 30_000;

/// A peer's name: 1–128 characters of `[A-Za-z0-9._:-]`, chosen by the peer (hostname + random
/// suffix by default) and stable across restarts when configured.
pub type PeerId = String;

pub fn validate_peer_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "peer id {:?} must be 1 to 128 characters",
            clip(id)
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(format!(
            "peer id {:?} may only contain letters, digits, '.', '_', ':' and '-'",
            clip(id)
        ));
    }
    Ok(())
}

pub fn peer_path(peer: &str) -> String {
    format!("{API_PREFIX}/peers/{peer}")
}

pub fn task_path(task: &TaskId) -> String {
    format!("{API_PREFIX}/tasks/{task}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAnnounce {
    pub peer_id: PeerId,
    /// Where other peers reach this peer's piece server.
    pub addr: SocketAddr,
    /// Upload capacity in bytes per second; 0 when unknown or unlimited.
    #[serde(default)]
    pub upload_capacity: u64,
    /// Free-form labels such as `zone`, `node`; used to prefer nearby parents.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drawn once per process start. A peer id announced with another value is a restarted
    /// process (a crash, a pod restart keeping its data dir): whatever the supernode recorded
    /// for the earlier one (pieces in flight, origin leases, upload slots) died with it and is
    /// dropped at once, instead of blocking the new process until it times out. 0: not sent
    /// (an older peer), never taken for a restart on its own.
    #[serde(default)]
    pub instance: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnounceReply {
    /// How often the supernode expects a heartbeat (milliseconds).
    pub heartbeat_interval_ms: u64,
    /// A peer silent for this long (milliseconds) is forgotten with all its pieces.
    pub peer_ttl_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Piece uploads in progress right now.
    #[serde(default)]
    pub active_uploads: u32,
    /// Bytes per second uploaded over the last few seconds.
    #[serde(default)]
    pub upload_rate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterTask {
    pub peer_id: PeerId,
    /// Where the origin serves the blob (shown in the UI; never fetched by the supernode).
    #[serde(default)]
    pub url: String,
    /// The layout the peer proposes when the supernode does not know the task yet. A task that
    /// is known keeps its layout; the reply carries the one to use.
    #[serde(default)]
    pub layout: Option<PieceLayout>,
    /// Pieces the peer already holds (after a restart), with their digests in `digests`.
    #[serde(default)]
    pub have: Option<PieceSet>,
    #[serde(default)]
    pub digests: Vec<PieceDigest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceDigest {
    pub piece: u32,
    pub sha256: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task_id: TaskId,
    pub layout: PieceLayout,
    /// Peers registered on the task.
    pub peers: u32,
    /// Pieces some live peer holds.
    pub pieces_available: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRequest {
    pub peer_id: PeerId,
    /// How many more pieces the peer can fetch at once right now.
    pub capacity: u32,
    /// Long-poll: when nothing can be assigned yet, wait up to this long (milliseconds) for
    /// something to become available before replying with no assignments.
    #[serde(default)]
    pub wait_ms: u64,
    /// Parents this peer has given up on for this task.
    #[serde(default)]
    pub avoid: Vec<PeerId>,
    /// Pieces readers are waiting for right now, most urgent first (at most
    /// [`MAX_WANTED`]): assigned before any other piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub want: Vec<u32>,
    /// A sparse task: the peer wants only the pieces in `want` (a lazy reader's ranges), not
    /// the whole blob. Such a peer is only offered parents whose copy is verified (never a
    /// relay of a piece still arriving), since no whole-blob digest will check it later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
}

/// Most wanted pieces one schedule request may name.
pub const MAX_WANTED: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub peer_id: PeerId,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub piece: u32,
    /// The digest the piece must have. Always set when parents are given; absent when the
    /// piece has never been fetched from the origin (the fetcher records it).
    #[serde(default)]
    pub sha256: Option<Digest>,
    /// Parents to try, best first.
    #[serde(default)]
    pub parents: Vec<Parent>,
    /// The peer may fetch this piece from the origin (after the parents, if any).
    #[serde(default)]
    pub origin: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleReply {
    pub assignments: Vec<Assignment>,
    /// Every piece is held by this peer already (or the task has no pieces).
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PieceReport {
    pub peer_id: PeerId,
    #[serde(default)]
    pub done: Vec<PieceDone>,
    #[serde(default)]
    pub failed: Vec<PieceFailed>,
    /// Uploads by the reporter that broke off before the end (the child went away).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads_cut: Vec<UploadCut>,
}

/// A piece upload that broke off: its child closed the connection before the last byte.
/// A child that died does not report its own failure, and the supernode would count the
/// upload against the parent's `max_uploads_per_parent` until the assignment expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadCut {
    pub piece: u32,
    pub child: PeerId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PieceDone {
    pub piece: u32,
    pub sha256: Digest,
    /// Parent it came from; `None` for the origin.
    #[serde(default)]
    pub from: Option<PeerId>,
    /// Transfer time in milliseconds (to rank parents by throughput).
    #[serde(default)]
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PieceFailed {
    pub piece: u32,
    /// The parent that failed; `None` when the origin failed.
    #[serde(default)]
    pub parent: Option<PeerId>,
    pub reason: FailReason,
    /// The parent's host refused the connection: nothing listens where it said it serves
    /// (it died or restarted). Unlike a timeout, which may be the path's fault, this is
    /// about the parent itself, so one such report takes it out of scheduling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Could not connect or the connection broke.
    Unreachable,
    /// The parent does not have the piece (evicted, restarted).
    NotFound,
    /// The bytes did not match the piece's digest.
    Corrupt,
    /// Too slow.
    Timeout,
    /// The transfer started but ended early: a relaying parent lost its own source, or the
    /// parent went away mid-piece. Unlike `Unreachable`, the parent stays worth asking.
    Interrupted,
    /// The peer gave up on the piece for its own reasons (shutdown, cancelled).
    Abandoned,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportReply {
    /// Finished pieces recorded.
    pub accepted: u32,
    /// Finished pieces refused (digest differs from the origin's record, or unknown piece).
    #[serde(default)]
    pub rejected: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `task_unknown`, `peer_unknown`, `bad_request`.
    pub code: String,
    pub message: String,
}

pub mod codes {
    pub const TASK_UNKNOWN: &str = "task_unknown";
    pub const PEER_UNKNOWN: &str = "peer_unknown";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const CONFLICT: &str = "conflict";
    pub const INTERNAL: &str = "internal";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids() {
        assert!(validate_peer_id("node-1.zone_a:x").is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(validate_peer_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn assignment_defaults() {
        let a: Assignment = serde_json::from_str(r#"{"piece":3}"#).unwrap();
        assert_eq!(a.piece, 3);
        assert!(!a.origin && a.parents.is_empty() && a.sha256.is_none());
    }
}
