//! The measured phases, each a function (the lettering is the report's): (a) mount to the
//! first small file read, (b) the containerd pull baseline, (c) the startup set and the rest
//! of the tree cold, (d) warm and hot reads against squashfuse and the native directory,
//! (e) the 100 k-file mount.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{blocking, mode, mount_flags, read_list, Bench};
use crate::lazyfs_env::{cmd, containerd_pull, poll_read, poll_stat, start_peer, FuseMount};
use crate::lazyfs_images::SQFS;
use crate::lazyfs_report::{mbps, median, Run, Startup, Transfer, Warm};
use crate::lazyfs_tree::{self as tree, FileSpec};
use crate::processes::{self, Daemon, Daemons};

/// a. Mount to the first small file read, cold (fresh cache, fresh peer) each time.
pub(super) async fn first_reads(b: &Bench) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for via_peer in [false, true] {
        for rep in 0..b.repeat() {
            let tag = format!("first-{}{rep}", mode(via_peer));
            let mut peer = b.node_peer(via_peer, &tag).await?;
            let mp = b.work.join(format!("mnt-{tag}"));
            let cache = b.work.join(format!("cache-{tag}"));
            let log = b.logs.join(format!("mount-{tag}.log"));
            let before = b.sent().await?;
            let t = Instant::now();
            let mut m = b.start_mount(&mp, &cache, via_peer, &log)?;
            let elapsed = blocking({
                let (mp, first) = (mp.clone(), b.first.clone());
                move || poll_read(&mp, &first, t)
            })
            .await;
            let elapsed = match elapsed {
                Ok(e) => e,
                Err(e) => bail!("{e:#}\nmount log:\n{}", processes::log_tail(&log, 30)),
            };
            let link = b.sent().await? - before;
            eprintln!(
                "  [{}] mount → first read of {} ({} B): {:.3} s, {} B over the link",
                mode(via_peer),
                b.first.path.display(),
                b.first.size,
                elapsed.as_secs_f64(),
                link
            );
            runs.push(Run {
                mode: mode(via_peer),
                transfer: Transfer {
                    time: elapsed,
                    link_bytes: link,
                },
            });
            m.stop();
            peer.stop();
        }
    }
    Ok(runs)
}

pub(super) struct MainReads {
    pub(super) startup: Startup,
    pub(super) cold_rest: Transfer,
    pub(super) warm: Warm,
}

/// c + d. Startup set cold straight from the registry (fresh cache); then through a
/// fresh peer: startup set cold, the rest of the tree cold, then warm (remount, same
/// cache) and hot (same mount again: kernel page cache).
pub(super) async fn main_reads(b: &Bench) -> Result<MainReads> {
    let startup_set = tree::startup_set(&b.files);
    let startup: Vec<FileSpec> = startup_set.iter().map(|f| (*f).clone()).collect();
    let startup_bytes: u64 = startup.iter().map(|f| f.size).sum();
    let mut runs = Vec::new();
    let mut cold_rest = Transfer::default();
    let mut warm = Warm::default();
    for via_peer in [false, true] {
        let tag = format!("main-{}", mode(via_peer));
        let mut peer = b.node_peer(via_peer, &tag).await?;
        let mp = b.work.join(format!("mnt-{tag}"));
        let cache = b.work.join(format!("cache-{tag}"));
        let mut m = b.main_mount(&mp, &cache, via_peer, &format!("mount-{tag}.log"))?;
        let before = b.sent().await?;
        let (got, startup_time) = read_list(&mp, &startup).await?;
        if got != startup_bytes {
            bail!("startup set: read {got} bytes, expected {startup_bytes}");
        }
        let startup_link = b.sent().await? - before;
        eprintln!(
            "  [{}] startup set: {} files, {} B in {:.2} s, {} B over the link",
            mode(via_peer),
            startup.len(),
            startup_bytes,
            startup_time.as_secs_f64(),
            startup_link
        );
        runs.push(Run {
            mode: mode(via_peer),
            transfer: Transfer {
                time: startup_time,
                link_bytes: startup_link,
            },
        });
        blocking({
            let (mp, s) = (mp.clone(), startup.clone());
            move || s.iter().try_for_each(|f| tree::verify_file(&mp, f))
        })
        .await?;
        if !via_peer {
            m.stop();
            continue;
        }
        let before = b.sent().await?;
        let (_, cold_time) = read_list(&mp, &b.files).await?;
        cold_rest = Transfer {
            time: cold_time,
            link_bytes: b.sent().await? - before,
        };
        eprintln!(
            "  [peer] cold full read (rest after the startup set): {:.1} s, {} B over the link",
            cold_rest.time.as_secs_f64(),
            cold_rest.link_bytes
        );
        m.stop();
        warm = warm_rounds(b, &mp, &cache, &tag).await?;
        peer.stop();
    }
    Ok(MainReads {
        startup: Startup {
            files: startup.len(),
            bytes: startup_bytes,
            runs,
        },
        cold_rest,
        warm,
    })
}

