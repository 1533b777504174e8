//! Scheduling policy tests, driven through the domain operations (no HTTP): the shared
//! setup here, the tests by concept in the submodules.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_common::api::{
    FailReason, PeerAnnounce, PieceDigest, PieceDone, PieceFailed, PieceReport, RegisterTask,
    ReportReply, ScheduleReply, ScheduleRequest,
};
use shoal_common::{Digest, PieceLayout, PieceSet, TaskId};
use tokio_util::sync::CancellationToken;

use super::State;
use crate::config::SupernodeConfig;
use crate::metrics::Metrics;
use crate::schedule::LeastLoaded;

const PIECES: u32 = 8;

mod down;
mod origin;
mod parents;
mod reports;
mod sparse;

fn state(config: SupernodeConfig) -> Arc<State> {
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    Arc::new(State::new(config, metrics, Arc::new(LeastLoaded)))
}

fn task() -> TaskId {
    TaskId::Content(Digest::of(b"blob"))
}

fn digest(piece: u32) -> Digest {
    Digest::of(&piece.to_le_bytes())
}

fn addr(id: &str) -> SocketAddr {
    let port = 10_000 + id.bytes().map(u16::from).sum::<u16>();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Announces and registers `id`, holding `have` (with the right digests).
fn join(s: &State, id: &str, have: &[u32]) {
    join_with(s, id, have, PIECES, None);
}

fn join_with(s: &State, id: &str, have: &[u32], pieces: u32, zone: Option<&str>) {
    let labels = zone
        .map(|z| [("zone".to_owned(), z.to_owned())].into())
        .unwrap_or_default();
    s.announce(&PeerAnnounce {
        peer_id: id.into(),
        addr: addr(id),
        upload_capacity: 0,
        labels,
        instance: 0,
    })
    .unwrap();
    register(s, id, have, pieces);
}

/// Registers `id` (announced already) on the task, holding `have`.
fn register(s: &State, id: &str, have: &[u32], pieces: u32) {
    let mut set = PieceSet::new(pieces);
    for &p in have {
        set.insert(p);
    }
    s.register(
        &task(),
        &RegisterTask {
            peer_id: id.into(),
            url: "https://registry.example/v2/x/blobs/y".into(),
            layout: Some(PieceLayout::new(u64::from(pieces) * 4096, 4096).unwrap()),
            have: Some(set),
            digests: have
                .iter()
                .map(|&p| PieceDigest {
                    piece: p,
                    sha256: digest(p),
                })
                .collect(),
        },
    )
    .unwrap();
}

async fn sched(s: &State, id: &str, capacity: u32) -> ScheduleReply {
    sched_avoid(s, id, capacity, &[]).await
}

async fn sched_avoid(s: &State, id: &str, capacity: u32, avoid: &[&str]) -> ScheduleReply {
    let req = ScheduleRequest {
        peer_id: id.into(),
        capacity,
        wait_ms: 0,
        avoid: avoid.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    s.schedule(&task(), &req, &CancellationToken::new())
        .await
        .unwrap()
}

fn done(s: &State, id: &str, piece: u32, from: Option<&str>, sha: Digest) -> ReportReply {
    s.report(
        &task(),
        &PieceReport {
            peer_id: id.into(),
            done: vec![PieceDone {
                piece,
                sha256: sha,
                from: from.map(str::to_owned),
                millis: 10,
            }],
            failed: vec![],
            uploads_cut: vec![],
        },
    )
    .unwrap()
}

fn failed(s: &State, id: &str, piece: u32, parent: &str, reason: FailReason) {
    failed_with(s, id, piece, parent, reason, false);
}

fn failed_with(s: &State, id: &str, piece: u32, parent: &str, reason: FailReason, refused: bool) {
    s.report(
        &task(),
        &PieceReport {
            peer_id: id.into(),
            done: vec![],
            failed: vec![PieceFailed {
                piece,
                parent: Some(parent.into()),
                reason,
                refused,
            }],
            uploads_cut: vec![],
        },
    )
    .unwrap();
}

fn pieces(r: &ScheduleReply) -> Vec<u32> {
    r.assignments.iter().map(|a| a.piece).collect()
}

fn origin_pieces(r: &ScheduleReply) -> Vec<u32> {
    r.assignments
        .iter()
        .filter(|a| a.origin)
        .map(|a| a.piece)
        .collect()
}

/// A supernode letting one peer per task fetch from the origin, and `ids` joined holding
/// nothing: the setting of the relay tests (the first to ask leases, the others relay).
fn one_origin_peer(ids: &[&str]) -> Arc<State> {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ids {
        join(&s, id, &[]);
    }
    s
}

fn parent_ids(r: &ScheduleReply, i: usize) -> Vec<&str> {
    r.assignments[i]
        .parents
        .iter()
        .map(|p| p.peer_id.as_str())
        .collect()
}

async fn sched_want(
    s: &State,
    id: &str,
    capacity: u32,
    want: &[u32],
    sparse: bool,
) -> ScheduleReply {
    let req = ScheduleRequest {
        peer_id: id.into(),
        capacity,
        want: want.to_vec(),
        sparse,
        ..Default::default()
    };
    s.schedule(&task(), &req, &CancellationToken::new())
        .await
        .unwrap()
}

fn is_down(s: &State, id: &str) -> bool {
    let t = &s.list_tasks()[0];
    t.peers.iter().find(|p| p.peer_id == id).unwrap().down
}

fn offers(r: &ScheduleReply, id: &str) -> bool {
    r.assignments
        .iter()
        .any(|a| a.parents.iter().any(|p| p.peer_id == id))
}
