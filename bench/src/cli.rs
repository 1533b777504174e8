//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::host_tcp::HostTcp;
use crate::lazyfs_tree::Mix;
use crate::shaping::Tbf;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    version,
    about = "Shoal benchmarks: blob distribution on a simulated network, supernode scale, peer \
             memory, lazyfs mounts."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Distribute one blob to N simulated hosts (network namespaces joined by a bridge, every
    /// link shaped with tc tbf) through shoal-peer, and optionally by direct registry pulls.
    /// Needs root, iproute2 and Debian's docker-registry.
    Cluster(ClusterArgs),
    /// Drive one shoal-supernode on loopback with many simulated peers on one hot task and
    /// measure scheduling latency and throughput.
    Supernode(SupernodeArgs),
    /// Resident memory of one `shoal-peer run` (embedded supernode) idle and while serving
    /// many concurrent `shoal-peer get` downloads, twice: cold (from the registry) and warm
    /// (from its cache). All on loopback; needs Debian's docker-registry.
    Memory(MemoryArgs),
    /// Issue 21's fault targets on loopback, each against a fault-free run of the same shape
    /// in the same run: a parent killed or stalled mid-swarm, a registry answering 503 or
    /// resetting on 10 % of requests, 1,000 concurrent clients of one cold blob. The same
    /// measurements as the peer's CI tests (shoal-testkit's scenarios). Needs
    /// docker-registry; the registry scenario also umoci and skopeo.
    Faults(crate::faults::FaultsArgs),
    /// lazyfs mount benchmark: a ≥ 1 GiB image behind a rate-shaped link (mount to first
    /// read vs containerd pull + unpack, a cold startup set, warm reads vs squashfuse and
    /// native, mount time of a 100 k-file image). Needs root, /dev/fuse, docker-registry,
    /// containerd, skopeo, umoci, squashfuse, squashfs-tools.
    Lazyfs(crate::lazyfs_bench::LazyfsArgs),
    /// N nodes lazily mount the same lazyfs image through their peers and read the same
    /// startup set at once: the last node against one node alone, the origin's egress against
    /// the set. Simulated hosts (origin, supernode, N nodes) on shaped links. Needs root,
    /// /dev/fuse, docker-registry, fuse3.
    LazyCluster(crate::lazy_cluster::LazyClusterArgs),
    /// Warm reads of a real tree (default /usr/lib/x86_64-linux-gnu) through a lazyfs mount,
    /// and through overlayfs over it, against native disk: `tar -cf - . | wc -c`, alternated,
    /// medians and ratios; plus the FUSE requests of a warm pass. Needs root, /dev/fuse,
    /// docker-registry, fuse3, overlayfs.
    WarmRead(crate::warm_read::WarmReadArgs),
    /// Pods through containerd's CRI, from PullImage to the container's exit: a ≥ 1 GiB image
    /// whose entrypoint reads a 5 % startup set, pulled whole (overlayfs) against its lazyfs
    /// conversion through `shoal-lazyfs snapshotter`, cold and warm (a second node's peer gets
    /// the chunks from the first). Simulated hosts on shaped links. Needs root, /dev/fuse,
    /// containerd, runc, umoci, skopeo, docker-registry, busybox-static, fuse3.
    LazyPod(crate::lazy_pod::LazyPodArgs),
    /// Remove namespaces (and the processes in them) and work directories left by a killed
    /// run. Removes those of runs in progress too.
    Cleanup(CleanupArgs),
    /// Helpers the benchmarks run inside namespaces.
    #[command(hide = true)]
    Internal(InternalArgs),
}

