//! A mount whose disk cache sits on a full filesystem (a small tmpfs; root and `/dev/fuse`
//! required, skipped otherwise): every read still succeeds, from the network; the full disk
//! is logged once, not per chunk; and when the filesystem holds only the cache's own chunks,
//! the oldest ones make room for new ones (evictions below the quota).

mod common;
mod mount_support;

use std::fs;
use std::time::Duration;

use common::*;
use mount_support::fixture::*;
use mount_support::*;
use shoal_testkit::Tmpfs;

#[test]
fn reads_succeed_when_the_disk_cache_filesystem_is_full() {
    let Some(fx) = setup() else { return };
    let data: u64 = fx.index.blobs.iter().map(|b| b.size).sum();

    // 1. Full from the start, with nothing of the cache's own to evict.
    let Some(full) = Tmpfs::mount(&fx.path("full-fs"), 1 << 20) else {
        return;
    };
    let cache = full.path.join("cache");
    fs::create_dir_all(cache.join("chunks")).unwrap();
    full.fill("filler", full.free_bytes());
    eprintln!("cache filesystem free: {} B", full.free_bytes());
    let m = fx.mount("mnt-full", &["--cache-dir", cache.to_str().unwrap()]);
    let (exp, mp) = (fx.expected.clone(), m.mp.clone());
    let (want, got) = within(Duration::from_secs(120), "tree walk", move || {
        (snapshot(&exp), snapshot(&mp))
    });
    assert_same_tree(&want, &got);
    let fetched = m.metric("shoal_lazyfs_fetch_bytes_total");
    let cached = m.metric("shoal_lazyfs_disk_cache_bytes");
    let errors = m.metric("shoal_lazyfs_read_errors_total");
    eprintln!(
        "full cache fs: fetched {fetched} B, disk cache holds {cached} B, read errors {errors}"
    );
    assert!(
        fetched > 0.0,
        "nothing was fetched: the reads did not reach the network"
    );
    assert_eq!(cached, 0.0, "chunks were cached on a full filesystem");
    assert_eq!(errors, 0.0, "reads failed");
    let log = m.proc_.log_text();
    let warnings = log.matches("filesystem is full").count();
    assert_eq!(warnings, 1, "the full disk should be logged once:\n{log}");
    drop(m);

    // 2. A filesystem smaller than the image (and than the quota): the cache evicts its
    // oldest chunks to go on caching.
    let Some(small) = Tmpfs::mount(&fx.path("small-fs"), data / 2) else {
        return;
    };
    let cache = small.path.join("cache");
    let m = fx.mount("mnt-small", &["--cache-dir", cache.to_str().unwrap()]);
    let (exp, mp) = (fx.expected.clone(), m.mp.clone());
    let (want, got) = within(Duration::from_secs(120), "tree walk", move || {
        (snapshot(&exp), snapshot(&mp))
    });
    assert_same_tree(&want, &got);
    let cached = m.metric("shoal_lazyfs_disk_cache_bytes");
    let evictions = m.metric("shoal_lazyfs_disk_cache_evictions_total");
    let errors = m.metric("shoal_lazyfs_read_errors_total");
    eprintln!(
        "cache fs of {} B for {data} B of data: disk cache holds {cached} B after {evictions} evictions, read errors {errors}",
        data / 2
    );
    assert!(evictions > 0.0, "nothing was evicted to make room");
    assert!(cached > 0.0, "nothing was cached after making room");
    assert_eq!(errors, 0.0, "reads failed");
}
