//! A full data directory (a small tmpfs, root only): a download that cannot fit fails at once
//! with a clear error (507 at the mirror, a message from `shoal-peer get`), before fetching
//! anything and without evicting blobs it could not have fitted anyway; the peer stays ready
//! and keeps serving what it holds; nothing of the failed blob is served; a download that fits
//! succeeds without anyone freeing space; unused blobs are evicted, least recently used first,
//! when that makes room; and once space is freed the big download succeeds at the first try.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_common::Digest;
use support::*;

/// The acceptance bound for the error to reach the client.
const FAIL_WITHIN: Duration = Duration::from_secs(5);

fn mirror_opts(origin: &Origin, data_dir: &Path) -> PeerOpts {
    // The default quota (20 GiB) is far above the tmpfs: only the disk itself runs out.
    PeerOpts::embedded()
        .data_dir(data_dir)
        .arg("--insecure-registry")
        .arg(format!("127.0.0.1:{}", origin.proxy.port))
}

/// `GET` of a blob through the peer's mirror, as containerd asks: (status, body, time).
async fn mirror_blob(
    peer: &Peer,
    origin: &Origin,
    repo: &str,
    d: &Digest,
) -> (u16, Vec<u8>, Duration) {
    let url = format!(
        "{}/v2/{repo}/blobs/{d}?ns=127.0.0.1:{}",
        peer.mirror_url(),
        origin.proxy.port
    );
    let started = Instant::now();
    let resp = http()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, body, started.elapsed())
}

async fn get_ok(peer: &Peer, url: &str, d: &Digest, out: &Path, what: &str) {
    get(peer, url, Some(d), out).await.assert_success(what);
    assert_file_digest(out, d);
}

