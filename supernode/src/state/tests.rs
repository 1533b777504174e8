//! Scheduling policy tests, driven through the domain operations (no HTTP).

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

#[tokio::test]
async fn origin_leases_are_exclusive_and_limited() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 2,
        max_origin_pieces_in_flight: 64,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    // Leases are exclusive: the two origin peers get different pieces, in order.
    let a = sched(&s, "a", 3).await;
    assert_eq!(origin_pieces(&a), vec![0, 1, 2]);
    assert!(a.assignments.iter().all(|x| x.parents.is_empty()));
    assert_eq!(origin_pieces(&sched(&s, "b", 3).await), vec![3, 4, 5]);
    // c may never go to the origin: it gets pieces still arriving from it, relayed by their
    // lessees, with no digest yet.
    let c = sched(&s, "c", 3).await;
    assert!(origin_pieces(&c).is_empty());
    assert_eq!(c.assignments.len(), 3);
    for x in &c.assignments {
        let lessee = if x.piece < 3 { "a" } else { "b" };
        assert_eq!(x.parents.len(), 1, "{x:?}");
        assert_eq!(x.parents[0].peer_id, lessee, "{x:?}");
        assert!(x.sha256.is_none());
    }
    assert_eq!(s.list_tasks()[0].origin_peers, vec!["a", "b"]);
    // The next leases go to whichever origin peer asks, never to c.
    assert_eq!(done(&s, "a", 0, None, digest(0)).accepted, 1);
    assert!(origin_pieces(&sched(&s, "c", 3).await).is_empty());
    assert_eq!(origin_pieces(&sched(&s, "a", 8).await), vec![6, 7]);
}

/// A peer restarted under the same id (a crash, its data dir kept) gets origin leases at once:
/// what its earlier process had in flight died with it. The same process announcing again (the
/// supernode seemed unreachable for a while) keeps its leases.
#[tokio::test]
async fn a_restarted_peer_is_not_blocked_by_its_earlier_process() {
    let s = state(SupernodeConfig {
        max_origin_pieces_in_flight: 4,
        ..Default::default()
    });
    let announce = |instance| {
        s.announce(&PeerAnnounce {
            peer_id: "a".into(),
            addr: addr("a"),
            upload_capacity: 0,
            labels: Default::default(),
            instance,
        })
        .unwrap();
    };
    announce(7);
    register(&s, "a", &[], PIECES);
    assert_eq!(origin_pieces(&sched(&s, "a", 4).await), vec![0, 1, 2, 3]);
    announce(7);
    register(&s, "a", &[], PIECES);
    assert!(origin_pieces(&sched(&s, "a", 4).await).is_empty());
    announce(8);
    register(&s, "a", &[], PIECES);
    assert_eq!(origin_pieces(&sched(&s, "a", 4).await), vec![0, 1, 2, 3]);
    assert_eq!(s.list_tasks()[0].peers.len(), 1);
}

fn parent_ids(r: &ScheduleReply, i: usize) -> Vec<&str> {
    r.assignments[i]
        .parents
        .iter()
        .map(|p| p.peer_id.as_str())
        .collect()
}

#[tokio::test]
async fn a_relayed_origin_fetch_records_the_first_whole_copy() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    assert_eq!(pieces(&sched(&s, "b", 1).await), vec![0]);
    // c was assigned nothing: its claim to a digest-less piece from a peer is refused.
    assert_eq!(done(&s, "c", 0, Some("a"), digest(0)).rejected, vec![0]);
    // b's copy, relayed from a's origin fetch, arrives first and defines the digest.
    assert_eq!(done(&s, "b", 0, Some("a"), digest(0)).accepted, 1);
    let c = sched(&s, "c", 1).await;
    assert_eq!(parent_ids(&c, 0), vec!["b", "a"]);
    assert_eq!(c.assignments[0].sha256, Some(digest(0)));
    // a's own copy from the origin differs: the origin fetch wins, and b (whose copy
    // was wrong) is no longer a holder.
    assert_eq!(done(&s, "a", 0, None, digest(99)).accepted, 1);
    let t = &s.list_tasks()[0];
    let held = |id: &str| t.peers.iter().find(|p| p.peer_id == id).unwrap().pieces;
    assert_eq!((held("a"), held("b")), (1, 0));
    // From now on the digest is settled: a second origin report must match it.
    assert_eq!(done(&s, "a", 0, None, digest(0)).rejected, vec![0]);
    failed(&s, "c", 0, "b", FailReason::Interrupted);
    let c = sched(&s, "c", 1).await;
    assert_eq!(parent_ids(&c, 0), vec!["a"]);
    assert_eq!(c.assignments[0].sha256, Some(digest(99)));
}

