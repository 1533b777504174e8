//! Crash consistency: a peer is killed with SIGKILL at 10 seeded points of one download and
//! restarted on the same data dir each time. After every restart, every piece it serves to
//! other peers matches the blob, the supernode is told of exactly the pieces it serves, and
//! nothing it held before the kill is lost; what it fetches from the origin after each
//! restart is at most what was missing plus the pieces that were in flight at the kill. The
//! download then completes, and another peer fetches the whole blob from the restarted one.
//!
//! The kill times are drawn from `0..D`, D the fault-free duration of the same download
//! measured in this run, with a seed printed at the start (`SHOAL_TEST_SEED=N` replays one).

mod support;

use std::time::{Duration, Instant};

use support::*;

const BLOB: usize = 64 << 20;
const KILLS: usize = 10;
/// Fetch slots per task: `--concurrent-pieces`, passed explicitly since the bound on what a
/// kill may waste is derived from it.
const CONCURRENT_PIECES: u64 = 8;
/// Slow enough that a download lasts about 4 s, so kills land inside it.
const DOWNLOAD_RATE: &str = "16MiB";
const PEER_ID: &str = "crash-a";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_at_seeded_points_keeps_the_cache_consistent_and_the_download_resumes() {
    with_timeout(Duration::from_secs(300), async {
        let seed = std::env::var("SHOAL_TEST_SEED")
            .ok()
            .map(|s| s.parse::<u64>().expect("SHOAL_TEST_SEED is a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("crash_restart seed: {seed} (rerun with SHOAL_TEST_SEED={seed})");
        let mut rng = SplitMix(seed);

        let origin = Origin::start().await;
        let blob = random_blob(seed, BLOB);
        let (digest, url) = origin.push("crash/app", &blob).await;
        let reference = random_blob(seed ^ 0x5eed, BLOB);
        let (ref_digest, ref_url) = origin.push("crash/reference", &reference).await;
        drop(reference);
        let task = digest.to_string();

        let supernode = Supernode::start().await;
        let mut a = Peer::start(
            "a",
            PeerOpts::with_supernode(&supernode)
                .peer_id(PEER_ID)
                .arg(format!("--download-rate={DOWNLOAD_RATE}"))
                .arg(format!("--concurrent-pieces={CONCURRENT_PIECES}")),
        )
        .await;
        let out = tempfile::tempdir().unwrap();

        // The fault-free duration and origin bytes of the same download (another blob of the
        // same size through the same peer).
        let before = origin.egress();
        let started = Instant::now();
        get(
            &a,
            &ref_url,
            Some(&ref_digest),
            &out.path().join("reference"),
        )
        .await
        .assert_success("fault-free reference download");
        let fault_free = started.elapsed();
        let ref_bytes = origin.egress() - before;
        eprintln!(
            "fault-free: {:.2} s, {ref_bytes} origin bytes for a {BLOB}-byte blob",
            fault_free.as_secs_f64()
        );

        let mut kill_at: Vec<Duration> =
            (0..KILLS).map(|_| fault_free.mul_f64(rng.unit())).collect();
        kill_at.sort();
        eprintln!(
            "kill points (s into the download): {:?}",
            kill_at
                .iter()
                .map(|t| format!("{:.2}", t.as_secs_f64()))
                .collect::<Vec<_>>()
        );

        // A blob of the same length gets the same layout: known before the first kill.
        let l = task_layout(&supernode, &ref_digest.to_string())
            .await
            .expect("the supernode knows the reference task");
        // Response headers per piece request, measured in the fault-free run.
        let per_request = (ref_bytes.saturating_sub(BLOB as u64)).div_ceil(BLOB as u64 / l.1);
        eprintln!("origin overhead per piece request: {per_request} bytes");
        let crash_start = Instant::now();
        let mut held = 0u32;
        let mut mark = origin.egress();
        let mut total = 0u64;
        let mut allowed_waste = 0u64;
        for (i, at) in kill_at.iter().enumerate() {
            // Kill point i is where the fault-free download was at `at`: once the peer holds
            // that share of the blob. (Waiting for `at` itself would drift with the machine's
            // load: a busy CI runner downloads at another pace than the reference did, and
            // the kills would bunch up at the start or fall after the end.)
            let target = (BLOB as f64 * at.as_secs_f64() / fault_free.as_secs_f64()) as u64;
            let path = out.path().join(format!("attempt{i}"));
            // Bytes stored by this process (the first one also stored the reference blob).
            let base = stored(&a).await;
            let started = Instant::now();
            let attempt = spawn_get(&a, &url, Some(&digest), &path);
            loop {
                let now = stored(&a).await - base;
                if u64::from(held) * l.1 + now >= target || attempt.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ran = started.elapsed();
            let finished_first = attempt.is_finished();
            a.kill9();
            let result = attempt.await.unwrap();
            let restarting = Instant::now();
            a.restart().await;
            let restart_took = restarting.elapsed();

            if let Some(actual) = task_layout(&supernode, &task).await {
                assert_eq!(actual, l, "the task's layout differs from the reference's");
            }
            let checking = Instant::now();
            let now_held = check_served(&a, &task, &blob, l).await;
            let check_took = checking.elapsed();
            assert!(
                now_held >= held,
                "kill {i}: the restarted peer serves {now_held} pieces, it held {held} before \
                 the kill: its cache lost pieces"
            );
            let announcing = Instant::now();
            wait_announced(&supernode, &task, now_held).await;
            let announce_took = announcing.elapsed();
            let fetched = origin.egress() - mark;
            mark = origin.egress();
            total += fetched;
            let gained = u64::from(now_held - held) * l.1;
            let in_flight = CONCURRENT_PIECES * l.1;
            // Each piece request costs response headers too, as in the fault-free run.
            let headers =
                (u64::from(now_held - held) + CONCURRENT_PIECES) * 2 * per_request + HEADERS_ONLY;
            allowed_waste += in_flight + headers;
            eprintln!(
                "kill {i} at {:.2} s = {target} bytes (ran {:.2} s{}): held {held} -> {now_held} \
                 pieces; origin bytes {fetched} = {gained} kept + {} lost (bound {in_flight} in \
                 flight); restart {} ms, check {} ms, announce {} ms",
                at.as_secs_f64(),
                ran.as_secs_f64(),
                if result.success() {
                    ", get finished"
                } else if finished_first {
                    ", get failed before the kill"
                } else {
                    ""
                },
                fetched as i64 - gained as i64,
                restart_took.as_millis(),
                check_took.as_millis(),
                announce_took.as_millis(),
            );
            assert!(
                fetched <= gained + in_flight + headers,
                "kill {i}: fetched {fetched} bytes from the origin, kept {gained}: more than the \
                 {in_flight} bytes of pieces in flight were lost"
            );
            held = now_held;
        }

        // The last attempt runs to the end.
        let path = out.path().join("final");
        get(&a, &url, Some(&digest), &path)
            .await
            .assert_success("download after the last restart");
        assert_file_digest(&path, &digest);
        let fetched = origin.egress() - mark;
        total += fetched;
        let piece_count = (BLOB as u64).div_ceil(l.1) as u32;
        eprintln!(
            "final attempt: {held} -> {piece_count} pieces, origin bytes {fetched}; crash run \
             {:.2} s in all",
            crash_start.elapsed().as_secs_f64()
        );
        assert!(
            fetched <= u64::from(piece_count - held) * (l.1 + 2 * per_request) + 2 * HEADERS_ONLY,
            "the last attempt fetched {fetched} bytes for {} missing pieces",
            piece_count - held
        );
        eprintln!(
            "origin bytes over the {KILLS} kills: {total} for a {BLOB}-byte blob ({:.2}x; bound \
             {} = blob + {KILLS} x in-flight pieces + headers; fault-free {ref_bytes})",
            total as f64 / BLOB as f64,
            BLOB as u64 + allowed_waste + 2 * HEADERS_ONLY + 128 * per_request
        );
        assert!(total <= BLOB as u64 + allowed_waste + 2 * HEADERS_ONLY + 128 * per_request);

        // Restart once more on the complete cache: it serves everything, verified, and
        // another peer gets the whole blob from it, not from the origin.
        a.kill9();
        a.restart().await;
        assert_eq!(check_served(&a, &task, &blob, l).await, piece_count);
        wait_announced(&supernode, &task, piece_count).await;
        let b = Peer::start("b", PeerOpts::with_supernode(&supernode)).await;
        let before = origin.egress();
        let path = out.path().join("b");
        get(&b, &url, Some(&digest), &path)
            .await
            .assert_success("get via B from the restarted peer");
        assert_file_digest(&path, &digest);
        let from_origin = origin.egress() - before;
        assert!(
            from_origin <= HEADERS_ONLY,
            "B took {from_origin} bytes from the origin although the restarted peer holds the blob"
        );
        a.assert_running();
    })
    .await
}

/// Piece bytes the peer process stored so far.
async fn stored(peer: &Peer) -> u64 {
    peer.metric("shoal_peer_download_bytes_total", &[]).await as u64
}

/// The task's layout as the supernode knows it: (length, piece size).
async fn task_layout(supernode: &Supernode, task: &str) -> Option<(u64, u64)> {
    let tasks = supernode.tasks().await;
    let t = tasks
        .as_array()?
        .iter()
        .find(|t| t["task_id"].as_str() == Some(task))?;
    Some((
        t["layout"]["length"].as_u64()?,
        t["layout"]["piece_size"].as_u64()?,
    ))
}

/// Asks the peer's piece server for every piece, as another peer would; every piece it serves
/// must be the blob's bytes. Returns how many it serves.
async fn check_served(peer: &Peer, task: &str, blob: &[u8], (length, piece): (u64, u64)) -> u32 {
    let count = length.div_ceil(piece);
    // One client for all: building one per request costs more than the requests.
    let client = http();
    let mut probes = tokio::task::JoinSet::new();
    for i in 0..count {
        let url = format!("{}/api/v1/tasks/{task}/data", peer.p2p_url());
        let client = client.clone();
        let (start, end) = (i * piece, ((i + 1) * piece).min(length));
        probes.spawn(async move {
            let resp = client
                .get(url)
                .header("range", format!("bytes={start}-{}", end - 1))
                .header(shoal_common::PEER_ID_HEADER, "test-probe")
                .send()
                .await
                .unwrap_or_else(|e| panic!("piece server: {e}"));
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            (i, start, end, status, body)
        });
    }
    let mut served = 0;
    while let Some(probe) = probes.join_next().await {
        let (i, start, end, status, body) = probe.unwrap();
        match status {
            206 => {
                assert!(
                    body[..] == blob[start as usize..end as usize],
                    "the restarted peer served piece {i} with bytes that are not the blob's"
                );
                served += 1;
            }
            404 => {}
            other => panic!("piece {i}: the piece server answered {other}"),
        }
    }
    served
}

/// Waits until the supernode lists exactly `pieces` pieces for the peer: its re-announce
/// covers what it serves, nothing more.
async fn wait_announced(supernode: &Supernode, task: &str, pieces: u32) {
    if pieces == 0 {
        return;
    }
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = supernode.tasks().await;
        seen = tasks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["task_id"].as_str() == Some(task))
            .flat_map(|t| t["peers"].as_array().cloned().unwrap_or_default())
            .find(|p| p["peer_id"].as_str() == Some(PEER_ID))
            .and_then(|p| p["pieces"].as_u64())
            .or(seen);
        if seen == Some(u64::from(pieces)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the supernode lists {seen:?} pieces for the restarted peer, which serves {pieces}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small seeded generator (splitmix64): the same seed gives the same kill points.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..1`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