#[derive(Debug, Args)]
pub struct InternalArgs {
    /// Print a line and wait for the start signal on stdin first (see `start_gate`).
    #[arg(long)]
    pub gate: bool,
    #[command(subcommand)]
    pub command: InternalCommand,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Node hosts, each running one shoal-peer.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub nodes: u32,
    /// Rate of every host link, up and down (Mbit/s, 10^6 bit/s).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate_mbit: u32,
    /// Blob size in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub size_mib: u64,
    /// Piece size in bytes, passed to the peers when `shoal-peer run` supports `--piece-size`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    pub piece_size: Option<u64>,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Supernodes (all on the control host; peers get every one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub supernodes: u32,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// With the table: also print each round's link rates every 0.5 s (always in the JSON).
    #[arg(long)]
    pub timeline: bool,
    /// Also run the baseline: every node pulls straight from the registry (default).
    #[arg(long, overrides_with = "no_baseline")]
    pub baseline: bool,
    /// Skip the baseline.
    #[arg(long, overrides_with = "baseline")]
    pub no_baseline: bool,
    /// Also run the static TCP split: the same bytes moved by plain TCP on the schedule that
    /// meets the bound on paper (the origin sends node k the k-th 1/N, node k forwards it to
    /// every other node as it arrives; no hashing, disk, HTTP or scheduler). A reference for
    /// what this machine's simulated network and TCP give with no application cost.
    #[arg(long)]
    pub tcp_split: bool,
    /// Keep every process's log in DIR (created); by default logs are deleted with the run.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Directory with shoal-peer and shoal-supernode [default: the one holding shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the blob, registry storage, peer caches and copies go [default: /dev/shm when it
    /// has room, else the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// How each node's client fetches the blob from its peer in the P2P round.
    #[arg(long, value_enum, default_value_t = P2pClient::Mirror)]
    pub client: P2pClient,
    /// Passed to every peer as `--concurrent-pieces`.
    #[arg(long)]
    pub concurrent_pieces: Option<u32>,
    /// Extra argument for every `shoal-peer run` (repeatable), e.g. `--peer-arg=--log-level=debug`.
    #[arg(long = "peer-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub peer_args: Vec<String>,
    /// Extra argument for every `shoal-supernode` (repeatable).
    #[arg(long = "supernode-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub supernode_args: Vec<String>,
    /// Give up on a round after this many seconds [default: 3 × the baseline's ideal + 60].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

// The simulated network's links and hosts' TCP (`cluster` and `lazy-cluster`, whose help
// words the last three differently: see `LazyClusterArgs`). Plain comments on clap structs:
// a doc comment would become the command's about text.
#[derive(Debug, Clone, Args)]
pub struct NetworkArgs {
    /// Bucket depth of every link's `tbf` in bytes [default: 5 ms at the rate, at least 96 KiB].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1600..=(64 << 20)))]
    pub burst_bytes: Option<u64>,
    /// TCP congestion control of every simulated host; `machine`: the machine's default
    /// (bbr here, which without the fq qdisc paces each packet by timer and costs the shared
    /// cores more than the links do: see `host_tcp.rs`).
    #[arg(long, default_value = "cubic", value_name = "NAME")]
    pub congestion_control: String,
    /// Smallest TSO packet of every simulated host, in segments (`net.ipv4.tcp_min_tso_segs`,
    /// which cubic honours and bbr ignores); 0: the machine's default (2).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=255))]
    pub min_tso_segs: u32,
    /// Another sysctl for every simulated host, e.g. `net.ipv4.tcp_slow_start_after_idle=0`
    /// (repeatable; applied after the two above).
    #[arg(long = "host-sysctl", value_name = "KEY=VALUE")]
    pub host_sysctls: Vec<String>,
}

impl NetworkArgs {
    /// The simulated hosts' TCP, and every sysctl a host gets: the TCP's, then `--host-sysctl`.
    pub fn host_tcp(&self) -> anyhow::Result<(HostTcp, Vec<String>)> {
        let tcp = HostTcp::from_args(&self.congestion_control, self.min_tso_segs)?;
        let mut sysctls = tcp.sysctls();
        sysctls.extend(self.host_sysctls.iter().cloned());
        Ok((tcp, sysctls))
    }

    /// Every link's qdisc at `rate_mbit`, with `--burst-bytes` when given.
    pub fn tbf(&self, rate_mbit: u32) -> Tbf {
        let mut tbf = Tbf::for_rate_mbit(rate_mbit);
        if let Some(burst) = self.burst_bytes {
            tbf.burst_bytes = burst;
        }
        tbf
    }
}

// The generated tree's size mix (`lazyfs` and `lazy-cluster`, whose help words the first
// differently).
#[derive(Debug, Clone, Args)]
pub struct TreeArgs {
    /// Small files (1–64 KiB) in the big tree.
    #[arg(long, default_value_t = 25_000)]
    pub small_files: u32,
    /// Medium files (64 KiB–4 MiB).
    #[arg(long, default_value_t = 400)]
    pub medium_files: u32,
    /// Large files (50–200 MiB).
    #[arg(long, default_value_t = 4)]
    pub large_files: u32,
}

impl TreeArgs {
    pub fn mix(&self) -> Mix {
        Mix {
            small: self.small_files,
            medium: self.medium_files,
            large: self.large_files,
        }
    }
}

/// The P2P round's client on every node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum P2pClient {
    /// containerd's path: `GET /v2/…/blobs/DIGEST?ns=ORIGIN` on the peer's registry mirror,
    /// which holds back the last bytes until the blob matches its digest; the client checks
    /// the length and discards the bytes (containerd's own copy is not the distribution's
    /// cost).
    Mirror,
    /// `shoal-peer get -o FILE --digest …`: the client also hashes the bytes and writes a
    /// second copy on the node.
    Get,
}

impl ClusterArgs {
    pub fn run_baseline(&self) -> bool {
        !self.no_baseline
    }
}