/// Whether the peer's piece server serves the first and last byte of the blob (held whole).
async fn serves(peer: &Peer, d: &Digest, len: u64) -> bool {
    let task = d.to_string();
    peer.fetch_range(&task, 0, 0).await.0 == 206
        && peer.fetch_range(&task, len - 1, len - 1).await.0 == 206
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_fails_fast_keeps_serving_and_recovers() {
    with_timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        // Declared before the peer: the peer is killed before the tmpfs is unmounted.
        let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), 80 * MIB) else {
            return;
        };
        let origin = Origin::start().await;
        let small = random_blob(21, 8 * MIB as usize);
        let medium = random_blob(22, 16 * MIB as usize);
        let big = random_blob(23, 48 * MIB as usize);
        let (ds, us) = origin.push("full/app", &small).await;
        let (dm, um) = origin.push("full/app", &medium).await;
        let (db, ub) = origin.push("full/app", &big).await;
        // Space only deleting this file frees: 80 - 40 = 40 MiB for the cache.
        let filler = fs.fill("filler", 40 * MIB);
        let mut peer = Peer::start("peer", mirror_opts(&origin, &fs.path.join("data"))).await;
        let out = tempfile::tempdir().unwrap();

        get_ok(&peer, &us, &ds, &out.path().join("small"), "small blob").await;
        let free = fs.free_bytes();
        eprintln!(
            "free after the small blob: {free} B; the big blob is {} B",
            big.len()
        );
        // The big blob fits neither in what is free nor after evicting the small one.
        assert!(
            free + small.len() as u64 <= big.len() as u64,
            "setup: {free} B free"
        );

        // Through the mirror (containerd's path): a clear 507, at once, nothing fetched.
        let egress = origin.egress();
        let (status, body, took) = mirror_blob(&peer, &origin, "full/app", &db).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        eprintln!("mirror answered {status} after {took:?}: {body}");
        assert_eq!(status, 507, "mirror: {body}");
        assert!(
            body.contains("UNAVAILABLE") && body.contains("disk is full"),
            "{body}"
        );
        assert!(
            !body.contains(&fs.path.display().to_string()),
            "path leaked: {body}"
        );
        assert!(took < FAIL_WITHIN, "the mirror's error took {took:?}");
        // Through `shoal-peer get`: non-zero exit with the reason.
        let started = Instant::now();
        let failed = get(&peer, &ub, Some(&db), &out.path().join("big")).await;
        let took_get = started.elapsed();
        eprintln!(
            "shoal-peer get failed after {took_get:?}: {}",
            failed.stderr.trim()
        );
        failed.assert_failure("get of a blob larger than the free disk");
        assert!(failed.stderr.contains("disk is full"), "{}", failed.stderr);
        assert!(
            took_get < FAIL_WITHIN,
            "shoal-peer get's error took {took_get:?}"
        );
        let fetched = origin.egress() - egress;
        eprintln!("origin bytes sent for the two failed attempts: {fetched}");
        assert!(
            fetched < MIB,
            "{fetched} origin bytes fetched for a blob that cannot fit"
        );

        // The peer is fine: ready, the small blob still cached and served, the big one's
        // bytes neither served nor left on disk.
        peer.assert_running();
        assert!(peer.is_ready().await, "peer not ready after a full disk");
        assert!(
            serves(&peer, &ds, small.len() as u64).await,
            "the small blob is no longer served"
        );
        let (status, _) = peer.fetch_range(&db.to_string(), 0, 0).await;
        assert_eq!(status, 404, "a byte of the failed blob was served");
        let (status, _, _) = mirror_blob(&peer, &origin, "full/app", &ds).await;
        assert_eq!(
            status, 200,
            "the mirror no longer serves the cached small blob"
        );
        let tasks = dir_entries(&fs.path.join("data/tasks"));
        assert_eq!(
            tasks.len(),
            1,
            "task dirs left after the failure: {tasks:?}"
        );
        let after = fs.free_bytes();
        assert!(
            after + MIB >= free,
            "the failed download holds space: {free} B free before, {after} B after"
        );
        let disk_full = peer
            .metric("shoal_peer_downloads_total", &[("result", "disk_full")])
            .await;
        assert_eq!(disk_full, 2.0, "downloads counted as disk_full");
        let log = peer.stderr_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("disk is full"))
            .collect();
        eprintln!("the peer's error lines:\n{}", lines.join("\n"));
        assert_eq!(
            lines.len(),
            2,
            "error lines about the full disk (one per failed download):\n{log}"
        );

        // A download that fits succeeds without anyone freeing space.
        get_ok(
            &peer,
            &um,
            &dm,
            &out.path().join("medium"),
            "a smaller blob on the full disk",
        )
        .await;

        // Space freed by hand: the big download succeeds at its first try.
        std::fs::remove_file(&filler).unwrap();
        get_ok(
            &peer,
            &ub,
            &db,
            &out.path().join("big"),
            "the big blob once space was freed",
        )
        .await;
        assert!(
            serves(&peer, &db, big.len() as u64).await,
            "the big blob is not served"
        );
        eprintln!("free at the end: {} B", fs.free_bytes());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_evicts_the_least_recently_used_blob() {
    with_timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), 64 * MIB) else {
            return;
        };
        let origin = Origin::start().await;
        const BLOB: usize = 24 << 20;
        let mut blobs = Vec::new();
        for seed in 0..3 {
            blobs.push(
                origin
                    .push("evict/app", &random_blob(30 + seed, BLOB))
                    .await,
            );
        }
        let peer = Peer::start("peer", mirror_opts(&origin, &fs.path)).await;
        let out = tempfile::tempdir().unwrap();
        let [(d0, u0), (d1, u1), (d2, u2)] = [&blobs[0], &blobs[1], &blobs[2]].map(|b| b.clone());
        let started = Instant::now();
        get_ok(&peer, &u0, &d0, &out.path().join("0"), "blob 0").await;
        let plain = started.elapsed();
        get_ok(&peer, &u1, &d1, &out.path().join("1"), "blob 1").await;
        // Use blob 0 again (from the cache), so that blob 1 is the least recently used.
        let egress = origin.egress();
        get_ok(&peer, &u0, &d0, &out.path().join("0b"), "blob 0 again").await;
        assert!(
            origin.egress() - egress <= HEADERS_ONLY,
            "blob 0 was not served from the cache"
        );
        eprintln!(
            "free with two blobs cached: {} B; a third needs {BLOB} B",
            fs.free_bytes()
        );
        assert!(
            fs.free_bytes() < BLOB as u64,
            "setup: the third blob fits without evicting"
        );

        let started = Instant::now();
        get_ok(
            &peer,
            &u2,
            &d2,
            &out.path().join("2"),
            "blob 2 on a full disk",
        )
        .await;
        let evicting = started.elapsed();
        eprintln!(
            "blob 0 downloaded in {plain:?} with room, blob 2 in {evicting:?} after evicting"
        );
        // Making room costs deletions, not a retry loop: loosely, what a plain download costs.
        assert!(
            evicting <= plain * 3 + Duration::from_secs(2),
            "the download that had to evict took {evicting:?}, a plain one {plain:?}"
        );
        let evictions = peer.metric("shoal_peer_cache_evictions_total", &[]).await;
        assert_eq!(evictions, 1.0, "exactly one blob should have been evicted");
        assert!(
            serves(&peer, &d0, BLOB as u64).await,
            "the recently used blob 0 was evicted"
        );
        assert!(
            serves(&peer, &d2, BLOB as u64).await,
            "blob 2 is not served"
        );
        let (status, _) = peer.fetch_range(&d1.to_string(), 0, 0).await;
        assert_eq!(
            status, 404,
            "the least recently used blob 1 is still served"
        );
        assert!(peer.is_ready().await);
    })
    .await
}

