//! `shoal-bench lazy-cluster`: N nodes lazily mount the same lazyfs image through their peers
//! and read the same startup set at once (issue 17). What it answers: does the origin send
//! the startup set about once, however many nodes start, and does the last node finish about
//! as soon as one node alone?
//!
//! It reuses the pieces of `shoal-bench lazyfs` (the deterministic tree, its startup set of
//! every 20th file, the registry, `nsenter` for processes that need the host's mount
//! namespace) and of `shoal-bench cluster` (hosts on a bridge, shaped links, the simulated
//! hosts' TCP, a supernode on its own host, the start gate):
//! - `origin` (10.77.0.1) runs only docker-registry, so its link's counter is the origin's
//!   egress;
//! - `ctl` (10.77.0.2) runs the supernode, keeping control traffic off the origin's link;
//! - `n1`…`nN` (10.77.1.x) each run `shoal-peer run --supernode …` and, per round, a
//!   `shoal-lazyfs mount … --peer http://127.0.0.1:65001 --no-fallback --prefetch none` and a
//!   reader (`lazy_cluster_read`).
//!
//! Rounds (`lazy_cluster_round`), each with a fresh supernode, fresh peers and fresh mount
//! caches: 0, a cold mount → first small file on one node (time, and bytes over the node's
//! link); 1, one node mounts and reads the startup set alone; 2, all N do, released together.
//! The startup set's sizes come from the image's index (`lazy_index`). The report
//! (`lazy_cluster_report`) sets round 2 against round 1 and the origin's egress against the
//! set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cli::{NetworkArgs, TreeArgs};
use crate::cluster::note;
use crate::host_tcp::AllowedCongestionControl;
use crate::lazy_cluster_report::{LazyClusterReport, ReadRound, Summary};
use crate::lazy_cluster_round::{first_read, read_round};
use crate::lazy_index::{SetNeeds, StoredImage};
use crate::lazyfs_bench::REGISTRY_PORT;
use crate::lazyfs_env::{make_work_dir, start_registry, MountSweep};
use crate::lazyfs_images::convert_dir;
use crate::lazyfs_tree::{self as tree, FileSpec};
use crate::netns::{self, Host, Network, ORIGIN_IP};
use crate::processes::{self, Daemons};
use crate::shaping;