#[derive(Debug, Args)]
pub struct SupernodeArgs {
    /// Simulated peers.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub peers: u32,
    /// Pieces of the hot task.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    pub pieces: u32,
    /// Piece size of the hot task (bytes; only sizes the layout, no bytes move).
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    pub piece_size: u64,
    /// Length of the measured phase in seconds (after every peer announced and registered).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// `capacity` of every schedule request.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub capacity: u32,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Drive this already running supernode instead of starting one.
    #[arg(long, value_name = "URL")]
    pub supernode_url: Option<String>,
    /// Directory with shoal-supernode [default: the one holding shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Extra argument for `shoal-supernode` (repeatable).
    #[arg(long = "supernode-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub supernode_args: Vec<String>,
    /// Keep the supernode's log in DIR (created).
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Concurrent `shoal-peer get` downloads per round.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub downloads: u32,
    /// Size of every blob in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub size_mib: u64,
    /// Distinct blobs (download i fetches blob i mod K) [default: --downloads, every download a
    /// different blob].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub blobs: Option<u32>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep every process's log in DIR (created); by default logs are deleted with the run.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Directory with shoal-peer [default: the one holding shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where registry storage, the peer's data dir and the downloaded copies go [default:
    /// /dev/shm when it has room, else the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Extra argument for `shoal-peer run` (repeatable), e.g. `--peer-arg=--concurrent-pieces=8`.
    #[arg(long = "peer-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub peer_args: Vec<String>,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

impl MemoryArgs {
    pub fn blob_count(&self) -> u32 {
        self.blobs.unwrap_or(self.downloads)
    }
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Remove namespaces whose name starts with this.
    #[arg(long, default_value = crate::netns::PREFIX)]
    pub prefix: String,
}

#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// GET a URL into a file, verifying its sha256 (the baseline's client).
    Fetch {
        url: String,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        digest: shoal_common::Digest,
    },
    /// Push a file as a blob to a registry (monolithic upload).
    Push {
        #[arg(long)]
        registry: String,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        digest: shoal_common::Digest,
    },
    /// The TCP split round's origin: serves node k the k-th 1/N of SIZE zero bytes.
    SplitOrigin {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        nodes: u32,
    },
    /// The TCP split round's node daemon (see `tcp_split`).
    SplitNode {
        #[arg(long)]
        index: u32,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        origin: std::net::SocketAddr,
        /// Every node's address, this one's included, in index order.
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<std::net::Ipv4Addr>,
    },
    /// The TCP split round's client: starts the local node, exits once it holds the blob.
    SplitWait {
        #[arg(long)]
        node: std::net::SocketAddr,
    },
    /// GET a URL and discard the body; fails unless the status is 2xx and the whole
    /// Content-Length arrived.
    Drain { url: String },
    /// Replace this process with another program (a gated start for a client that is not
    /// one of these helpers).
    Exec {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// Wait for a lazyfs mount, read the listed files from it and compare every byte with
    /// the source tree (`lazy-cluster`'s reader); write the times to RESULT as JSON.
    ReadSet {
        #[arg(long)]
        mount: PathBuf,
        #[arg(long)]
        source: PathBuf,
        /// Paths relative to both roots, one a line.
        #[arg(long)]
        list: PathBuf,
        #[arg(long)]
        result: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// GET a URL and print the body; fails unless the status is 2xx.
    HttpGet {
        url: String,
        /// Print nothing.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn shared_flags_reach_every_command() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["shoal-bench"], args].concat());
        let net = [
            "--burst-bytes",
            "2000",
            "--host-sysctl",
            "a=b",
            "--min-tso-segs",
            "0",
        ];
        let Ok(Cli {
            command: Command::LazyCluster(lc),
        }) = parse(&[&["lazy-cluster", "--small-files", "3"][..], &net].concat())
        else {
            panic!("lazy-cluster does not parse");
        };
        assert_eq!((lc.tree.small_files, lc.tree.medium_files), (3, 400));
        assert_eq!(lc.network.burst_bytes, Some(2000));
        assert_eq!(
            lc.network.host_tcp().unwrap().1,
            ["net.ipv4.tcp_congestion_control=cubic", "a=b"]
        );
        let Ok(Cli {
            command: Command::Cluster(c),
        }) = parse(&[&["cluster"][..], &net].concat())
        else {
            panic!("cluster does not parse");
        };
        assert_eq!(c.network.tbf(100).burst_bytes, 2000);
        assert_eq!(c.network.congestion_control, "cubic");
        let Ok(Cli {
            command: Command::Lazyfs(l),
        }) = parse(&["lazyfs", "--large-files", "0"])
        else {
            panic!("lazyfs does not parse");
        };
        assert_eq!((l.tree.small_files, l.tree.large_files), (25_000, 0));
        assert!(parse(&["lazyfs", "--burst-bytes", "2000"]).is_err());
    }
}