/// `GET` of `range` of a blob through the mirror (a lazy mount's read): (status, body, time).
async fn mirror_range(
    peer: &Peer,
    origin: &Origin,
    d: &Digest,
    range: std::ops::Range<u64>,
) -> (u16, Vec<u8>, Duration) {
    let url = format!(
        "{}/v2/lazy/app/blobs/{d}?ns=127.0.0.1:{}",
        peer.mirror_url(),
        origin.proxy.port
    );
    let started = Instant::now();
    let resp = http()
        .get(&url)
        .header("range", format!("bytes={}-{}", range.start, range.end - 1))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, body, started.elapsed())
}

/// Range reads reserve nothing: their piece writes are what find the disk full. They evict
/// an unused blob and write again; with nothing to evict they fail at once with a 507.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_range_reads_evict_or_fail_cleanly() {
    with_timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), 32 * MIB) else {
            return;
        };
        let origin = Origin::start().await;
        let cached = random_blob(41, 8 * MIB as usize);
        let lazy = random_blob(42, 16 * MIB as usize);
        let (dc, uc) = origin.push("lazy/app", &cached).await;
        let (dl, _) = origin.push("lazy/app", &lazy).await;
        let mut peer = Peer::start("peer", mirror_opts(&origin, &fs.path.join("data"))).await;
        let out = tempfile::tempdir().unwrap();
        get_ok(&peer, &uc, &dc, &out.path().join("c"), "the cached blob").await;
        // Room for a task's metadata, not for a piece (1 MiB).
        let _filler = fs.fill("filler", fs.free_bytes() - 512 * 1024);
        eprintln!("free before the range reads: {} B", fs.free_bytes());

        let first = 0..4096;
        let (status, body, took) = mirror_range(&peer, &origin, &dl, first.clone()).await;
        eprintln!("range read on a full disk with a blob to evict: {status} after {took:?}");
        assert_eq!(status, 206, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, &lazy[0..4096], "wrong bytes");
        let evictions = peer.metric("shoal_peer_cache_evictions_total", &[]).await;
        assert_eq!(evictions, 1.0, "the unused blob should have been evicted");
        assert_eq!(peer.fetch_range(&dc.to_string(), 0, 0).await.0, 404);

        // Nothing left to evict (the only task is the one being read).
        let _filler2 = fs.fill("filler2", fs.free_bytes().saturating_sub(512 * 1024));
        let last = lazy.len() as u64 - 4096..lazy.len() as u64;
        let (status, body, took) = mirror_range(&peer, &origin, &dl, last.clone()).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        eprintln!("range read with nothing to evict: {status} after {took:?}: {text}");
        assert_eq!(status, 507, "{text}");
        assert!(text.contains("disk is full"), "{text}");
        assert!(took < FAIL_WITHIN, "the error took {took:?}");
        peer.assert_running();
        assert!(peer.is_ready().await, "peer not ready after a full disk");
        // Nothing of the failed task is served, not even the piece it had stored.
        assert_eq!(peer.fetch_range(&dl.to_string(), 0, 0).await.0, 404);

        // Space back: the same read succeeds.
        std::fs::remove_file(fs.path.join("filler2")).unwrap();
        let (status, body, _) = mirror_range(&peer, &origin, &dl, last.clone()).await;
        assert_eq!(status, 206, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, &lazy[last.start as usize..]);
    })
    .await
}
