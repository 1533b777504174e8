//! `shoal-bench`: Shoal's benchmarks. Parses the command line, runs the chosen benchmark on a
//! tokio runtime and turns Ctrl-C / SIGTERM into an orderly teardown (every namespace and
//! process a benchmark created lives in a guard that cleans up when dropped).

mod cli;
mod cluster;
mod cluster_p2p;
mod cluster_round;
// The CRI client and containerd configuration of lazyfs's CRI test kit, shared rather than
// copied; `lazy-pod` uses part of the client.
#[allow(dead_code)]
#[path = "../../lazyfs/tests/cri_support/client.rs"]
mod cri_client;
#[allow(dead_code)]
#[path = "../../lazyfs/tests/cri_support/config.rs"]
mod cri_config;
mod faults;
mod faults_report;
mod fuse_trace;
mod host_tcp;
mod internal;
mod lazy_cluster;
mod lazy_cluster_read;
mod lazy_cluster_report;
mod lazy_cluster_round;
mod lazy_index;
mod lazy_pod;
mod lazy_pod_image;
mod lazy_pod_node;
mod lazy_pod_report;
mod lazyfs_bench;
mod lazyfs_env;
mod lazyfs_images;
mod lazyfs_report;
mod lazyfs_tree;
mod memory;
mod memory_report;
mod netns;
mod processes;
mod registry;
mod report;
mod shaping;
mod start_gate;
mod stats;
mod supernode_bench;
mod tcp_split;
mod warm_read;
mod warm_read_report;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Child processes are spawned from this (the main) thread only, so that their
    // parent-death signal (see `processes`) fires when shoal-bench itself goes away.
    let code = runtime.block_on(async move {
        let mut signals = match processes::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("shoal-bench: error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let work = async move {
            match cli.command {
                Command::Cluster(args) => cluster::main(args).await,
                Command::Supernode(args) => supernode_bench::main(args).await,
                Command::Memory(args) => memory::main(args).await,
                Command::Faults(args) => faults::main(args).await,
                Command::Lazyfs(args) => lazyfs_bench::main(args).await,
                Command::LazyCluster(args) => lazy_cluster::main(args).await,
                Command::WarmRead(args) => warm_read::main(args).await,
                Command::LazyPod(args) => lazy_pod::main(args).await,
                Command::Cleanup(args) => netns::cleanup_command(&args.prefix),
                Command::Internal(cmd) => internal::main(cmd).await,
            }
        };
        tokio::select! {
            biased;
            (name, code) = signals.recv() => {
                // Dropping `work` ran every guard: its namespaces and processes are gone.
                eprintln!("shoal-bench: {name}, cleaned up");
                ExitCode::from(code)
            }
            result = work => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shoal-bench: error: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    });
    // Don't wait for a blocking task (blob generation) a signal interrupted.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
