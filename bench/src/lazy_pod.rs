//! `shoal-bench lazy-pod`: how long a pod takes from PullImage to its container's exit when
//! its ≥ 1 GiB image is pulled whole with containerd's overlayfs snapshotter, against the
//! same image converted to lazyfs and started through `shoal-lazyfs snapshotter`, cold (the
//! first node) and warm (a second node whose peer gets the chunks from the first). The
//! container reads a startup set of about 5 % and exits; the target is lazy cold
//! ≤ 10 % of the full pull.
//!
//! Hosts, as in `lazy-cluster` (`netns`, `shaping`, the same `NetworkArgs`): `origin`
//! (docker-registry only, so its link's counter is the origin's egress), `ctl` (the
//! supernode), `n1`…`n3`, every link shaped to RATE both ways. Each run builds them afresh,
//! with empty peers, snapshotter and containerd state:
//! 1. n1, containerd with overlayfs, the original image through n1's peer (cold);
//! 2. n2, containerd with the shoal snapshotter, the lazy image (cold: nobody has chunks);
//! 3. n3, the same, while n2 and its peer still run (warm: n2's peer holds the set).
//!
//! Each pod's sandbox runs before its timer starts (kubelet runs it before pulling the
//! pod's images; its image is the same small busybox everywhere). Images: `lazy_pod_image`;
//! a node's daemons and the CRI calls: `lazy_pod_node`; output: `lazy_pod_report`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cli::NetworkArgs;
use crate::cluster::note;
use crate::cluster_round::CpuTimes;
use crate::host_tcp::AllowedCongestionControl;
use crate::lazy_cluster::Bins;
use crate::lazy_pod_image::{self as image, ImageMeta, ImageParams};
use crate::lazy_pod_node::{Node, NodeSetup, SnapshotterKind};
use crate::lazy_pod_report::{LazyPodReport, PodRun, RunResult};
use crate::lazyfs_bench::REGISTRY_PORT;
use crate::lazyfs_env::{make_work_dir, nsenter, start_registry, wait_http};
use crate::netns::{self, Host, Network, CONTROL_IP, ORIGIN_IP};
use crate::processes::{self, Daemon, Daemons};
use crate::shaping::{self, Tbf};

const SUPERNODE_PORT: u16 = 8002;