#[tokio::test]
async fn an_origin_fetch_confirms_its_relayed_copy() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    join(&s, "a", &[]);
    join(&s, "b", &[]);
    sched(&s, "a", 1).await;
    sched(&s, "b", 1).await;
    assert_eq!(done(&s, "b", 0, Some("a"), digest(0)).accepted, 1);
    assert_eq!(done(&s, "a", 0, None, digest(0)).accepted, 1);
    let t = &s.list_tasks()[0];
    assert!(t.peers.iter().all(|p| p.pieces == 1));
}

#[tokio::test]
async fn a_lone_peer_takes_every_lease_at_once() {
    let s = state(SupernodeConfig {
        max_origin_pieces_in_flight: 4,
        ..Default::default()
    });
    join(&s, "a", &[]);
    assert_eq!(pieces(&sched(&s, "a", 8).await), vec![0, 1, 2, 3]);
    // Never more than the limit in flight: one more when one is done.
    assert!(sched(&s, "a", 8).await.assignments.is_empty());
    done(&s, "a", 0, None, digest(0));
    assert_eq!(pieces(&sched(&s, "a", 8).await), vec![4]);
}

#[tokio::test]
async fn origin_leases_are_few_and_spread_over_peers() {
    let s = state(SupernodeConfig {
        max_origin_pieces_in_flight: 4,
        ..Default::default()
    });
    // A seed holding the last four of sixteen pieces.
    let seed: Vec<u32> = (12..16).collect();
    join_with(&s, "z", &seed, 16, None);
    // Two downloaders (and the seed): an even share each, and never more than 4 at once.
    join_with(&s, "a", &[], 16, None);
    join_with(&s, "b", &[], 16, None);
    assert_eq!(origin_pieces(&sched(&s, "a", 8).await).len(), 2);
    assert_eq!(origin_pieces(&sched(&s, "b", 8).await).len(), 2);
    join_with(&s, "c", &[], 16, None);
    let c = sched(&s, "c", 8).await;
    assert!(origin_pieces(&c).is_empty(), "{c:?}");
    // A finished origin piece frees its slot for whoever asks next.
    assert!(origin_pieces(&sched(&s, "a", 8).await).is_empty());
    done(&s, "b", 2, None, digest(2));
    let c = sched(&s, "c", 8).await;
    assert_eq!(origin_pieces(&c).len(), 1, "{c:?}");
}

#[tokio::test]
async fn one_origin_peer_when_configured() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    join(&s, "a", &[]);
    join(&s, "b", &[]);
    assert_eq!(pieces(&sched(&s, "a", 2).await), vec![0, 1]);
    done(&s, "a", 0, None, digest(0));
    assert_eq!(origin_pieces(&sched(&s, "a", 2).await), vec![2, 3]);
    // b only ever gets what a has or is fetching: piece 0 first (a holds it), then the
    // pieces a relays.
    let b = sched(&s, "b", 8).await;
    assert!(origin_pieces(&b).is_empty());
    assert_eq!(pieces(&b)[0], 0);
    let mut got = pieces(&b);
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn common_pieces_come_in_index_order_not_by_holder_count() {
    let s = state(SupernodeConfig::default());
    // Piece 0 has five holders, piece 7 three: both common, so piece 0 should often come
    // first (strict rarest-first would always pick 7).
    for id in ["a", "b", "c"] {
        join(&s, id, &[0, 7]);
    }
    join(&s, "d", &[0]);
    join(&s, "e", &[0]);
    let mut zero_first = 0;
    for i in 0..40 {
        let id = format!("r{i}");
        join(&s, &id, &[1, 2, 3, 4, 5, 6]);
        if pieces(&sched(&s, &id, 1).await) == vec![0] {
            zero_first += 1;
        }
        s.unregister(&task(), &id).unwrap();
    }
    assert!(zero_first >= 10, "piece 0 first {zero_first} times of 40");
}

