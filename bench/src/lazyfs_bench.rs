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
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

mod phases;

use crate::cli::TreeArgs;
use crate::lazyfs_env::{
    make_work_dir, origin_sent, start_peer, start_registry, FuseMount, MountSweep,
};
use crate::lazyfs_images::{build_images, preflight};
use crate::lazyfs_report::{Build, LazyfsReport};
use crate::lazyfs_tree::{self as tree, FileSpec};
use crate::netns::{self, Network, ORIGIN_IP};
use crate::processes::{self, Daemons};
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

use phases::{baseline, first_reads, main_reads, many_mount, native_read};

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
