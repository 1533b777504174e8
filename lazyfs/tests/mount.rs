//! `shoal-lazyfs mount` end to end, with real parts: a multi-layer image converted into a
//! real `docker-registry`, read through a real `shoal-peer` by a real FUSE mount (root and
//! `/dev/fuse` required; skipped otherwise).
//!
//! - the mounted tree equals the source (contents, stat fields, symlinks, xattrs, hardlinks);
//!   the metrics catalogue section matches what the mount exposes; writes are refused;
//!   `--record-access` lists what was read; SIGTERM unmounts; a remount reads from the disk
//!   cache without fetching;
//! - reading one small file fetches little more than its chunks plus the index;
//! - a corrupted chunk gives EIO for its file only;
//! - with registry and peer gone, uncached reads fail fast with EIO, cached data still reads;
//! - overlayfs over the mount takes writes and leaves the lower tree unchanged.

mod common;
mod mount_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use mount_support::fixture::*;
use mount_support::*;
use shoal_common::Digest;

#[test]
fn mounted_tree_equals_source_and_unmounts_on_sigterm() {
    let Some(fx) = setup() else { return };
    let access = fx.path("access.txt");
    let mut m = fx.mount("mnt", &["--record-access", access.to_str().unwrap()]);
    let mp = m.mp.clone();
    // Read a few files first so the access list has a known beginning.
    let first = ["etc/hostname", "opt/app/small.txt", "usr/bin/big-hl"];
    let mp2 = mp.clone();
    within(Duration::from_secs(60), "first reads", move || {
        for f in first {
            fs::read(mp2.join(f)).unwrap();
        }
    });
    let (exp, mp2) = (fx.expected.clone(), mp.clone());
    let (want, got) = within(Duration::from_secs(120), "tree walk", move || {
        (snapshot(&exp), snapshot(&mp2))
    });
    assert_same_tree(&want, &got);
    let (exp, mp2) = (fx.expected.clone(), mp.clone());
    let (want_st, got_st) = within(Duration::from_secs(60), "stat walk", move || {
        (stat_fields(&exp), stat_fields(&mp2))
    });
    assert_eq!(want_st, got_st, "size/mtime/nlink differ");
    // Hardlinks share an inode number; inode numbers are the index's (+1).
    let ino = |p: &str| fs::symlink_metadata(mp.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/big"), ino("usr/bin/big-hl"));
    assert_eq!(ino("usr/lib/lib1.so"), ino("opt/app/lib1-hl.so"));
    assert_ne!(ino("usr/bin/big"), ino("usr/lib/lib1.so"));
    assert_eq!(fs::metadata(&mp).unwrap().ino(), 1);
    let xattr = xattr::get(mp.join("home/user/notes"), "user.color").unwrap();
    assert_eq!(xattr.as_deref(), Some(&b"blue"[..]));
    // Reads at odd offsets across chunk boundaries.
    let big = fs::read(fx.expected.join("usr/bin/big")).unwrap();
    let mut f = fs::File::open(mp.join("usr/bin/big")).unwrap();
    for off in [0u64, 65_535, 1_000_001, big.len() as u64 - 10] {
        let mut buf = vec![0u8; 300_000];
        f.seek(SeekFrom::Start(off)).unwrap();
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &big[off as usize..off as usize + n]);
    }
    // Read-only: writes are refused.
    let err = fs::write(mp.join("etc/hostname"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = fs::create_dir(mp.join("newdir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // statfs answers.
    let st = rustix::fs::statvfs(&mp).unwrap();
    assert_eq!(st.f_files, fx.index.inodes.len() as u64);
    // The mount raised its kernel readahead window from 128 KiB to the default 1 MiB.
    let dev = fs::metadata(&mp).unwrap().dev();
    let ra = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    assert_eq!(fs::read_to_string(&ra).unwrap().trim(), "1024", "{ra}");

    let scrape = m.scrape();
    check_metrics_catalogue(&scrape);
    let read = metric_sum(&scrape, "shoal_lazyfs_read_bytes_total");
    let from_peer = metric_sum(&scrape, "shoal_lazyfs_fetch_bytes_total{source=\"peer\"}");
    let from_registry = metric_sum(
        &scrape,
        "shoal_lazyfs_fetch_bytes_total{source=\"registry\"}",
    );
    eprintln!(
        "read {read} bytes; fetched {from_peer} from the peer, {from_registry} from the registry"
    );
    assert!(read >= big.len() as f64);
    assert!(from_peer > 0.0, "nothing came through the peer");
    assert_eq!(
        from_registry, 0.0,
        "the peer was up: no registry fallback expected"
    );

    // SIGTERM: clean unmount, exit 0, access list written in first-read order.
    let st = m.sigterm();
    assert!(st.success(), "exit status {st}");
    assert!(!is_mounted(&mp), "still mounted after SIGTERM");
    let list = fs::read_to_string(&access).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        &lines[..3],
        &["/etc/hostname", "/opt/app/small.txt", "/usr/bin/big"],
        "{list}"
    );
    let files = fx
        .index
        .inodes
        .iter()
        .filter(|i| i.kind == shoal_lazyfs::Kind::File)
        .count();
    assert_eq!(lines.len(), files, "every file was read once");
    drop(m);

    // Remount on the same disk cache: everything reads back without fetching.
    let cache = fx.path("mnt-cache");
    let m2 = fx.mount("mnt", &["--cache-dir", cache.to_str().unwrap()]);
    let (exp, mp2) = (fx.expected.clone(), mp.clone());
    let (want, got) = within(Duration::from_secs(120), "warm tree walk", move || {
        (snapshot(&exp), snapshot(&mp2))
    });
    assert_same_tree(&want, &got);
    let scrape = m2.scrape();
    assert_eq!(metric_sum(&scrape, "shoal_lazyfs_fetch_bytes_total"), 0.0);
    assert!(metric_sum(&scrape, "shoal_lazyfs_cache_hits_total{tier=\"disk\"}") > 0.0);
}

#[test]
fn reading_one_small_file_fetches_only_its_chunks() {
    let Some(fx) = setup() else { return };
    // Count what the peer sends to the mount.
    let upstream = fx.peer.mirror.trim_start_matches("http://").to_string();
    let proxy = CountingProxy::start(&upstream);
    let peer_url = format!("http://{}", proxy.addr);
    let cache = fx.path("cache");
    let m = MountProc::start(
        fx.tmp.path(),
        "lazy",
        &fx.image,
        &fx.path("mnt"),
        &[
            "--peer",
            &peer_url,
            "--insecure-registry",
            &fx.registry.addr,
            "--no-fallback",
            "--prefetch",
            "none",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    let after_mount = proxy.bytes();
    let file = "opt/app/small.txt";
    let p = m.mp.join(file);
    let data = within(Duration::from_secs(60), "small read", move || {
        fs::read(p).unwrap()
    });
    assert_eq!(data, fs::read(fx.expected.join(file)).unwrap());
    let total = proxy.bytes();
    let chunks = fx.file_csize(file);
    let blob: u64 = fx.index.blobs.iter().map(|b| b.size).sum();
    eprintln!(
        "mount fetched {after_mount} bytes (index {} bytes); reading {file} fetched {} more; its chunks are {chunks} bytes; data blobs {blob} bytes",
        fx.index_size,
        total - after_mount
    );
    assert!(
        (total as f64) <= 1.5 * chunks as f64 + fx.index_size as f64 + 4096.0,
        "fetched {total} bytes for {chunks} chunk bytes + {} index bytes",
        fx.index_size
    );
    assert!(total < blob / 4, "fetched a large part of the blob");
    let fetched = m.metric("shoal_lazyfs_fetch_bytes_total");
    assert_eq!(fetched as u64, chunks, "mount's own count");
}

#[test]
fn corrupted_chunk_reads_as_eio_and_other_files_still_read() {
    let Some(fx) = setup() else { return };
    let victim = "home/user/victim";
    let e = fx.index.resolve(victim.as_bytes()).unwrap();
    let ino = fx.index.entries[e as usize].inode;
    let fc = fx.index.file_chunks(ino)[0];
    let chunk = fx.index.chunks[fc.chunk as usize].clone();
    let blob = fx.index.blobs[chunk.blob as usize].digest;
    let path = fx.registry.blob_path(&blob.hex());
    let mut bytes = fs::read(&path).unwrap();
    let mid = (chunk.offset + u64::from(chunk.stored_len) / 2) as usize;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    assert_ne!(Digest::of(&bytes), blob);

    let m = fx.mount("mnt", &["--timeout", "5s"]);
    let mp = m.mp.clone();
    let err = within(Duration::from_secs(60), "corrupt read", move || {
        fs::read(mp.join(victim)).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for other in [
        "etc/passwd",
        "usr/lib/lib5.so",
        "opt/app/app.bin",
        "home/user/notes",
    ] {
        let mp = m.mp.clone();
        let got = within(Duration::from_secs(60), "other read", move || {
            fs::read(mp.join(other)).unwrap()
        });
        assert_eq!(got, fs::read(fx.expected.join(other)).unwrap(), "{other}");
    }
    // Still EIO the second time (nothing wrong was cached).
    let mp = m.mp.clone();
    let err = within(Duration::from_secs(60), "corrupt re-read", move || {
        fs::read(mp.join(victim)).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let scrape = m.scrape();
    assert!(metric_sum(&scrape, "shoal_lazyfs_fetch_errors_total") > 0.0);
    assert!(metric_sum(&scrape, "shoal_lazyfs_read_errors_total") > 0.0);
}

#[test]
fn dead_sources_give_fast_eio_while_cached_data_reads() {
    let Some(mut fx) = setup() else { return };
    let m = fx.mount("mnt", &["--timeout", "2s", "--retries", "1"]);
    let big = fs::read(fx.expected.join("usr/bin/big")).unwrap();
    // Start reading the big file: its first part gets cached.
    let mp = m.mp.clone();
    let head = within(Duration::from_secs(60), "head read", move || {
        let mut f = fs::File::open(mp.join("usr/bin/big")).unwrap();
        let mut buf = vec![0u8; 100_000];
        f.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(head, big[..100_000]);
    let small = fs::read(m.mp.join("etc/passwd")).unwrap();

    // Registry and peer go away mid-use.
    fx.peer.proc_.kill();
    fx.registry.stop();
    // Forget the kernel's cached pages of these files so reads reach the filesystem again.
    for f in ["usr/bin/big", "etc/passwd"] {
        drop_page_cache(&m.mp.join(f));
    }

    let mp = m.mp.clone();
    let started = Instant::now();
    let err = within(Duration::from_secs(30), "uncached read", move || {
        let mut f = fs::File::open(mp.join("usr/bin/big")).unwrap();
        f.seek(SeekFrom::Start(3 * MIB as u64)).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read(&mut buf).unwrap_err()
    });
    let took = started.elapsed();
    eprintln!("uncached read failed after {took:?}: {err}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let mp = m.mp.clone();
    let err = within(Duration::from_secs(30), "other uncached read", move || {
        fs::read(mp.join("opt/app/app.bin")).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // Cached data still reads.
    for f in ["usr/bin/big", "etc/passwd"] {
        drop_page_cache(&m.mp.join(f));
    }
    let hits_before = m.metric("shoal_lazyfs_cache_hits_total");
    let mp = m.mp.clone();
    let (head2, small2) = within(Duration::from_secs(30), "cached read", move || {
        let mut f = fs::File::open(mp.join("usr/bin/big")).unwrap();
        let mut buf = vec![0u8; 100_000];
        f.read_exact(&mut buf).unwrap();
        (buf, fs::read(mp.join("etc/passwd")).unwrap())
    });
    assert_eq!(head2, big[..100_000]);
    assert_eq!(small2, small);
    // Metadata never needed the network.
    assert_eq!(
        fs::read_dir(m.mp.join("usr/lib")).unwrap().count(),
        fs::read_dir(fx.expected.join("usr/lib")).unwrap().count()
    );
    let scrape = m.scrape();
    assert!(metric_sum(&scrape, "shoal_lazyfs_read_errors_total") >= 2.0);
    assert!(
        metric_sum(&scrape, "shoal_lazyfs_cache_hits_total") > hits_before,
        "the cached reads did not reach the mount's cache"
    );
}

/// `posix_fadvise(DONTNEED)`: drop one file's pages from the kernel's page cache.
fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    // SAFETY: a valid open descriptor; the call only affects caching.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

#[test]
fn overlayfs_over_the_mount_takes_writes() {
    let Some(fx) = setup() else { return };
    let mut m = fx.mount("lower", &[]);
    let (upper, work, merged) = (fx.path("upper"), fx.path("work"), fx.path("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            m.mp.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "mounting overlayfs failed");
    let ov = Overlay(merged.clone());
    let merged2 = merged.clone();
    within(Duration::from_secs(60), "overlay writes", move || {
        fs::write(merged2.join("etc/hostname"), b"container\n").unwrap();
        fs::write(merged2.join("opt/app/new.txt"), b"hello").unwrap();
        fs::remove_file(merged2.join("usr/lib/lib2.so")).unwrap();
        // Appending copies the lower file up through the FUSE mount.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(merged2.join("usr/bin/big"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"tail").unwrap();
    });
    assert_eq!(
        fs::read(merged.join("etc/hostname")).unwrap(),
        b"container\n"
    );
    assert_eq!(fs::read(merged.join("opt/app/new.txt")).unwrap(), b"hello");
    assert!(!merged.join("usr/lib/lib2.so").exists());
    let mut big = fs::read(fx.expected.join("usr/bin/big")).unwrap();
    let lower_big = fs::read(m.mp.join("usr/bin/big")).unwrap();
    assert_eq!(lower_big, big, "lower changed");
    big.extend_from_slice(b"tail");
    assert_eq!(fs::read(merged.join("usr/bin/big")).unwrap(), big);
    assert_eq!(fs::read(upper.join("opt/app/new.txt")).unwrap(), b"hello");
    // The lower tree is unchanged.
    assert_eq!(fs::read(m.mp.join("etc/hostname")).unwrap(), b"updated\n");
    assert!(m.mp.join("usr/lib/lib2.so").exists());
    assert!(!m.mp.join("opt/app/new.txt").exists());
    drop(ov);
    assert!(!is_mounted(&merged));
    let st = m.sigterm();
    assert!(st.success());
    assert!(!is_mounted(&m.mp));
}

#[test]
fn prefetch_all_fills_the_cache_so_the_tree_reads_offline() {
    let Some(mut fx) = setup() else { return };
    let m = fx.mount("mnt", &["--prefetch", "all", "--timeout", "2s"]);
    let chunks = fx.index.chunks.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.metric("shoal_lazyfs_prefetch_chunks_total") < chunks {
        assert!(Instant::now() < deadline, "prefetch did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched = m.metric("shoal_lazyfs_fetch_bytes_total");
    let blobs: u64 = fx.index.blobs.iter().map(|b| b.size).sum();
    assert_eq!(fetched as u64, blobs, "every chunk fetched exactly once");
    fx.peer.proc_.kill();
    fx.registry.stop();
    let (exp, mp) = (fx.expected.clone(), m.mp.clone());
    let (want, got) = within(Duration::from_secs(120), "offline tree walk", move || {
        (snapshot(&exp), snapshot(&mp))
    });
    assert_same_tree(&want, &got);
    assert_eq!(m.metric("shoal_lazyfs_read_errors_total"), 0.0);
}

#[test]
fn a_stalled_fetch_does_not_block_metadata_or_cached_reads() {
    let Some(fx) = setup() else { return };
    let upstream = fx.peer.mirror.trim_start_matches("http://").to_string();
    let proxy = CountingProxy::start(&upstream);
    let peer_url = format!("http://{}", proxy.addr);
    let m = MountProc::start(
        fx.tmp.path(),
        "stall",
        &fx.image,
        &fx.path("mnt"),
        &[
            "--peer",
            &peer_url,
            "--insecure-registry",
            &fx.registry.addr,
            "--no-fallback",
            "--prefetch",
            "none",
            "--timeout",
            "4s",
            "--retries",
            "0",
        ],
    );
    let cached = fs::read(m.mp.join("etc/passwd")).unwrap();
    proxy.set_stall(true);
    // A read that hangs on the network until the timeout...
    let mp = m.mp.clone();
    let started = Instant::now();
    let slow = std::thread::spawn(move || fs::read(mp.join("opt/app/app.bin")));
    std::thread::sleep(Duration::from_millis(300));
    // ...while metadata and cached data answer at once.
    let mp = m.mp.clone();
    let quick = within(
        Duration::from_secs(2),
        "metadata during a stalled read",
        move || {
            let t = Instant::now();
            let n = fs::read_dir(mp.join("usr/lib")).unwrap().count();
            let st = fs::metadata(mp.join("usr/bin/big")).unwrap();
            let again = fs::read(mp.join("etc/passwd")).unwrap();
            (t.elapsed(), n, st.len(), again)
        },
    );
    assert!(
        quick.0 < Duration::from_secs(1),
        "metadata took {:?}",
        quick.0
    );
    assert!(quick.1 > 10);
    assert_eq!(quick.3, cached);
    let err = within(Duration::from_secs(30), "stalled read", move || {
        slow.join().unwrap().unwrap_err()
    });
    let took = started.elapsed();
    eprintln!("stalled read failed after {took:?}: {err}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(m.metric("shoal_lazyfs_fetch_errors_total{reason=\"timeout\"") >= 1.0);
}