#[tokio::test]
async fn rarest_pieces_first() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "b", &[0, 1, 2, 4, 5, 6, 7]);
    join(&s, "c", &[0, 1, 2, 4, 5, 7]);
    // Piece 3 has one holder, 6 two, the rest three.
    for i in 0..10 {
        let id = format!("r{i}");
        join(&s, &id, &[]);
        let r = sched(&s, &id, 2).await;
        assert_eq!(pieces(&r), vec![3, 6], "{id}");
        assert_eq!(r.assignments[0].parents.len(), 1);
        s.unregister(&task(), &id).unwrap(); // frees a's upload slots
    }
}

#[tokio::test]
async fn ties_are_spread_over_pieces() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut firsts = HashSet::new();
    for i in 0..40 {
        let id = format!("r{i}");
        join(&s, &id, &[]);
        firsts.insert(pieces(&sched(&s, &id, 1).await)[0]);
        s.unregister(&task(), &id).unwrap();
    }
    assert!(firsts.len() >= 4, "{firsts:?}");
}

#[tokio::test]
async fn parents_ranked_by_load_and_saturation_respected() {
    let s = state(SupernodeConfig {
        max_uploads_per_parent: 2,
        ..Default::default()
    });
    join(&s, "a", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "b", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "c", &[]);
    let r = sched(&s, "c", 8).await;
    // Two parents with two upload slots each: four assignments, spread evenly.
    assert_eq!(r.assignments.len(), 4);
    let mut first: HashMap<String, usize> = HashMap::new();
    for a in &r.assignments {
        assert_eq!(a.parents.len(), 2);
        *first.entry(a.parents[0].peer_id.clone()).or_default() += 1;
    }
    assert_eq!(first.get("a"), Some(&2));
    assert_eq!(first.get("b"), Some(&2));
    // a and b are saturated, but c relays the four pieces it is fetching: d gets two of
    // them from c (its two upload slots), with a or b as backup.
    join(&s, "d", &[]);
    let d = sched(&s, "d", 4).await;
    assert_eq!(d.assignments.len(), 2, "{d:?}");
    assert!(d.assignments.iter().all(|a| a.parents[0].peer_id == "c"));
    // Nobody ever has more uploads in flight than the limit.
    let most = |s: &State| s.list_tasks()[0].peers.iter().map(|p| p.uploading).max();
    assert_eq!(most(&s), Some(2));
    // Everyone saturated: a newcomer gets only what d relays.
    join(&s, "e", &[]);
    let e = sched(&s, "e", 4).await;
    assert!(e.assignments.iter().all(|a| a.parents[0].peer_id == "d"));
    let p = r.assignments[0].piece;
    let from = r.assignments[0].parents[0].peer_id.clone();
    done(&s, "c", p, Some(&from), digest(p));
    // The slot freed at a or b goes to whoever asks next.
    join(&s, "f", &[]);
    assert!(!sched(&s, "f", 4).await.assignments.is_empty());
    assert_eq!(most(&s), Some(2));
}

#[tokio::test]
async fn origin_leases_come_before_peer_pieces() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0, 1, 2, 3]);
    join(&s, "b", &[]);
    // Capacity for one piece: the origin lease (piece 4), not a piece `a` could serve later.
    let r = sched(&s, "b", 1).await;
    assert_eq!(r.assignments.len(), 1);
    assert!(r.assignments[0].origin, "{:?}", r.assignments);
    assert_eq!(r.assignments[0].piece, 4);
    // With more room, the other unheld pieces are leased and peer pieces fill the rest.
    let r = sched(&s, "b", 8).await;
    let origin: Vec<u32> = r
        .assignments
        .iter()
        .filter(|a| a.origin)
        .map(|a| a.piece)
        .collect();
    assert_eq!(origin, vec![5, 6, 7]);
    assert_eq!(r.assignments.len(), 7, "{:?}", r.assignments);
}

#[tokio::test]
async fn avoided_parents_are_not_offered() {
    let s = state(SupernodeConfig::default());
    // Every piece held, so no origin lease comes first.
    let all: Vec<u32> = (0..PIECES).collect();
    join(&s, "a", &all);
    join(&s, "b", &all);
    join(&s, "c", &[]);
    let r = sched_avoid(&s, "c", 1, &["a"]).await;
    assert_eq!(r.assignments[0].parents.len(), 1);
    assert_eq!(r.assignments[0].parents[0].peer_id, "b");
}

