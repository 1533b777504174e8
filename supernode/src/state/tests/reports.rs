//! Reports: corrupt parents, lost holdings, digests, completion, expiry.

use super::*;

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
