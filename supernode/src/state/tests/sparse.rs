//! Sparse readers: wanted pieces first, from the origin once, never an unconfirmed relay.

use super::*;

#[tokio::test]
async fn sparse_readers_lease_their_pieces_from_the_origin_once() {
    // Only one peer may take whole-blob origin leases; readers of ranges still get theirs.
    let s = one_origin_peer(&["a", "b", "c"]);
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
    let s = one_origin_peer(&["a", "b", "c"]);
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