#[tokio::test]
async fn pieces_held_only_by_avoided_parents_come_from_the_origin() {
    let s = state(SupernodeConfig::default());
    // "a" alone holds pieces 0 and 1 (say it stalled); "b" holds piece 2.
    join(&s, "a", &[0, 1]);
    join(&s, "b", &[2]);
    join(&s, "c", &[]);
    let r = sched_avoid(&s, "c", 8, &["a"]).await;
    let leased: Vec<u32> = r
        .assignments
        .iter()
        .filter(|a| a.origin)
        .map(|a| a.piece)
        .collect();
    assert!(
        leased.contains(&0) && leased.contains(&1),
        "pieces only an avoided parent holds go to the origin: {:?}",
        r.assignments
    );
    assert!(
        r.assignments
            .iter()
            .all(|a| a.parents.iter().all(|p| p.peer_id != "a")),
        "the avoided parent offered: {:?}",
        r.assignments
    );
    // Without "a" avoided, its pieces are fetched from it, not the origin.
    let r = sched(&s, "b", 8).await;
    assert!(
        r.assignments
            .iter()
            .filter(|a| a.piece < 2)
            .all(|a| !a.origin),
        "{:?}",
        r.assignments
    );
}

#[tokio::test]
async fn same_zone_preferred() {
    let s = state(SupernodeConfig::default());
    let all: Vec<u32> = (0..PIECES).collect();
    join_with(&s, "far", &all, PIECES, Some("z2"));
    join_with(&s, "near", &all, PIECES, Some("z1"));
    join_with(&s, "me", &[], PIECES, Some("z1"));
    let r = sched(&s, "me", 1).await;
    assert_eq!(r.assignments[0].parents[0].peer_id, "near");
}

#[tokio::test]
async fn blacklisted_peers_are_not_offered_as_relays() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "bad", &[]);
    join(&s, "victim", &[]);
    // bad fetches a piece from a, so it relays that piece ...
    assert_eq!(pieces(&sched(&s, "bad", 1).await).len(), 1);
    // ... and gets blacklisted meanwhile (it served corrupt pieces of this task).
    for p in 5..8 {
        failed(&s, "victim", p, "bad", FailReason::Corrupt);
    }
    assert_eq!(s.list_tasks()[0].blacklisted, vec!["bad"]);
    join(&s, "d", &[]);
    let r = sched(&s, "d", 8).await;
    assert!(
        r.assignments
            .iter()
            .all(|a| a.parents.iter().all(|p| p.peer_id != "bad")),
        "{r:?}"
    );
}

#[tokio::test]
async fn relays_are_offered_first_never_as_fallbacks() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["o", "b", "d", "c"] {
        join(&s, id, &[]);
    }
    // Nobody holds anything: "o" fetches piece 0 from the origin and relays it; "b" relays
    // it from "o", and "d" from "b" (the least loaded), so both relays have one upload.
    assert_eq!(origin_pieces(&sched(&s, "o", 1).await), vec![0]);
    assert_eq!(parent_ids(&sched(&s, "b", 1).await, 0), vec!["o"]);
    assert_eq!(parent_ids(&sched(&s, "d", 1).await, 0)[0], "b");
    // "c" may get piece 0 from "b" (relaying another peer's copy) as its first parent, never
    // as a fallback: should the first fail, falling back to a relay of a peer's copy could
    // close a cycle. "o" (relaying the origin's bytes) may be either.
    let c = sched(&s, "c", 1).await;
    let parents = parent_ids(&c, 0);
    assert!(!parents.is_empty(), "{c:?}");
    assert!(
        parents.iter().skip(1).all(|p| *p != "b"),
        "a peer's relay as a fallback: {parents:?}"
    );
}

#[tokio::test]
async fn corrupt_parents_are_blacklisted() {
    let s = state(SupernodeConfig::default());
    join(&s, "bad", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "c", &[]);
    for p in 0..3 {
        failed(&s, "c", p, "bad", FailReason::Corrupt);
    }
    let t = &s.list_tasks()[0];
    assert_eq!(t.blacklisted, vec!["bad"]);
    // Its corrupt pieces are gone, the rest are no longer offered either.
    assert_eq!(t.pieces_available, 0);
    join(&s, "d", &[]);
    let r = sched(&s, "d", 8).await;
    assert!(r
        .assignments
        .iter()
        .all(|a| a.parents.is_empty() && a.origin));
}

#[tokio::test]
async fn not_found_drops_the_holding() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0]);
    join(&s, "c", &[]);
    failed(&s, "c", 0, "a", FailReason::NotFound);
    assert_eq!(s.list_tasks()[0].pieces_available, 0);
    let t = s.list_tasks();
    let a = t[0].peers.iter().find(|p| p.peer_id == "a").unwrap();
    assert_eq!(a.pieces, 0);
}

