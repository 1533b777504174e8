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

use crate::cli::TreeArgs;
use crate::lazyfs_env::{
    cmd, containerd_pull, make_work_dir, origin_sent, poll_read, poll_stat, start_peer,
    start_registry, FuseMount, MountSweep,
};
use crate::lazyfs_images::{build_images, preflight, SQFS};
use crate::lazyfs_report::{mbps, median, Build, LazyfsReport, Run, Startup, Transfer, Warm};
use crate::lazyfs_tree::{self as tree, FileSpec};
use crate::netns::{self, Network, ORIGIN_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::shaping::{self, Tbf};

#[derive(Args, Debug, Clone)]
pub struct LazyfsArgs {
    /// Link rate between origin and node, both directions (Mbit/s).
    #[arg(long, default_value_t = 100)]
    pub rate_mbit: u32,
    #[command(flatten)]
    pub tree: TreeArgs,
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
    let b = setup(args).await?;
    let first_reads = first_reads(&b).await?;
    let main = main_reads(&b).await?;
    let native = native_read(&b).await?;
    let baseline = baseline(&b).await?;
    let many_times = many_mount(&b).await?;
    let report = LazyfsReport {
        files: b.files.len(),
        tree_bytes: b.tree_bytes,
        rate_mbit: b.args.rate_mbit,
        repeat: b.args.repeat,
        build: b.build,
        first_reads,
        baseline,
        startup: main.startup,
        cold_rest: main.cold_rest,
        warm: main.warm,
        native,
        many_files: b.many.len(),
        many_times,
    };
    report.print();
    if b.args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    }
    drop(b);
    Ok(())
}

/// What the phases share. Fields drop in declaration order, which is the teardown order:
/// the registry stops, the namespaces go, every mount left under the work directory is
/// swept, and only then is the work directory removed.
struct Bench {
    _origin_daemons: Daemons,
    net: Network,
    _sweep: MountSweep,
    _work_dir: tempfile::TempDir,
    args: LazyfsArgs,
    lazyfs_bin: PathBuf,
    peer_bin: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    /// The big tree as a plain directory (native reads).
    src: PathBuf,
    origin_ns: String,
    node_ns: String,
    /// The origin's switch port, whose counters tell the bytes sent over the link.
    origin_port: String,
    /// The registry as the node sees it (over the shaped link).
    registry_host: String,
    /// The registry on the origin's loopback (unshaped).
    local: String,
    /// The lazyfs image of the big tree.
    image: String,
    files: Vec<FileSpec>,
    tree_bytes: u64,
    /// The small file whose first read phases a and b wait for.
    first: FileSpec,
    many: Vec<FileSpec>,
    build: Build,
}

impl Bench {
    fn repeat(&self) -> u32 {
        self.args.repeat.max(1)
    }

    async fn sent(&self) -> Result<u64> {
        origin_sent(&self.net, &self.origin_port).await
    }

    fn start_mount(&self, mp: &Path, cache: &Path, peer: bool, log: &Path) -> Result<FuseMount> {
        let flags = mount_flags(cache, &self.registry_host, peer);
        FuseMount::start(
            &self.lazyfs_bin,
            &self.node_ns,
            &self.image,
            mp,
            &flags,
            log,
        )
    }

    /// A mount that is up before anything is timed (phases c and d time reads, not mounts).
    fn main_mount(&self, mp: &Path, cache: &Path, via_peer: bool, log: &str) -> Result<FuseMount> {
        let mut m = self.start_mount(mp, cache, via_peer, &self.logs.join(log))?;
        m.wait_mounted(Duration::from_secs(60))?;
        Ok(m)
    }

    /// A fresh `shoal-peer` in the node namespace for a cold peer run, or no daemon.
    async fn node_peer(&self, via_peer: bool, tag: &str) -> Result<Daemons> {
        if via_peer {
            start_peer(
                &self.peer_bin,
                &self.node_ns,
                &self.work,
                tag,
                &self.registry_host,
            )
            .await
        } else {
            Ok(Daemons::default())
        }
    }
}