// Plain comments on clap structs: a doc comment would become the command's about text.
#[derive(Args, Debug, Clone)]
pub struct LazyPodArgs {
    /// Bytes of data files in the image, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub size_mib: u64,
    /// Size of every data file, in KiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(4..=(1 << 20)))]
    pub file_kib: u64,
    /// The startup set: every Nth data file (20: 5 %).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub every: u64,
    /// Convert with the startup set as `--prefetch-list`, so its files lie first and together
    /// in the data blob (an image built from a recorded startup list); by default they are
    /// spread over the whole blob.
    #[arg(long)]
    pub startup_first: bool,
    /// Runs, each on fresh hosts with empty state; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Rate of every host link, up and down (Mbit/s, 10^6 bit/s).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_mbit: u32,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Extra argument for every `shoal-peer run` (repeatable).
    #[arg(long = "peer-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub peer_args: Vec<String>,
    /// Extra argument for every `shoal-lazyfs snapshotter` (repeatable).
    #[arg(
        long = "snapshotter-arg",
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub snapshotter_args: Vec<String>,
    /// Give up on a container that has not exited this many seconds after PullImage.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,
    /// Also print the results as one JSON object, after the table.
    #[arg(long)]
    pub json: bool,
    /// Keep every process's log in DIR (created); by default logs are deleted with the run.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Directory with shoal-peer, shoal-supernode and shoal-lazyfs [default: the one holding
    /// shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Keep the built images in DIR for later runs with the same image flags (building a GiB
    /// image takes minutes), and put the runs' state there; by default everything goes to a
    /// temporary directory (/dev/shm when it has 10 GiB free).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// What every run shares.
struct Ctx {
    args: LazyPodArgs,
    bins: Bins,
    started: Instant,
    /// This invocation's directory (removed at the end), and where the images are cached.
    work: PathBuf,
    cache: PathBuf,
    logs: PathBuf,
    tbf: Tbf,
    host_sysctls: Vec<String>,
    run: String,
}

impl Ctx {
    fn note(&self, msg: impl std::fmt::Display) {
        note(self.started, msg);
    }
}

pub async fn main(args: LazyPodArgs) -> Result<()> {
    let started = Instant::now();
    preflight()?;
    let bins = Bins::find(args.bin_dir.as_deref())?;
    let (host_tcp, host_sysctls) = args.network.host_tcp()?;
    let _allowed = AllowedCongestionControl::ensure(&host_tcp)?;
    if let Some(dir) = &args.work_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let work_dir = make_work_dir(args.work_dir.as_deref(), "lazy-pod")?;
    let work = work_dir.path().to_owned();
    let params = ImageParams {
        size_mib: args.size_mib,
        file_kib: args.file_kib,
        every: args.every,
        startup_first: args.startup_first,
    };
    let cache = image::cache_dir(args.work_dir.as_deref().unwrap_or(&work), &params);
    image::clear_incomplete(&cache)?;
    let logs = args.keep_logs.clone().unwrap_or_else(|| work.join("logs"));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    note(started, format!("work directory {}", work.display()));
    let ctx = Ctx {
        tbf: args.network.tbf(args.rate_mbit),
        run: format!("lp{}", std::process::id() % 100_000),
        args,
        bins,
        started,
        work,
        cache,
        logs,
        host_sysctls,
    };

    let mut meta = image::cached(&ctx.cache);
    let image_cached = meta.is_some();
    let mut runs = Vec::new();
    for k in 1..=ctx.args.runs {
        let r = one_run(&ctx, k, &mut meta).await?;
        ctx.note(format!(
            "run {k}: full {:.2} s, lazy cold {:.2} s, lazy warm {:.2} s",
            r.full.times.exited_s, r.lazy_cold.times.exited_s, r.lazy_warm.times.exited_s
        ));
        runs.push(r);
    }
    let image = meta.context("no run built the images")?;
    let mut report = LazyPodReport {
        run: ctx.run.clone(),
        rate_mbit: ctx.args.rate_mbit,
        tbf: ctx.tbf.tc_args().join(" "),
        host_sysctls: ctx.host_sysctls.clone(),
        image,
        image_cached,
        runs,
        median_full_s: 0.0,
        median_lazy_cold_s: 0.0,
        median_lazy_warm_s: 0.0,
        lazy_cold_over_full: 0.0,
        lazy_warm_over_full: 0.0,
        target_met: false,
    };
    report.summarize();
    print!("{}", report.table());
    let json = serde_json::to_string_pretty(&report)?;
    if ctx.args.json {
        println!("{json}");
    }
    if let Some(dir) = &ctx.args.keep_logs {
        std::fs::write(dir.join("report.json"), &json)?;
    }
    drop(work_dir);
    Ok(())
}

/// One run on fresh hosts. Its guards drop in reverse order of creation:
/// nodes (pods, containerd, snapshotter, peer, their mounts), supernode, registry, then the
/// namespaces with anything still running in them.
async fn one_run(ctx: &Ctx, k: u32, meta: &mut Option<ImageMeta>) -> Result<RunResult> {
    let run = format!("{}r{k}", ctx.run);
    netns::remove_leftovers(&run)?;
    let net = Network::cluster(&run, 3)?;
    shaping::shape_hosts(&net, &ctx.tbf, &ctx.host_sysctls)?;
    let logs = ctx.logs.join(format!("run{k}"));
    std::fs::create_dir_all(&logs)?;
    let origin_ns = net.origin().ns.name().to_owned();
    let mut registry = Daemons::default();
    start_registry(&ctx.cache, &logs, &origin_ns, &mut registry).await?;
    let meta = match meta {
        Some(m) => m.clone(),
        None => {
            let params = ImageParams {
                size_mib: ctx.args.size_mib,
                file_kib: ctx.args.file_kib,
                every: ctx.args.every,
                startup_first: ctx.args.startup_first,
            };
            let m = image::build(
                &ctx.cache,
                params,
                &origin_ns,
                REGISTRY_PORT,
                &ctx.bins.lazyfs,
                |msg| ctx.note(msg),
            )
            .await?;
            ctx.note(format!(
                "images built in {:.1} s, converted in {:.1} s",
                m.build_s, m.convert_s
            ));
            *meta = Some(m.clone());
            m
        }
    };

    let ctl = net.ctl().ns.name();
    let supernode_url = format!("http://{CONTROL_IP}:{SUPERNODE_PORT}");
    let mut supernode = Daemons::default();
    let mut c = nsenter(ctl, &ctx.bins.supernode);
    c.arg("--listen")
        .arg(format!("{CONTROL_IP}:{SUPERNODE_PORT}"));
    supernode.push(Daemon::spawn(
        "shoal-supernode",
        c,
        &logs.join("supernode.log"),
    )?);
    wait_http(
        ctl,
        &format!("{supernode_url}/readyz"),
        &mut supernode,
        "shoal-supernode",
    )
    .await?;

    let registry_host = format!("{ORIGIN_IP}:{REGISTRY_PORT}");
    let sandbox_image = format!("{registry_host}/{}:t", image::PAUSE_REPO);
    let node_dir = ctx.work.join(format!("r{k}"));
    let setup = |i: usize, name: &'static str, snapshotter| NodeSetup {
        host: net.node(i),
        name,
        dir: node_dir.join(name),
        logs: &logs,
        bins: &ctx.bins,
        registry_host: &registry_host,
        supernode_url: &supernode_url,
        sandbox_image: &sandbox_image,
        snapshotter,
        peer_args: &ctx.args.peer_args,
        snapshotter_args: &ctx.args.snapshotter_args,
    };
    let full_ref = format!("{registry_host}/{}:t", image::FULL_REPO);
    let lazy_ref = format!("{registry_host}/{}:t", image::LAZY_REPO);

