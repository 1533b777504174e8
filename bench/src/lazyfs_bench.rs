//! `shoal-bench lazyfs`: the lazyfs mount benchmark. A ≥ 1 GiB tree is served by a real
//! `docker-registry` in an "origin" namespace, behind a rate-shaped link to a "node"
//! namespace that runs `shoal-peer` and `shoal-lazyfs mount`. Measured: mount to the first
//! small file read, against a full pull + unpack of the same tree as a regular image by
//! containerd; a cold "startup set" (≈ 5 % of the files); warm sequential reads against
//! squashfuse and the native directory; and the mount time of a 100 k-file image.
//!
//! Processes inside a namespace are started with `nsenter --net=…`, which (unlike
//! `ip netns exec`) keeps the host's mount namespace, so the FUSE mounts are visible to this
//! process and every read is timed here. Every namespace, process and mount lives in a guard.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::lazyfs_env::{
    cmd, containerd_pull, dir_bytes, largest_blob, make_work_dir, nsenter, origin_sent, poll_read,
    poll_stat, run_ok, start_peer, start_registry, FuseMount, MountSweep,
};
use crate::lazyfs_tree::{self as tree, FileSpec, Mix};
use crate::netns::{self, Network, ORIGIN_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::shaping::{self, Tbf};

#[derive(Args, Debug, Clone)]
pub struct LazyfsArgs {
    /// Link rate between origin and node, both directions (Mbit/s).
    #[arg(long, default_value_t = 100)]
    pub rate_mbit: u32,
    /// Small files (1–64 KiB) in the big tree.
    #[arg(long, default_value_t = 25_000)]
    pub small_files: u32,
    /// Medium files (64 KiB–4 MiB).
    #[arg(long, default_value_t = 400)]
    pub medium_files: u32,
    /// Large files (50–200 MiB).
    #[arg(long, default_value_t = 4)]
    pub large_files: u32,
    /// Files of the image whose mount time is measured.
    #[arg(long, default_value_t = 100_000)]
    pub many_files: u32,
    /// Repetitions of the mount-to-first-read, warm-read and 100 k-file mount measurements
    /// (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Skip the containerd full-pull baseline.
    #[arg(long)]
    pub skip_baseline: bool,
    /// Skip the 100 k-file mount time.
    #[arg(long)]
    pub skip_many: bool,
    /// Directory holding shoal-peer and shoal-lazyfs (default: next to shoal-bench).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the work directory goes (default: /dev/shm when it has 10 GiB free, else the
    /// temp dir).
    #[arg(long, value_name = "DIR")]
    pub work_parent: Option<PathBuf>,
    /// Also print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) const REGISTRY_PORT: u16 = 5000;
const PEER_MIRROR: &str = "http://127.0.0.1:65001";

pub async fn main(args: LazyfsArgs) -> Result<()> {
    processes::require_root()?;
    for (prog, pkg) in [
        ("docker-registry", "docker-registry"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("mksquashfs", "squashfs-tools"),
        ("squashfuse", "squashfuse"),
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
        ("tc", "iproute2"),
    ] {
        processes::require_program(prog, pkg)?;
    }
    let lazyfs_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-lazyfs")?;
    let peer_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-peer")?;

    // Guards, dropped in reverse order: mounts swept before the work directory goes.
    let work_dir = make_work_dir(args.work_parent.as_deref())?;
    let work = work_dir.path().to_owned();
    let _sweep = MountSweep(work.clone());
    eprintln!("work directory {}", work.display());

    // 1. Trees.
    let mix = Mix {
        small: args.small_files,
        medium: args.medium_files,
        large: args.large_files,
    };
    let files = tree::plan_big(mix);
    let tree_bytes: u64 = files.iter().map(|f| f.size).sum();
    let src = work.join("tree");
    eprintln!(
        "generating {} files, {:.2} GiB in {}",
        files.len(),
        tree_bytes as f64 / (1u64 << 30) as f64,
        src.display()
    );
    blocking({
        let (src, files) = (src.clone(), files.clone());
        move || tree::write_tree(&src, &files)
    })
    .await?;
    let many = tree::plan_many(args.many_files);
    let many_src = work.join("many");
    if !args.skip_many {
        blocking({
            let (d, f) = (many_src.clone(), many.clone());
            move || tree::write_tree(&d, &f)
        })
        .await?;
    }

    // 2. Network: origin (registry) and node (peer, mounts, containerd).
    let run = format!("lz{}", std::process::id() % 100_000);
    let mut net = Network::new(&run)?;
    let origin_i = net.add_host("origin", ORIGIN_IP)?;
    let node_i = net.add_host("node", netns::node_ip(0))?;
    let origin_ns = net.host(origin_i).ns.name().to_owned();
    let node_ns = net.host(node_i).ns.name().to_owned();
    let origin_port = net.host(origin_i).switch_port.clone();
    let registry_host = format!("{ORIGIN_IP}:{REGISTRY_PORT}");

    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut origin_daemons = Daemons::default();
    start_registry(&work, &logs, &origin_ns, &mut origin_daemons).await?;

    // 3. Images, pushed inside the origin over loopback (the shaped link stays idle).
    let local = format!("127.0.0.1:{REGISTRY_PORT}");
    eprintln!("building the regular OCI image (umoci) and pushing it");
    let oci = work.join("oci");
    let bundle = work.join("bundle");
    let t = Instant::now();
    run_ok(cmd("umoci", &["init", "--layout"]).arg(&oci)).await?;
    run_ok(cmd("umoci", &["new", "--image"]).arg(format!("{}:t", oci.display()))).await?;
    run_ok(
        cmd("umoci", &["unpack", "--rootless", "--image"])
            .arg(format!("{}:t", oci.display()))
            .arg(&bundle),
    )
    .await?;
    run_ok(
        cmd("cp", &["-a"])
            .arg(format!("{}/.", src.display()))
            .arg(bundle.join("rootfs")),
    )
    .await?;
    run_ok(
        cmd("umoci", &["repack", "--image"])
            .arg(format!("{}:t", oci.display()))
            .arg(&bundle),
    )
    .await?;
    std::fs::remove_dir_all(&bundle)?;
    run_ok(
        nsenter(&origin_ns, "skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:t", oci.display()))
            .arg(format!("docker://{local}/full:t")),
    )
    .await?;
    let oci_build = t.elapsed();
    let gzip_layer_bytes = largest_blob(&oci.join("blobs/sha256"))?;
    std::fs::remove_dir_all(&oci)?;

    eprintln!("converting the tree to lazyfs");
    let t = Instant::now();
    run_ok(
        nsenter(&origin_ns, &lazyfs_bin)
            .arg("convert")
            .arg(format!("dir:{}", src.display()))
            .arg(format!("{local}/lazy:t"))
            .args(["--insecure-registry", &local]),
    )
    .await?;
    let convert_time = t.elapsed();
    if !args.skip_many {
        run_ok(
            nsenter(&origin_ns, &lazyfs_bin)
                .arg("convert")
                .arg(format!("dir:{}", many_src.display()))
                .arg(format!("{local}/many:t"))
                .args(["--insecure-registry", &local]),
        )
        .await?;
    }
    let registry_bytes = dir_bytes(&work.join("registry"))?;

    eprintln!("building the squashfs image (zstd)");
    let sqfs = work.join("tree.sqfs");
    run_ok(cmd("mksquashfs", &[]).arg(&src).arg(&sqfs).args([
        "-comp",
        "zstd",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]))
    .await?;

    // 4. Shape the link.
    let tbf = Tbf::for_rate_mbit(args.rate_mbit);
    shaping::shape_all(&net, &tbf)?;
    eprintln!(
        "link shaped to {} Mbit/s ({})",
        args.rate_mbit,
        tbf.tc_args().join(" ")
    );

    let image = format!("{registry_host}/lazy:t");
    let first = files
        .iter()
        .find(|f| f.size <= 8 << 10)
        .context("the tree has no small file")?
        .clone();
    // Through the node's peer (its mirror endpoint, no fallback), or straight to the
    // registry (`--peer ""`): the peer's mirror opens a whole-blob download on the first
    // range request, so both paths are measured.
    let mount_flags = |cache: &Path, via_peer: bool| -> Vec<String> {
        let mut f = vec![
            "--peer".to_owned(),
            if via_peer {
                PEER_MIRROR.to_owned()
            } else {
                String::new()
            },
            "--cache-dir".to_owned(),
            cache.display().to_string(),
            "--insecure-registry".to_owned(),
            registry_host.clone(),
            "--prefetch".to_owned(),
            "none".to_owned(),
        ];
        if via_peer {
            f.push("--no-fallback".to_owned());
        }
        f
    };
    let start_mount = |mp: &Path, cache: &Path, via_peer: bool, log: &Path| {
        FuseMount::start(
            &lazyfs_bin,
            &node_ns,
            &image,
            mp,
            &mount_flags(cache, via_peer),
            log,
        )
    };
    let mode = |via_peer: bool| if via_peer { "peer" } else { "direct" };

    // a. Mount to the first small file read, cold (fresh cache, fresh peer) each time.
    let mut first_reads: Vec<(&str, Duration, u64)> = Vec::new();
    for via_peer in [false, true] {
        for rep in 0..args.repeat.max(1) {
            let tag = format!("first-{}{rep}", mode(via_peer));
            let mut peer = if via_peer {
                start_peer(&peer_bin, &node_ns, &work, &tag, &registry_host).await?
            } else {
                Daemons::default()
            };
            let mp = work.join(format!("mnt-{tag}"));
            let cache = work.join(format!("cache-{tag}"));
            let log = logs.join(format!("mount-{tag}.log"));
            let before = origin_sent(&net, &origin_port).await?;
            let t = Instant::now();
            let mut m = start_mount(&mp, &cache, via_peer, &log)?;
            let elapsed = blocking({
                let (mp, first) = (mp.clone(), first.clone());
                move || poll_read(&mp, &first, t)
            })
            .await;
            let elapsed = match elapsed {
                Ok(e) => e,
                Err(e) => bail!("{e:#}\nmount log:\n{}", processes::log_tail(&log, 30)),
            };
            let link = origin_sent(&net, &origin_port).await? - before;
            eprintln!(
                "  [{}] mount → first read of {} ({} B): {:.3} s, {} B over the link",
                mode(via_peer),
                first.path.display(),
                first.size,
                elapsed.as_secs_f64(),
                link
            );
            first_reads.push((mode(via_peer), elapsed, link));
            m.stop();
            peer.stop();
        }
    }

    // c + d. Startup set cold straight from the registry (fresh cache); then through a
    // fresh peer: startup set cold, the rest of the tree cold, then warm (remount, same
    // cache) and hot (same mount again: kernel page cache).
    let startup = tree::startup_set(&files);
    let startup_bytes: u64 = startup.iter().map(|f| f.size).sum();
    let startup_owned: Vec<FileSpec> = startup.iter().map(|f| (*f).clone()).collect();
    let mut startup_runs: Vec<(&str, Duration, u64)> = Vec::new();
    let mut cold = (Duration::ZERO, 0u64);
    let (mut lazy_warm, mut lazy_hot, mut warm_link) = (Duration::ZERO, Duration::ZERO, 0u64);
    let (mut sq_warm, mut sq_hot) = (Duration::ZERO, Duration::ZERO);
    for via_peer in [false, true] {
        let tag = format!("main-{}", mode(via_peer));
        let mut peer = if via_peer {
            start_peer(&peer_bin, &node_ns, &work, &tag, &registry_host).await?
        } else {
            Daemons::default()
        };
        let mp = work.join(format!("mnt-{tag}"));
        let cache = work.join(format!("cache-{tag}"));
        let main_mount = |log: String| -> Result<FuseMount> {
            let mut m = start_mount(&mp, &cache, via_peer, &logs.join(log))?;
            m.wait_mounted(Duration::from_secs(60))?;
            Ok(m)
        };
        let mut m = main_mount(format!("mount-{tag}.log"))?;
        let before = origin_sent(&net, &origin_port).await?;
        let (got, startup_time) = read_list(&mp, &startup_owned).await?;
        if got != startup_bytes {
            bail!("startup set: read {got} bytes, expected {startup_bytes}");
        }
        let startup_link = origin_sent(&net, &origin_port).await? - before;
        eprintln!(
            "  [{}] startup set: {} files, {} B in {:.2} s, {} B over the link",
            mode(via_peer),
            startup.len(),
            startup_bytes,
            startup_time.as_secs_f64(),
            startup_link
        );
        startup_runs.push((mode(via_peer), startup_time, startup_link));
        blocking({
            let (mp, s) = (mp.clone(), startup_owned.clone());
            move || s.iter().try_for_each(|f| tree::verify_file(&mp, f))
        })
        .await?;
        if !via_peer {
            m.stop();
            continue;
        }
        let before = origin_sent(&net, &origin_port).await?;
        let (_, cold_time) = read_list(&mp, &files).await?;
        cold = (cold_time, origin_sent(&net, &origin_port).await? - before);
        eprintln!(
            "  [peer] cold full read (rest after the startup set): {:.1} s, {} B over the link",
            cold.0.as_secs_f64(),
            cold.1
        );
        m.stop();
        // d. Warm reads, alternating with squashfuse so both see the same machine load:
        // lazyfs remounted over the warm disk cache (hot: the same mount again, kernel page
        // cache), squashfuse freshly mounted (hot: again). Medians of `repeat` rounds.
        let sq_mp = work.join("mnt-sqfs");
        std::fs::create_dir_all(&sq_mp)?;
        let (mut warm, mut hot, mut sq_w, mut sq_h) = (vec![], vec![], vec![], vec![]);
        for round in 0..args.repeat.max(1) {
            let mut m = main_mount(format!("mount-{tag}-warm{round}.log"))?;
            let before = origin_sent(&net, &origin_port).await?;
            warm.push(read_list(&mp, &files).await?.1);
            warm_link += origin_sent(&net, &origin_port).await? - before;
            hot.push(read_list(&mp, &files).await?.1);
            m.stop();
            let mut sq = FuseMount {
                daemons: Daemons::default(),
                mp: sq_mp.clone(),
            };
            let mut c = cmd("squashfuse", &["-f"]);
            c.arg(&sqfs).arg(&sq_mp);
            sq.daemons.push(Daemon::spawn(
                "squashfuse",
                c,
                &logs.join(format!("squashfuse{round}.log")),
            )?);
            sq.wait_mounted(Duration::from_secs(30))?;
            sq_w.push(read_list(&sq_mp, &files).await?.1);
            sq_h.push(read_list(&sq_mp, &files).await?.1);
            sq.stop();
            let last = |v: &[Duration]| v.last().map_or(0.0, |d| mbps(tree_bytes, *d));
            eprintln!(
                "  round {round}: lazyfs warm {:.0} MB/s, hot {:.0}; squashfuse warm {:.0}, hot {:.0}",
                last(&warm),
                last(&hot),
                last(&sq_w),
                last(&sq_h)
            );
        }
        (lazy_warm, lazy_hot, sq_warm, sq_hot) =
            (median(&warm), median(&hot), median(&sq_w), median(&sq_h));
        peer.stop();
    }

    let _ = read_list(&src, &files).await?;
    let (_, native) = read_list(&src, &files).await?;
    eprintln!("  native: {:.0} MB/s", mbps(tree_bytes, native));

    // b. Baseline: containerd pulls and unpacks the regular image straight from the
    // registry over the same link.
    let baseline = if args.skip_baseline {
        None
    } else {
        let before = origin_sent(&net, &origin_port).await?;
        let r = containerd_pull(&work, &logs, &node_ns, &registry_host, &first).await?;
        let link = origin_sent(&net, &origin_port).await? - before;
        eprintln!(
            "  containerd pull + unpack: {:.1} s, {} B over the link",
            r.as_secs_f64(),
            link
        );
        Some((r, link))
    };

    // e. Mount time of the 100 k-file image, on the origin's loopback (unshaped), through
    // a peer there.
    let mut many_times = Vec::new();
    if !args.skip_many {
        let deep = many.last().context("empty many-file tree")?.clone();
        let mut peer = start_peer(&peer_bin, &origin_ns, &work, "many", &local).await?;
        for rep in 0..args.repeat.max(1) {
            let mp = work.join(format!("mnt-many{rep}"));
            let cache = work.join(format!("cache-many{rep}"));
            let flags = vec![
                "--peer".to_owned(),
                PEER_MIRROR.to_owned(),
                "--cache-dir".to_owned(),
                cache.display().to_string(),
                "--insecure-registry".to_owned(),
                local.clone(),
                "--no-fallback".to_owned(),
                "--prefetch".to_owned(),
                "none".to_owned(),
            ];
            let t = Instant::now();
            let mut m = FuseMount::start(
                &lazyfs_bin,
                &origin_ns,
                &format!("{local}/many:t"),
                &mp,
                &flags,
                &logs.join(format!("mount-many{rep}.log")),
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
    }

    // Report.
    let median_of = |m: &str| {
        let v: Vec<Duration> = first_reads
            .iter()
            .filter(|r| r.0 == m)
            .map(|r| r.1)
            .collect();
        median(&v)
    };
    let (first_direct, first_peer) = (median_of("direct"), median_of("peer"));
    let many_median = (!many_times.is_empty()).then(|| median(&many_times));
    let mb = |b: u64| b as f64 / 1e6;
    println!();
    println!(
        "lazyfs mount benchmark: {} files, {:.1} MB ({:.2} GiB); link {} Mbit/s",
        files.len(),
        mb(tree_bytes),
        tree_bytes as f64 / (1u64 << 30) as f64,
        args.rate_mbit
    );
    println!(
        "  regular image: gzip layer {:.1} MB; registry storage (all images): {:.1} MB; \
         umoci build+push {:.1} s, lazyfs convert {:.1} s",
        mb(gzip_layer_bytes),
        mb(registry_bytes),
        oci_build.as_secs_f64(),
        convert_time.as_secs_f64()
    );
    println!(
        "{:<58} {:>12} {:>14}",
        "measurement", "time", "over the link"
    );
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    for (i, (m, d, b)) in first_reads.iter().enumerate() {
        println!(
            "{:<58} {:>12} {:>11.2} MB",
            format!(
                "a. mount → first small file read [{m}] (run {})",
                i as u32 % args.repeat.max(1) + 1
            ),
            secs(*d),
            mb(*b)
        );
    }
    for (m, d) in [("direct", first_direct), ("peer", first_peer)] {
        println!(
            "{:<58} {:>12}   (target ≤ 1 s: {})",
            format!("a. median [{m}]"),
            secs(d),
            met(d <= Duration::from_secs(1))
        );
    }
    if let Some((d, b)) = baseline {
        println!(
            "{:<58} {:>12} {:>11.2} MB",
            "b. containerd pull + unpack (first file exists)",
            secs(d),
            mb(b)
        );
    }
    for (m, d, b) in &startup_runs {
        println!(
            "{:<58} {:>12} {:>11.2} MB",
            format!(
                "c. startup set [{m}], cold: {} files, {:.1} MB",
                startup.len(),
                mb(startup_bytes)
            ),
            secs(*d),
            mb(*b)
        );
    }
    println!(
        "{:<58} {:>12} {:>11.2} MB",
        "   rest of the tree [peer], cold",
        secs(cold.0),
        mb(cold.1)
    );
    println!("{:<58} {:>12}", "d. warm sequential read", "MB/s");
    let rows = [
        ("   lazyfs, remounted, warm disk cache (median)", lazy_warm),
        ("   lazyfs, same mount again (kernel page cache)", lazy_hot),
        (
            "   squashfuse (zstd, image in RAM), fresh mount (median)",
            sq_warm,
        ),
        ("   squashfuse, same mount again", sq_hot),
        ("   native directory (tmpfs/page cache)", native),
    ];
    for (name, d) in rows {
        println!("{:<58} {:>12.0}", name, mbps(tree_bytes, d));
    }
    println!(
        "{:<58} {:>12}",
        "   lazyfs warm ≥ squashfuse fresh mount?",
        met(lazy_warm <= sq_warm)
    );
    if let Some(mm) = many_median {
        for (i, d) in many_times.iter().enumerate() {
            println!(
                "{:<58} {:>12}",
                format!("e. {}-file image: mount → stat (run {})", many.len(), i + 1),
                secs(*d)
            );
        }
        println!(
            "{:<58} {:>12}   (target ≤ 1 s: {})",
            "e. median",
            secs(mm),
            met(mm <= Duration::from_secs(1))
        );
    }
    if args.json {
        let report = json!({
            "files": files.len(),
            "tree_bytes": tree_bytes,
            "rate_mbit": args.rate_mbit,
            "gzip_layer_bytes": gzip_layer_bytes,
            "convert_seconds": convert_time.as_secs_f64(),
            "first_read": first_reads.iter().map(|(m, d, b)| json!({"mode": m, "seconds": d.as_secs_f64(), "link_bytes": b})).collect::<Vec<_>>(),
            "first_read_median_seconds": {"direct": first_direct.as_secs_f64(), "peer": first_peer.as_secs_f64()},
            "baseline": baseline.map(|(d, b)| json!({"tool": "containerd 1.6 ctr images pull (unpack, overlayfs), direct from the registry", "seconds": d.as_secs_f64(), "link_bytes": b})),
            "startup_set": {"files": startup.len(), "bytes": startup_bytes, "runs": startup_runs.iter().map(|(m, d, b)| json!({"mode": m, "seconds": d.as_secs_f64(), "link_bytes": b})).collect::<Vec<_>>()},
            "cold_rest_peer": {"seconds": cold.0.as_secs_f64(), "link_bytes": cold.1},
            "warm_link_bytes": warm_link,
            "warm_mb_per_s": {
                "lazyfs_remount": mbps(tree_bytes, lazy_warm),
                "lazyfs_hot": mbps(tree_bytes, lazy_hot),
                "squashfuse": mbps(tree_bytes, sq_warm),
                "squashfuse_hot": mbps(tree_bytes, sq_hot),
                "native": mbps(tree_bytes, native),
            },
            "many_files": many.len(),
            "many_mount_seconds": many_times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    drop(origin_daemons);
    drop(net);
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
}

async fn read_list(root: &Path, files: &[FileSpec]) -> Result<(u64, Duration)> {
    let root = root.to_owned();
    let files = files.to_vec();
    blocking(move || {
        let refs: Vec<&FileSpec> = files.iter().collect();
        tree::read_files(&root, &refs)
    })
    .await
}