// The tree and network flags are those of `lazyfs` and `cluster`, four of them with help
// worded for this benchmark. (Plain comments on clap structs: a doc comment would become the
// command's about text.)
#[derive(Args, Debug, Clone)]
#[command(
    mut_arg("small_files", |a| a.help("Small files (1–64 KiB) in the tree (as `shoal-bench lazyfs`)")),
    mut_arg("congestion_control", |a| a.help(
        "TCP congestion control of every simulated host (`machine`: the machine's default; \
         see `shoal-bench cluster --help`)"
    )),
    mut_arg("min_tso_segs", |a| a.help(
        "Smallest TSO packet of every simulated host, in segments; 0: the machine's default"
    )),
    mut_arg("host_sysctls", |a| a.help("Another sysctl for every simulated host (repeatable)")),
)]
pub struct LazyClusterArgs {
    /// Nodes that mount and read at once in round 2.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Rate of every host link, up and down (Mbit/s, 10^6 bit/s).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_mbit: u32,
    #[command(flatten)]
    pub tree: TreeArgs,
    /// Convert with the startup set as the prefetch list, so its files lie first and next to
    /// each other in the data blob (as in an image built from a recorded startup list)
    /// instead of spread over the whole blob.
    #[arg(long)]
    pub startup_first: bool,
    /// Cold mount → first small file runs on one node (round 0); 0 skips them.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Piece size the report rounds the startup set's chunks out to (bytes). Only for the
    /// report; the peers choose their own.
    #[arg(long, default_value_t = 16 << 10, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub set_piece_size: u64,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Extra argument for every `shoal-peer run` (repeatable), e.g. `--peer-arg=--log-level=debug`.
    #[arg(long = "peer-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub peer_args: Vec<String>,
    /// Extra argument for every `shoal-supernode` (repeatable).
    #[arg(long = "supernode-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub supernode_args: Vec<String>,
    /// Extra argument for every `shoal-lazyfs mount` (repeatable), e.g. `--mount-arg=--readahead=0`.
    #[arg(long = "mount-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub mount_args: Vec<String>,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep every process's log in DIR (created); by default logs are deleted with the run.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Directory with shoal-peer, shoal-supernode and shoal-lazyfs [default: the one holding
    /// shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the work directory goes [default: /dev/shm when it has 10 GiB free, else the
    /// temp dir].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

pub async fn main(args: LazyClusterArgs) -> Result<()> {
    let env = Env::setup(args).await?;
    let mut first_reads = Vec::new();
    for rep in 0..env.args.repeat {
        first_reads.push(first_read(&env, rep).await?);
    }
    env.note("round 1: one node mounts and reads the startup set alone");
    let alone = read_round(&env, "alone", 1).await?;
    env.note(format!(
        "round 2: {} nodes mount and read the startup set at once",
        env.args.nodes
    ));
    let together = read_round(&env, "together", env.args.nodes as usize).await?;
    let mut report = env.report(first_reads, alone, together);
    report.summarize();
    if env.args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(dir) = &env.args.keep_logs {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    let failed = report.alone.failed + report.together.failed;
    env.note("tearing down");
    drop(env);
    if failed > 0 {
        bail!("{failed} node(s) failed (see the report)");
    }
    Ok(())
}

/// The binaries under test.
pub(crate) struct Bins {
    pub(crate) peer: PathBuf,
    pub(crate) supernode: PathBuf,
    pub(crate) lazyfs: PathBuf,
}

impl Bins {
    /// The three in `bin_dir`, or beside shoal-bench.
    pub(crate) fn find(bin_dir: Option<&Path>) -> Result<Bins> {
        Ok(Bins {
            peer: processes::find_binary(bin_dir, "shoal-peer")?,
            supernode: processes::find_binary(bin_dir, "shoal-supernode")?,
            lazyfs: processes::find_binary(bin_dir, "shoal-lazyfs")?,
        })
    }
}

/// Everything the rounds share. Fields drop in declaration order, which is the teardown
/// order: the registry stops, the namespaces go (with whatever still runs in them), every
/// mount left under the work directory is detached, the work directory is removed, and the
/// machine's list of allowed congestion controls is put back.
pub(crate) struct Env {
    _registry: Daemons,
    net: Network,
    _sweep: MountSweep,
    _work_dir: tempfile::TempDir,
    _allowed: AllowedCongestionControl,
    pub(crate) args: LazyClusterArgs,
    pub(crate) bins: Bins,
    pub(crate) work: PathBuf,
    pub(crate) logs: PathBuf,
    /// The tree as a plain directory: what the readers compare with.
    pub(crate) src: PathBuf,
    /// The startup set's paths, one a line.
    pub(crate) list: PathBuf,
    /// The lazyfs image as the nodes name it, and its registry.
    pub(crate) image: String,
    pub(crate) registry_host: String,
    /// The small file round 0 waits for.
    pub(crate) first: FileSpec,
    run: String,
    started: Instant,
    files: usize,
    tree_bytes: u64,
    set: SetNeeds,
    convert_s: f64,
    tbf: String,
    host_sysctls: Vec<String>,
}

impl Env {
    async fn setup(args: LazyClusterArgs) -> Result<Env> {
        let started = Instant::now();
        preflight()?;
        let bins = Bins::find(args.bin_dir.as_deref())?;
        let (host_tcp, host_sysctls) = args.network.host_tcp()?;
        let allowed = AllowedCongestionControl::ensure(&host_tcp)?;
        let work_dir = make_work_dir(args.work_dir.as_deref(), "lazy-cluster")?;
        let work = work_dir.path().to_owned();
        let sweep = MountSweep(work.clone());
        let logs = args.keep_logs.clone().unwrap_or_else(|| work.join("logs"));
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        note(started, format!("work directory {}", work.display()));

        let files = tree::plan_big(args.tree.mix());
        let tree_bytes: u64 = files.iter().map(|f| f.size).sum();
        let src = work.join("tree");
        note(
            started,
            format!(
                "generating {} files, {:.2} GiB",
                files.len(),
                tree_bytes as f64 / f64::from(1u32 << 30)
            ),
        );
        {
            let (src, files) = (src.clone(), files.clone());
            tokio::task::spawn_blocking(move || tree::write_tree(&src, &files))
                .await
                .context("writing the tree")??;
        }
        let startup = tree::startup_set(&files);
        let list = work.join("startup.txt");
        let mut text = String::new();
        for f in &startup {
            let p = f.path.to_str().context("a tree path is not UTF-8")?;
            text.push_str(p);
            text.push('\n');
        }
        std::fs::write(&list, text)?;

        let run = format!("lc{}", std::process::id() % 100_000);
        netns::remove_leftovers(&run)?;
        let net = Network::cluster(&run, args.nodes)?;
        let origin_ns = net.origin().ns.name().to_owned();
        let mut registry = Daemons::default();
        start_registry(&work, &logs, &origin_ns, &mut registry).await?;

        note(
            started,
            "converting the tree to lazyfs (pushed over the origin's loopback)",
        );
        let local = format!("127.0.0.1:{REGISTRY_PORT}");
        let layout = args.startup_first.then_some(list.as_path());
        let convert = convert_dir(&origin_ns, &bins.lazyfs, &src, &local, "lazy", layout).await?;
        let stored = StoredImage::load(&work.join("registry"), "lazy", "t")?;
        let set = stored.needs(&startup, args.set_piece_size)?;
        let first = files
            .iter()
            .find(|f| f.size <= 8 << 10)
            .context("the tree has no small file (give --small-files)")?
            .clone();

        let tbf = args.network.tbf(args.rate_mbit);
        shaping::shape_hosts(&net, &tbf, &host_sysctls)?;
        note(
            started,
            format!(
            "{} nodes, links shaped ({}); startup set: {} files, {} B, {} B of compressed chunks",
            args.nodes,
            tbf.tc_args().join(" "),
            set.files,
            set.file_bytes,
            set.chunk_bytes
        ),
        );
        let registry_host = format!("{ORIGIN_IP}:{REGISTRY_PORT}");
        Ok(Env {
            _registry: registry,
            net,
            _sweep: sweep,
            _work_dir: work_dir,
            _allowed: allowed,
            bins,
            work,
            logs,
            src,
            list,
            image: format!("{registry_host}/lazy:t"),
            registry_host,
            first,
            run,
            started,
            files: files.len(),
            tree_bytes,
            set,
            convert_s: convert.as_secs_f64(),
            tbf: tbf.tc_args().join(" "),
            host_sysctls,
            args,
        })
    }

    pub(crate) fn note(&self, msg: impl std::fmt::Display) {
        note(self.started, msg);
    }

    pub(crate) fn switch(&self) -> &netns::Namespace {
        self.net.switch()
    }

    pub(crate) fn origin(&self) -> &Host {
        self.net.origin()
    }

    pub(crate) fn ctl(&self) -> &Host {
        self.net.ctl()
    }

    /// Node `i` (0-based).
    pub(crate) fn node(&self, i: usize) -> &Host {
        self.net.node(i)
    }

    /// A fresh directory for one round's files on one node.
    pub(crate) fn round_dir(&self, tag: &str, node: &str) -> Result<PathBuf> {
        let d = self.work.join(tag).join(node);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    fn report(
        &self,
        first_reads: Vec<crate::lazy_cluster_report::FirstRead>,
        alone: ReadRound,
        together: ReadRound,
    ) -> LazyClusterReport {
        LazyClusterReport {
            run: self.run.clone(),
            nodes: self.args.nodes,
            rate_mbit: self.args.rate_mbit,
            startup_first: self.args.startup_first,
            tbf: self.tbf.clone(),
            host_sysctls: self.host_sysctls.clone(),
            files: self.files,
            tree_bytes: self.tree_bytes,
            convert_s: self.convert_s,
            set: self.set.clone(),
            first_reads,
            alone,
            together,
            summary: Summary::default(),
        }
    }
}

/// Fails early, naming the Debian package, when a tool the benchmark runs is missing.
fn preflight() -> Result<()> {
    processes::require_root()?;
    for (prog, pkg) in [
        ("docker-registry", "docker-registry"),
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
    ] {
        processes::require_program(prog, pkg)?;
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: lazyfs mounts need FUSE");
    }
    Ok(())
}