    ctx.note(format!("run {k}: full image, overlayfs, on n1"));
    let mut n1 = Node::start(setup(0, "n1", SnapshotterKind::Overlayfs)).await?;
    let full = measure(ctx, &net, net.node(0), &mut n1, &full_ref, &meta).await?;
    // The full pull's copies (content store, snapshot, peer cache) are a few GiB: gone
    // before the lazy runs.
    let dir = n1.dir.clone();
    drop(n1);
    remove_dir(&dir);

    ctx.note(format!("run {k}: lazy image, cold, on n2"));
    let mut n2 = Node::start(setup(1, "n2", SnapshotterKind::Shoal)).await?;
    let lazy_cold = measure(ctx, &net, net.node(1), &mut n2, &lazy_ref, &meta).await?;
    ctx.note(format!(
        "run {k}: lazy image, warm, on n3 (n2's peer holds the chunks)"
    ));
    let mut n3 = Node::start(setup(2, "n3", SnapshotterKind::Shoal)).await?;
    let lazy_warm = measure(ctx, &net, net.node(2), &mut n3, &lazy_ref, &meta).await?;

    drop(n3);
    drop(n2);
    drop(supernode);
    drop(registry);
    drop(net);
    remove_dir(&node_dir);
    Ok(RunResult {
        run: k,
        full,
        lazy_cold,
        lazy_warm,
    })
}

/// Runs the pod on `node`, with the links' counters around it.
async fn measure(
    ctx: &Ctx,
    net: &Network,
    host: &Host,
    node: &mut Node,
    image_ref: &str,
    meta: &ImageMeta,
) -> Result<PodRun> {
    let origin_port = &net.origin().switch_port;
    // The node's counters already hold the sandbox image: only the differences count.
    let peer_before = node.peer_bytes(host).await;
    let fetches_before = node.mount_fetches(host).await.unwrap_or_default();
    let before = netns::port_counters(net.switch()).await?;
    let cpu = CpuTimes::now();
    let timeout = Duration::from_secs(ctx.args.timeout);
    let times = node.run_pod(image_ref, meta.set_bytes, timeout).await?;
    let (cpu_busy, cpu_steal) = CpuTimes::shares_until_now(cpu);
    settle(net, origin_port).await?;
    let after = netns::port_counters(net.switch()).await?;
    let peer = node.peer_bytes(host).await;
    let fetches = node.mount_fetches(host).await;
    Ok(PodRun {
        times,
        origin_egress_bytes: netns::port_delta(&before, &after, origin_port).sent,
        node_link_bytes: netns::port_delta(&before, &after, &host.switch_port).received,
        peer_from_origin_bytes: peer.from_origin.saturating_sub(peer_before.from_origin),
        peer_from_peers_bytes: peer.from_peers.saturating_sub(peer_before.from_peers),
        peer_uploaded_bytes: peer.uploaded.saturating_sub(peer_before.uploaded),
        mount_fetch_bytes: fetches.map(|f| f.0.saturating_sub(fetches_before.0)),
        mount_fetch_requests: fetches.map(|f| f.1.saturating_sub(fetches_before.1)),
        cpu_busy,
        cpu_steal,
    })
}

/// Waits (up to 30 s) until the origin's link has been silent for a second, so that what a
/// peer or mount still fetches after the container exited counts for this pod, not the next.
async fn settle(net: &Network, origin_port: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent = || async {
        let c = netns::port_counters(net.switch()).await?;
        anyhow::Ok(netns::port_delta(&Default::default(), &c, origin_port).sent)
    };
    let (mut last, mut since) = (sent().await?, Instant::now());
    while since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent().await?;
        // A few hundred bytes (ARP, a pooled connection's FIN) are not a transfer.
        if now > last + 1500 {
            since = Instant::now();
        }
        last = now;
    }
    Ok(())
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: removing {}: {e}", dir.display());
        }
    }
}

/// Fails early, naming the Debian package, when a tool the benchmark runs is missing.
fn preflight() -> Result<()> {
    processes::require_root()?;
    for (prog, pkg) in [
        ("docker-registry", "docker-registry"),
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("busybox", "busybox-static"),
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
    ] {
        processes::require_program(prog, pkg)?;
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: lazy mounts need FUSE");
    }
    Ok(())
}
