//! Origin leases: exclusive, few, spread over peers, and the digest a relayed origin fetch records.

use super::*;

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

#[tokio::test]
async fn a_relayed_origin_fetch_records_the_first_whole_copy() {
    let s = one_origin_peer(&["a", "b", "c"]);
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