#[tokio::test]
async fn digests_are_checked() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[]);
    join(&s, "b", &[]);
    join(&s, "c", &[]);
    sched(&s, "a", 1).await; // a: origin lease on 0
    sched(&s, "b", 1).await; // b: origin peer too
                             // c is no origin peer: its claim to have fetched piece 1 from the origin is refused.
    assert_eq!(done(&s, "c", 1, None, digest(1)).rejected, vec![1]);
    assert_eq!(done(&s, "a", 0, None, digest(0)).accepted, 1);
    // A different digest for a recorded piece is refused, whoever it came from.
    assert_eq!(done(&s, "b", 0, None, digest(99)).rejected, vec![0]);
    assert_eq!(done(&s, "c", 0, Some("a"), digest(99)).rejected, vec![0]);
    assert_eq!(done(&s, "c", 0, Some("a"), digest(0)).accepted, 1);
    // A re-registering peer's wrong digest is not believed.
    join(&s, "d", &[]);
    s.register(
        &task(),
        &RegisterTask {
            peer_id: "d".into(),
            url: String::new(),
            layout: None,
            have: Some(PieceSet::full(PIECES)),
            digests: vec![PieceDigest {
                piece: 0,
                sha256: digest(42),
            }],
        },
    )
    .unwrap();
    let t = s.list_tasks();
    let d = t[0].peers.iter().find(|p| p.peer_id == "d").unwrap();
    assert_eq!(d.pieces, 0);
}

#[tokio::test]
async fn done_when_everything_is_held() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let r = sched(&s, "a", 4).await;
    assert!(r.done && r.assignments.is_empty());
    join(&s, "b", &[]);
    for _ in 0..PIECES {
        let r = sched(&s, "b", 1).await;
        assert!(!r.done);
        let p = pieces(&r)[0];
        done(&s, "b", p, Some("a"), digest(p));
    }
    assert!(sched(&s, "b", 1).await.done);
    assert!(s.list_tasks()[0].peers.iter().all(|p| p.completed));
}

#[tokio::test]
async fn empty_blobs_are_done_at_once() {
    let s = state(SupernodeConfig::default());
    join_with(&s, "a", &[], 0, None);
    assert!(sched(&s, "a", 4).await.done);
}

#[tokio::test]
async fn expiry_releases_leases_assignments_and_holdings() {
    let s = state(SupernodeConfig {
        assignment_timeout: Duration::from_secs(5),
        max_origin_peers_per_task: 2,
        ..Default::default()
    });
    join(&s, "a", &[]);
    join(&s, "b", &[]);
    assert_eq!(pieces(&sched(&s, "a", 1).await), vec![0]);
    done(&s, "a", 0, None, digest(0));
    assert_eq!(origin_pieces(&sched(&s, "b", 2).await), vec![1, 2]);
    join(&s, "c", &[]);
    assert_eq!(pieces(&sched(&s, "c", 1).await), vec![0]); // from a
                                                           // c goes quiet about piece 0: after the assignment timeout it may be assigned again.
    s.sweep(Instant::now() + Duration::from_secs(6));
    assert_eq!(s.list_tasks()[0].peers[0].uploading, 0);
    // a and b vanish (c keeps heartbeating): their leases, pieces and origin-peer places go
    // with them, and c takes one.
    s.remove_peer("a").unwrap();
    s.remove_peer("b").unwrap();
    let t = &s.list_tasks()[0];
    assert_eq!(t.pieces_available, 0);
    assert!(t.origin_peers.is_empty());
    // c fetches everything from the origin now; piece 0 keeps its recorded digest.
    let r = sched(&s, "c", 8).await;
    assert_eq!(pieces(&r), (0..PIECES).collect::<Vec<_>>());
    assert!(r.assignments.iter().all(|a| a.origin));
    assert_eq!(r.assignments[0].sha256, Some(digest(0)));
    assert_eq!(s.list_tasks()[0].origin_peers, vec!["c"]);
    // Silence expires peers too.
    s.sweep(Instant::now() + Duration::from_secs(16));
    assert!(s.list_peers().is_empty());
    assert!(s.list_tasks()[0].peers.is_empty());
    // And a task without peers is forgotten after a while.
    s.sweep(Instant::now() + Duration::from_secs(3600));
    assert!(s.list_tasks().is_empty());
}

