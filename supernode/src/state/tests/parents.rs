//! Parent selection: piece order, ranking, avoidance, zones, relays and relay cycles, scale.

use super::*;

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
    let s = one_origin_peer(&["o", "b", "d", "c"]);
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

#[tokio::test]
async fn a_relay_fetching_from_the_requester_is_not_offered_to_it() {
    let s = one_origin_peer(&["a", "b", "c"]);
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
