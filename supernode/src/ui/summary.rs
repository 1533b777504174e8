//! What `GET /api/v1/status` returns: one snapshot of everything the status page shows (the
//! peer and task listings plus bytes by source).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::State;
use crate::status::{BytesBySource, PeerStatus, TaskStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// The supernode's version.
    pub version: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// Piece bytes peers reported fetching since the supernode started, by source.
    pub bytes: BytesBySource,
    /// As `GET /api/v1/peers`.
    pub peers: Vec<PeerStatus>,
    pub tasks: Vec<TaskSummary>,
}

/// A task as `GET /api/v1/tasks` lists it, plus what the page would otherwise count itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    #[serde(flatten)]
    pub status: TaskStatus,
    /// Members holding every piece.
    pub completed_peers: u32,
}

impl From<TaskStatus> for TaskSummary {
    fn from(status: TaskStatus) -> Self {
        let completed_peers = status.peers.iter().filter(|p| p.completed).count() as u32;
        TaskSummary {
            status,
            completed_peers,
        }
    }
}

/// Takes the snapshot (each listing is consistent per peer and per task, not across them).
pub(crate) fn summary(state: &State) -> StatusSummary {
    let generated_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    StatusSummary {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        generated_at_ms,
        bytes: state.bytes.get(),
        peers: state.list_peers(),
        tasks: state.list_tasks().into_iter().map(Into::into).collect(),
    }
}
