//! Parents that stopped answering, taken out of scheduling.

use super::*;

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
    s.sweep(Instant::now() + crate::state::down::DOWN_FOR + Duration::from_secs(1));
    assert!(!is_down(&s, "slow"));
    assert_eq!(s.list_tasks()[0].pieces_available, PIECES);
}

#[tokio::test]
async fn a_stall_while_relaying_does_not_count() {
    let s = one_origin_peer(&["a", "b", "c"]);
    assert_eq!(origin_pieces(&sched(&s, "a", 1).await), vec![0]);
    // a relays piece 0 from the origin: its children stall when the origin does.
    failed(&s, "b", 0, "a", FailReason::Timeout);
    failed(&s, "c", 0, "a", FailReason::Timeout);
    assert!(!is_down(&s, "a"));
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