/// d. Warm reads, alternating with squashfuse so both see the same machine load:
/// lazyfs remounted (through the peer) over the warm disk cache at `mp` (hot: the same
/// mount again, kernel page cache), squashfuse freshly mounted (hot: again). Medians of
/// `repeat` rounds.
async fn warm_rounds(b: &Bench, mp: &Path, cache: &Path, tag: &str) -> Result<Warm> {
    let sq_mp = b.work.join("mnt-sqfs");
    std::fs::create_dir_all(&sq_mp)?;
    let mut link_bytes = 0;
    let (mut warm, mut hot, mut sq_w, mut sq_h) = (vec![], vec![], vec![], vec![]);
    for round in 0..b.repeat() {
        let mut m = b.main_mount(mp, cache, true, &format!("mount-{tag}-warm{round}.log"))?;
        let before = b.sent().await?;
        warm.push(read_list(mp, &b.files).await?.1);
        link_bytes += b.sent().await? - before;
        hot.push(read_list(mp, &b.files).await?.1);
        m.stop();
        let mut sq = FuseMount {
            daemons: Daemons::default(),
            mp: sq_mp.clone(),
        };
        let mut c = cmd("squashfuse", &["-f"]);
        c.arg(b.work.join(SQFS)).arg(&sq_mp);
        sq.daemons.push(Daemon::spawn(
            "squashfuse",
            c,
            &b.logs.join(format!("squashfuse{round}.log")),
        )?);
        sq.wait_mounted(Duration::from_secs(30))?;
        sq_w.push(read_list(&sq_mp, &b.files).await?.1);
        sq_h.push(read_list(&sq_mp, &b.files).await?.1);
        sq.stop();
        let last = |v: &[Duration]| v.last().map_or(0.0, |d| mbps(b.tree_bytes, *d));
        eprintln!(
            "  round {round}: lazyfs warm {:.0} MB/s, hot {:.0}; squashfuse warm {:.0}, hot {:.0}",
            last(&warm),
            last(&hot),
            last(&sq_w),
            last(&sq_h)
        );
    }
    Ok(Warm {
        lazyfs: median(&warm),
        lazyfs_hot: median(&hot),
        squashfuse: median(&sq_w),
        squashfuse_hot: median(&sq_h),
        link_bytes,
    })
}

/// The plain directory, read once untimed so the page cache holds it, then timed.
pub(super) async fn native_read(b: &Bench) -> Result<Duration> {
    let _ = read_list(&b.src, &b.files).await?;
    let (_, native) = read_list(&b.src, &b.files).await?;
    eprintln!("  native: {:.0} MB/s", mbps(b.tree_bytes, native));
    Ok(native)
}

/// b. Baseline: containerd pulls and unpacks the regular image straight from the
/// registry over the same link.
pub(super) async fn baseline(b: &Bench) -> Result<Option<Transfer>> {
    if b.args.skip_baseline {
        return Ok(None);
    }
    let before = b.sent().await?;
    let r = containerd_pull(&b.work, &b.logs, &b.node_ns, &b.registry_host, &b.first).await?;
    let link = b.sent().await? - before;
    eprintln!(
        "  containerd pull + unpack: {:.1} s, {} B over the link",
        r.as_secs_f64(),
        link
    );
    Ok(Some(Transfer {
        time: r,
        link_bytes: link,
    }))
}

/// e. Mount time of the 100 k-file image, on the origin's loopback (unshaped), through
/// a peer there.
pub(super) async fn many_mount(b: &Bench) -> Result<Vec<Duration>> {
    let mut many_times = Vec::new();
    if b.args.skip_many {
        return Ok(many_times);
    }
    let local = &b.local;
    let deep = b.many.last().context("empty many-file tree")?.clone();
    let mut peer = start_peer(&b.peer_bin, &b.origin_ns, &b.work, "many", local).await?;
    for rep in 0..b.repeat() {
        let mp = b.work.join(format!("mnt-many{rep}"));
        let cache = b.work.join(format!("cache-many{rep}"));
        let flags = mount_flags(&cache, local, true);
        let t = Instant::now();
        let mut m = FuseMount::start(
            &b.lazyfs_bin,
            &b.origin_ns,
            &format!("{local}/many:t"),
            &mp,
            &flags,
            &b.logs.join(format!("mount-many{rep}.log")),
        )?;
        let target = mp.join(&deep.path);
        let elapsed = blocking(move || poll_stat(&target, t)).await?;
        eprintln!(
            "  100k-file mount → stat {}: {:.3} s",
            deep.path.display(),
            elapsed.as_secs_f64()
        );
        many_times.push(elapsed);
        m.stop();
    }
    peer.stop();
    Ok(many_times)
}