#[tokio::test]
async fn many_waiters_are_served_at_once_by_a_relay_tree() {
    let s = state(SupernodeConfig {
        // Only a may fetch from the origin: the waiters can only get what a fetches.
        max_origin_peers_per_task: 1,
        max_origin_pieces_in_flight: 64,
        ..Default::default()
    });
    join(&s, "a", &[]);
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    // Each newcomer gets piece 0 as a relays it, from a or from one that relays it already:
    // a tree of parents with at most 8 uploads each.
    let mut parents = HashMap::<String, usize>::new();
    for i in 0..100 {
        let id = format!("w{i}");
        join(&s, &id, &[]);
        let r = sched(&s, &id, 1).await;
        assert_eq!(pieces(&r), vec![0], "{id}");
        *parents
            .entry(r.assignments[0].parents[0].peer_id.clone())
            .or_default() += 1;
    }
    assert!(parents.len() >= 100 / 8, "{parents:?}");
    assert!(parents.values().all(|&n| n <= 8), "{parents:?}");

    // Now they wait for more; a's next lease wakes them and the relay tree serves them all
    // at once (a's 8 upload slots alone would have served 8 and left 92 to time out).
    let mut waiters = Vec::new();
    for i in 0..100 {
        let id = format!("w{i}");
        let s = s.clone();
        waiters.push(tokio::spawn(async move {
            let req = ScheduleRequest {
                peer_id: id,
                capacity: 1,
                wait_ms: 2_000,
                avoid: vec![],
                ..Default::default()
            };
            let start = Instant::now();
            let r = s.schedule(&task(), &req, &CancellationToken::new()).await;
            (r.unwrap(), start.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.list_tasks()[0].waiting, 100);
    done(&s, "a", 0, None, digest(0));
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![1]);
    let mut parents = HashMap::<String, usize>::new();
    for w in waiters {
        let (r, took) = w.await.unwrap();
        assert_eq!(pieces(&r), vec![1]);
        assert!(took < Duration::from_millis(1_000), "{took:?}");
        *parents
            .entry(r.assignments[0].parents[0].peer_id.clone())
            .or_default() += 1;
    }
    assert!(parents.len() >= 100 / 8, "{parents:?}");
    assert!(parents.values().all(|&n| n <= 8), "{parents:?}");
}

#[tokio::test]
async fn hot_task_schedules_quickly() {
    // 2,000 peers on a 128-piece task, every peer holding a random half: each schedule
    // must stay far from O(peers × pieces). Debug builds are slow; the bound is generous.
    let s = state(SupernodeConfig {
        max_uploads_per_parent: 1_000,
        ..Default::default()
    });
    let n = 128;
    for i in 0..2_000u32 {
        let have: Vec<u32> = (0..n).filter(|p| (p * 7 + i) % 2 == 0).collect();
        join_with(&s, &format!("p{i}"), &have, n, None);
    }
    let mut times = Vec::new();
    for i in 0..500 {
        let start = Instant::now();
        let r = sched(&s, &format!("p{}", i * 4), 4).await;
        times.push(start.elapsed());
        assert_eq!(r.assignments.len(), 4);
    }
    times.sort();
    let p99 = times[times.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
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

#[tokio::test]
async fn sparse_readers_lease_their_pieces_from_the_origin_once() {
    // Only one peer may take whole-blob origin leases; readers of ranges still get theirs.
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    assert_eq!(origin_pieces(&sched(&s, "a", 2).await), vec![0, 1]);
    let b = sched_want(&s, "b", 8, &[5, 6], true).await;
    assert_eq!(
        pieces(&b),
        vec![5, 6],
        "sparse: only what is wanted, in order"
    );
    assert_eq!(origin_pieces(&b), vec![5, 6]);
    // c wants piece 5 too: it is arriving at b and is not offered as a relay (c could not
    // check a relayed copy against anything but a digest nobody has yet), nor leased again.
    let c = sched_want(&s, "c", 8, &[5, 7], true).await;
    assert_eq!(origin_pieces(&c), vec![7]);
    assert_eq!(pieces(&c), vec![7]);
    // A whole-blob peer is not sent to b for piece 5 either while it arrives.
    let a = sched(&s, "a", 8).await;
    assert!(
        a.assignments.iter().all(|x| x.piece != 5 && x.piece != 6),
        "{a:?}"
    );
    // Once b reports piece 5, c gets it from b, with its digest.
    assert_eq!(done(&s, "b", 5, None, digest(5)).accepted, 1);
    let c = sched_want(&s, "c", 8, &[5], true).await;
    assert_eq!(pieces(&c), vec![5]);
    assert_eq!(c.assignments[0].sha256, Some(digest(5)));
    assert_eq!(parent_ids(&c, 0), vec!["b"]);
}

#[tokio::test]
async fn wanted_pieces_come_first_for_whole_downloads() {
    let s = state(SupernodeConfig::default());
    join(&s, "h", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "w", &[]);
    let w = sched_want(&s, "w", 3, &[6, 2], false).await;
    let got = pieces(&w);
    assert_eq!(
        &got[..2],
        &[6, 2],
        "wanted first, in the order asked: {got:?}"
    );
    assert_eq!(got.len(), 3, "then the rest of the blob: {got:?}");
}

#[tokio::test]
async fn relayed_digests_are_not_offered_to_sparse_readers_until_confirmed() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    // a leases piece 0; b (whole, no origin share) relays it from a and reports first.
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    let b = sched(&s, "b", 1).await;
    assert_eq!(pieces(&b), vec![0]);
    assert_eq!(parent_ids(&b, 0), vec!["a"]);
    assert_eq!(done(&s, "b", 0, Some("a"), digest(0)).accepted, 1);
    // The digest is b's relayed copy's, unconfirmed while a's origin fetch runs.
    let c = sched_want(&s, "c", 4, &[0], true).await;
    assert!(c.assignments.is_empty(), "{c:?}");
    assert_eq!(done(&s, "a", 0, None, digest(0)).accepted, 1);
    let c = sched_want(&s, "c", 4, &[0], true).await;
    assert_eq!(pieces(&c), vec![0]);
    assert_eq!(c.assignments[0].sha256, Some(digest(0)));
}

#[tokio::test]
async fn wanted_pieces_past_the_end_are_refused() {
    let s = state(SupernodeConfig::default());
    join(&s, "a", &[]);
    let req = ScheduleRequest {
        peer_id: "a".into(),
        capacity: 1,
        want: vec![PIECES],
        sparse: true,
        ..Default::default()
    };
    let err = s
        .schedule(&task(), &req, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
    let req = ScheduleRequest {
        want: vec![0; shoal_common::api::MAX_WANTED + 1],
        ..req
    };
    assert!(s
        .schedule(&task(), &req, &CancellationToken::new())
        .await
        .is_err());
}

#[tokio::test]
async fn a_waiting_poll_serves_the_wants_of_the_latest_request() {
    let s = state(SupernodeConfig::default());
    for id in ["a", "b"] {
        join(&s, id, &[]);
    }
    // a leases pieces 1 and 2; b's long poll wants piece 1 (leased: it waits).
    let a = sched_want(&s, "a", 8, &[1, 2], true).await;
    assert_eq!(origin_pieces(&a), vec![1, 2]);
    let s2 = s.clone();
    let poll = tokio::spawn(async move {
        let req = ScheduleRequest {
            peer_id: "b".into(),
            capacity: 8,
            wait_ms: 5_000,
            want: vec![1],
            sparse: true,
            ..Default::default()
        };
        s2.schedule(&task(), &req, &CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile b's readers want piece 2 instead (an immediate request: still leased).
    assert!(sched_want(&s, "b", 8, &[2], true)
        .await
        .assignments
        .is_empty());
    // a stores piece 2: the waiting poll answers with it, from a, not with piece 1.
    assert_eq!(done(&s, "a", 2, None, digest(2)).accepted, 1);
    let reply = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("the poll answers when a wanted piece arrives")
        .unwrap()
        .unwrap();
    assert_eq!(pieces(&reply), vec![2]);
    assert_eq!(parent_ids(&reply, 0), vec!["a"]);
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

#[tokio::test]
async fn a_refused_parent_is_taken_out_at_once_and_its_leases_freed() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    // dead holds pieces 0-3 (only it) and leases 4-7 from the origin.
    join(&s, "dead", &[0, 1, 2, 3]);
    join(&s, "b", &[]);
    join(&s, "c", &[]);
    assert_eq!(origin_pieces(&sched(&s, "dead", 4).await), vec![4, 5, 6, 7]);
    let b = sched(&s, "b", 8).await;
    assert!(offers(&b, "dead"), "{b:?}");
    // One refused connection is enough.
    failed_with(&s, "b", 0, "dead", FailReason::Unreachable, true);
    assert!(is_down(&s, "dead"));
    // Nothing is offered from it any more: what only it held, and what it leased, is the
    // origin's again, for the next origin peer.
    let c = sched(&s, "c", 8).await;
    assert!(!offers(&c, "dead"), "{c:?}");
    assert_eq!(origin_pieces(&c), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(s.list_tasks()[0].origin_peers, vec!["c"]);
}

#[tokio::test]
async fn stalls_count_from_several_children_on_pieces_the_parent_holds() {
    // Peers outlive the time out of scheduling (no heartbeats here).
    let s = state(SupernodeConfig {
        peer_ttl: Duration::from_secs(3600),
        ..Default::default()
    });
    join(&s, "slow", &[0, 1, 2, 3, 4, 5, 6, 7]);
    for id in ["b", "c", "d"] {
        join(&s, id, &[]);
    }
    // One child's stalls may be its own link's fault; interrupted bodies never count.
    failed(&s, "b", 0, "slow", FailReason::Timeout);
    failed(&s, "b", 1, "slow", FailReason::Timeout);
    failed(&s, "c", 2, "slow", FailReason::Interrupted);
    assert!(!is_down(&s, "slow"));
    // A second child: out.
    failed(&s, "c", 3, "slow", FailReason::Timeout);
    assert!(is_down(&s, "slow"));
    let d = sched(&s, "d", 8).await;
    assert!(!offers(&d, "slow"), "{d:?}");
    assert_eq!(s.list_tasks()[0].pieces_available, 0);
    // After its time out it is offered again, with its pieces.
    s.sweep(Instant::now() + super::down::DOWN_FOR + Duration::from_secs(1));
    assert!(!is_down(&s, "slow"));
    assert_eq!(s.list_tasks()[0].pieces_available, PIECES);
}

#[tokio::test]
async fn a_stall_while_relaying_does_not_count() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    // a relays piece 0 from the origin: its children stall when the origin does.
    failed(&s, "b", 0, "a", FailReason::Timeout);
    failed(&s, "c", 0, "a", FailReason::Timeout);
    assert!(!is_down(&s, "a"));
}

#[tokio::test]
async fn a_relay_fetching_from_the_requester_is_not_offered_to_it() {
    let s = state(SupernodeConfig {
        max_origin_peers_per_task: 1,
        ..Default::default()
    });
    for id in ["a", "b", "c"] {
        join(&s, id, &[]);
    }
    // a fetches piece 0 from the origin; b relays it from a; c from b (fewest uploads).
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    assert_eq!(parent_ids(&sched(&s, "b", 1).await, 0), vec!["a"]);
    let c = sched(&s, "c", 1).await;
    assert_eq!(parent_ids(&c, 0)[0], "b", "{c:?}");
    // b's transfer breaks; asking again, it must not be sent to c, whose copy comes from b.
    failed(&s, "b", 0, "a", FailReason::Interrupted);
    let b = sched(&s, "b", 1).await;
    assert_eq!(parent_ids(&b, 0), vec!["a"], "{b:?}");
}

#[tokio::test]
async fn an_upload_cut_off_frees_the_parents_slot() {
    let s = state(SupernodeConfig::default());
    join(&s, "h", &[0, 1, 2, 3, 4, 5, 6, 7]);
    join(&s, "dead", &[]);
    assert_eq!(sched(&s, "dead", 8).await.assignments.len(), 8);
    let uploading = |s: &State| {
        let t = &s.list_tasks()[0];
        t.peers.iter().find(|p| p.peer_id == "h").unwrap().uploading
    };
    assert_eq!(uploading(&s), 8);
    // h's uploads to the dead child break off; a cut naming another parent changes nothing.
    let cut = |reporter: &str, pieces: std::ops::Range<u32>| PieceReport {
        peer_id: reporter.into(),
        done: vec![],
        failed: vec![],
        uploads_cut: pieces
            .map(|piece| shoal_common::api::UploadCut {
                piece,
                child: "dead".into(),
            })
            .collect(),
    };
    join(&s, "other", &[]);
    s.report(&task(), &cut("other", 0..8)).unwrap();
    assert_eq!(uploading(&s), 8);
    s.report(&task(), &cut("h", 0..8)).unwrap();
    assert_eq!(uploading(&s), 0);
}