fn mode(via_peer: bool) -> &'static str {
    ["direct", "peer"][usize::from(via_peer)]
}

/// Through a peer's mirror endpoint (no fallback), or straight to the registry
/// (`--peer ""`): the peer's mirror opens a whole-blob download on the first range request,
/// so both paths are measured.
pub(crate) fn mount_flags(cache: &Path, registry: &str, via_peer: bool) -> Vec<String> {
    let peer = if via_peer { PEER_MIRROR } else { "" };
    let cache = cache.display().to_string();
    let mut flags = vec!["--peer", peer, "--cache-dir", &cache];
    flags.extend(["--insecure-registry", registry, "--prefetch", "none"]);
    if via_peer {
        flags.push("--no-fallback");
    }
    flags.into_iter().map(str::to_owned).collect()
}

/// Trees, registry, images and the shaped link. Should it fail, its guards drop in reverse
/// order: mounts swept before the work directory goes.
async fn setup(args: LazyfsArgs) -> Result<Bench> {
    preflight()?;
    let lazyfs_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-lazyfs")?;
    let peer_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-peer")?;
    let work_dir = make_work_dir(args.work_parent.as_deref(), "lazyfs")?;
    let work = work_dir.path().to_owned();
    let sweep = MountSweep(work.clone());
    eprintln!("work directory {}", work.display());

    // 1. Trees.
    let files = tree::plan_big(args.tree.mix());
    let tree_bytes: u64 = files.iter().map(|f| f.size).sum();
    let src = work.join("tree");
    eprintln!(
        "generating {} files, {:.2} GiB in {}",
        files.len(),
        tree_bytes as f64 / (1u64 << 30) as f64,
        src.display()
    );
    write_tree(&src, &files).await?;
    let many = tree::plan_many(args.many_files);
    let many_src = work.join("many");
    if !args.skip_many {
        write_tree(&many_src, &many).await?;
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
    let many_src = (!args.skip_many).then_some(many_src.as_path());
    let build = build_images(&work, &src, many_src, &origin_ns, &lazyfs_bin, &local).await?;

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
    Ok(Bench {
        _origin_daemons: origin_daemons,
        net,
        _sweep: sweep,
        _work_dir: work_dir,
        args,
        lazyfs_bin,
        peer_bin,
        work,
        logs,
        src,
        origin_ns,
        node_ns,
        origin_port,
        registry_host,
        local,
        image,
        files,
        tree_bytes,
        first,
        many,
        build,
    })
}

/// a. Mount to the first small file read, cold (fresh cache, fresh peer) each time.
async fn first_reads(b: &Bench) -> Result<Vec<Run>> {
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

struct MainReads {
    startup: Startup,
    cold_rest: Transfer,
    warm: Warm,
}

/// c + d. Startup set cold straight from the registry (fresh cache); then through a
/// fresh peer: startup set cold, the rest of the tree cold, then warm (remount, same
/// cache) and hot (same mount again: kernel page cache).
async fn main_reads(b: &Bench) -> Result<MainReads> {
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
async fn native_read(b: &Bench) -> Result<Duration> {
    let _ = read_list(&b.src, &b.files).await?;
    let (_, native) = read_list(&b.src, &b.files).await?;
    eprintln!("  native: {:.0} MB/s", mbps(b.tree_bytes, native));
    Ok(native)
}

/// b. Baseline: containerd pulls and unpacks the regular image straight from the
/// registry over the same link.
async fn baseline(b: &Bench) -> Result<Option<Transfer>> {
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
async fn many_mount(b: &Bench) -> Result<Vec<Duration>> {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
}

async fn write_tree(dir: &Path, files: &[FileSpec]) -> Result<()> {
    let (dir, files) = (dir.to_owned(), files.to_vec());
    blocking(move || tree::write_tree(&dir, &files)).await
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
