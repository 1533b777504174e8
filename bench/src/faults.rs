//! `shoal-bench faults`: issue 21's fault targets as benchmark figures. Each scenario is
//! shoal-testkit's measurement (`shoal_testkit::scenarios`), the very function the peer's CI
//! tests call and assert loose bounds on; here it runs `--runs` times against release binaries
//! and its figures are compared with the targets themselves:
//!
//! - kill-parent, stall-parent: the survivors' time ≤ 1.5 × the fault-free time;
//! - registry: requests reaching the registry ≤ 1.3 × the fault-free count, per client;
//! - overload: one upstream blob download, ≤ 1 access-check HEAD per credential, every client
//!   verified, the peer's peak RSS ≤ 256 MiB.
//!
//! The measurements are test support and panic when something goes wrong (a client gets
//! wrong bytes, a wait times out). Each run therefore goes in a task of its own under
//! `--timeout`: a panic or a timeout is a failed run in the report, and dropping the task
//! kills every process it started.

use std::any::Any;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use shoal_testkit::scenarios::kill_parent::kill_parent;
use shoal_testkit::scenarios::overload::{overload_open, OverloadOpts};
use shoal_testkit::scenarios::registry_faults::{self, registry_faults, RegistryFaultsOpts};
use shoal_testkit::scenarios::stall_parent::{stall_parent, StallRun};
use shoal_testkit::scenarios::SwarmOpts;
use shoal_testkit::swarm::time_ratio;

use crate::faults_report::{FaultsReport, Measure, RunReport, ScenarioReport, Target};
use crate::processes;

/// A scenario of `shoal-bench faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultScenario {
    /// The busiest parent of a swarm is SIGKILLed mid-download.
    KillParent,
    /// A parent stops answering (new requests hang; bodies stall mid-way), connections open.
    StallParent,
    /// The registry answers 503 on 5 % and resets on another 5 % of requests.
    Registry,
    /// 1,000 concurrent clients of one cold blob through one peer.
    Overload,
}

impl FaultScenario {
    pub const ALL: [FaultScenario; 4] = [
        FaultScenario::KillParent,
        FaultScenario::StallParent,
        FaultScenario::Registry,
        FaultScenario::Overload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultScenario::KillParent => "kill-parent",
            FaultScenario::StallParent => "stall-parent",
            FaultScenario::Registry => "registry",
            FaultScenario::Overload => "overload",
        }
    }
}

#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// Runs of every scenario (each with its own fault-free baseline).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Scenario to run (repeatable) [default: all of them].
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    pub scenarios: Vec<FaultScenario>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Directory with shoal-peer and shoal-supernode [default: the one holding shoal-bench].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where registry storage, the daemons' data and logs and the downloaded copies go
    /// [default: the system temp dir]; removed after use unless --keep-logs.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep every process's log (and data) in DIR (created) instead of deleting them; takes
    /// the place of --work-dir.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Give up on one run of one scenario after this many seconds (it is then reported as
    /// failed and its processes are killed).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// Peers of the kill and stall swarms.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub peers: u32,
    /// Size of the swarms' blob in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=4096))]
    pub swarm_size_mib: u64,
    /// `--download-rate` of every swarm peer (slow enough that a fault lands mid-download).
    #[arg(long, default_value = "20MiB")]
    pub rate: String,
    /// Concurrent clients of the overload scenario.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub clients: u32,
    /// Size of the overload scenario's blob in MiB.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub overload_size_mib: u64,
    /// 1 MiB layers added to the registry scenario's 3-layer image, so that its 10 % fault
    /// share is measured on enough requests (~25 with none, ~85 with 20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=200))]
    pub registry_extra_layers: u32,
}

impl FaultsArgs {
    /// The scenarios asked for, in the canonical order, each once.
    pub fn scenarios(&self) -> Vec<FaultScenario> {
        FaultScenario::ALL
            .into_iter()
            .filter(|s| self.scenarios.is_empty() || self.scenarios.contains(s))
            .collect()
    }
}

/// Issue 21's bounds.
const TIME_BOUND: f64 = 1.5;
const REQUEST_BOUND: f64 = 1.3;
const RSS_TARGET_MIB: f64 = 256.0;

pub async fn main(args: FaultsArgs) -> Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.failed_runs > 0 {
        bail!("{} run(s) failed (see above)", report.failed_runs);
    }
    Ok(())
}

async fn run(args: &FaultsArgs) -> Result<FaultsReport> {
    let scenarios = args.scenarios();
    processes::require_program("docker-registry", "docker-registry")?;
    let peer_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-peer")?;
    processes::find_binary(args.bin_dir.as_deref(), "shoal-supernode")?;
    let bin_dir = match peer_bin.parent() {
        Some(dir) => dir.to_owned(),
        None => bail!("{} has no directory", peer_bin.display()),
    };
    if scenarios.contains(&FaultScenario::Registry) {
        for tool in registry_faults::TOOLS {
            if !std::path::Path::new(tool).exists() {
                bail!("the registry scenario needs {tool} (apt-get install umoci skopeo)");
            }
        }
    }
    match (&args.keep_logs, &args.work_dir) {
        (Some(dir), _) => shoal_testkit::scratch::set_scratch(dir.clone(), true),
        (None, Some(dir)) => shoal_testkit::scratch::set_scratch(dir.clone(), false),
        (None, None) => false,
    };

    let limit = Duration::from_secs(args.timeout);
    let mut reports = vec![];
    for scenario in scenarios {
        let mut runs = vec![];
        for run in 1..=args.runs {
            eprintln!("== {} run {run} of {}", scenario.name(), args.runs);
            runs.push(run_one(scenario, args, &bin_dir, run, limit).await);
        }
        reports.push(ScenarioReport::new(
            scenario.name(),
            &targets(scenario),
            runs,
        ));
    }
    Ok(FaultsReport::new(args.runs, reports))
}

/// The targets of `scenario`, in the order of the table.
fn targets(scenario: FaultScenario) -> Vec<Target> {
    let time = |key| Target {
        key,
        limit: TIME_BOUND,
        unit: " ×",
    };
    let requests = |key| Target {
        key,
        limit: REQUEST_BOUND,
        unit: " ×",
    };
    match scenario {
        FaultScenario::KillParent => vec![time("survivors ÷ fault-free time")],
        FaultScenario::StallParent => vec![
            time("hang: survivors ÷ fault-free time"),
            time("mid-body stall: survivors ÷ fault-free time"),
        ],
        FaultScenario::Registry => vec![
            requests("mirror pull: upstream requests ÷ clean"),
            requests("shoal-peer get: upstream requests ÷ clean"),
            requests("both: upstream requests ÷ clean"),
        ],
        FaultScenario::Overload => vec![
            Target {
                key: "upstream blob downloads (bytes ÷ blob)",
                limit: 1.0,
                unit: "",
            },
            Target {
                key: "blob HEADs upstream per credential",
                limit: 1.0,
                unit: "",
            },
            Target {
                key: "clients failed or unverified",
                limit: 0.0,
                unit: "",
            },
            Target {
                key: "peer peak RSS, MiB",
                limit: RSS_TARGET_MIB,
                unit: "",
            },
        ],
    }
}

/// Figures of one run, and the raw numbers behind them.
type Figures = (Vec<Measure>, String);

/// One run of `scenario` in a task of its own, within `limit`.
async fn run_one(
    scenario: FaultScenario,
    args: &FaultsArgs,
    bin_dir: &std::path::Path,
    run: u32,
    limit: Duration,
) -> RunReport {
    let started = Instant::now();
    let seed = u64::from(run - 1) * 1000;
    let swarm = SwarmOpts {
        bin_dir: bin_dir.to_owned(),
        peers: args.peers as usize,
        blob_len: (args.swarm_size_mib << 20) as usize,
        rate: args.rate.clone(),
        seed,
    };
    let overload = OverloadOpts {
        bin_dir: bin_dir.to_owned(),
        clients: args.clients as usize,
        blob_len: (args.overload_size_mib << 20) as usize,
        seed: 2100 + seed,
    };
    let registry = RegistryFaultsOpts {
        bin_dir: bin_dir.to_owned(),
        seed,
        extra_layers: args.registry_extra_layers as usize,
        ..RegistryFaultsOpts::default()
    };
    let mut task = tokio::spawn(async move {
        match scenario {
            FaultScenario::KillParent => kill_figures(&swarm).await,
            FaultScenario::StallParent => stall_figures(&swarm).await,
            FaultScenario::Registry => registry_figures(&registry).await,
            FaultScenario::Overload => overload_figures(&overload).await,
        }
    });
    let result = match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(figures)) => Ok(figures),
        Ok(Err(e)) if e.is_panic() => Err(panic_message(e.into_panic())),
        Ok(Err(e)) => Err(format!("the run's task ended: {e}")),
        Err(_) => {
            // Dropping the task's future kills every process the run started.
            task.abort();
            let _ = task.await;
            Err(format!(
                "did not finish within {} s (--timeout)",
                limit.as_secs()
            ))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok((measures, detail)) => RunReport {
            run,
            error: None,
            measures,
            detail,
            seconds,
        },
        Err(error) => RunReport {
            run,
            error: Some(error),
            measures: vec![],
            detail: String::new(),
            seconds,
        },
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "panicked".to_owned(),
        },
    };
    // The first line says what; the rest is a client's output, in the log above.
    text.lines().next().unwrap_or_default().to_owned()
}

fn measure(target: &str, value: f64) -> Measure {
    Measure {
        target: target.to_owned(),
        value,
    }
}

async fn kill_figures(opts: &SwarmOpts) -> Figures {
    let o = kill_parent(opts).await;
    let ratio = time_ratio(o.survivors, o.fault_free);
    let detail = format!(
        "fault-free {:.2} s, survivors of the kill {:.2} s ({} gets still running at the \
         kill), {} parent(s) taken out of scheduling",
        o.fault_free.as_secs_f64(),
        o.survivors.as_secs_f64(),
        o.unfinished_at_kill,
        o.parents_down
    );
    (vec![measure("survivors ÷ fault-free time", ratio)], detail)
}

async fn stall_figures(opts: &SwarmOpts) -> Figures {
    let o = stall_parent(opts).await;
    let describe = |name: &str, r: &StallRun| {
        format!(
            "{name} {:.2} s ({} requests faulted, {} stalled fetches abandoned, {} parent(s) \
             down)",
            r.survivors.as_secs_f64(),
            r.faulted_requests,
            r.timeouts,
            r.parents_down
        )
    };
    let detail = format!(
        "fault-free {:.2} s; {}; {}",
        o.fault_free.as_secs_f64(),
        describe("hang", &o.hang),
        describe("mid-body stall", &o.stall)
    );
    (
        vec![
            measure(
                "hang: survivors ÷ fault-free time",
                time_ratio(o.hang.survivors, o.fault_free),
            ),
            measure(
                "mid-body stall: survivors ÷ fault-free time",
                time_ratio(o.stall.survivors, o.fault_free),
            ),
        ],
        detail,
    )
}

async fn registry_figures(opts: &RegistryFaultsOpts) -> Figures {
    let o = registry_faults(opts).await;
    let ratio = |faulty: u64, clean: u64| faulty as f64 / clean.max(1) as f64;
    let detail = format!(
        "requests clean/faulty: mirror pull {}/{}, shoal-peer get {}/{}; {} faulted (503 or \
         reset); every blob verified",
        o.clean.pull, o.faulty.pull, o.clean.get, o.faulty.get, o.faulty.faulted
    );
    (
        vec![
            measure(
                "mirror pull: upstream requests ÷ clean",
                ratio(o.faulty.pull, o.clean.pull),
            ),
            measure(
                "shoal-peer get: upstream requests ÷ clean",
                ratio(o.faulty.get, o.clean.get),
            ),
            measure(
                "both: upstream requests ÷ clean",
                ratio(o.faulty.total(), o.clean.total()),
            ),
        ],
        detail,
    )
}

async fn overload_figures(opts: &OverloadOpts) -> Figures {
    let o = overload_open(opts).await;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let unverified = o.clients.saturating_sub(o.verified);
    let mut detail = format!(
        "{} clients ({} credential), {:.1} MiB blob: {} verified in {:.2} s; upstream {} blob \
         HEAD(s), {} blob GET(s) carrying {} B; {} successful download(s); peer VmHWM \
         {:.1} MiB (before the storm {:.1} MiB)",
        o.clients,
        o.credentials,
        mib(o.blob_len),
        o.verified,
        o.took.as_secs_f64(),
        o.heads,
        o.blob_gets,
        o.get_bytes,
        o.downloads_ok,
        mib(o.peak_rss),
        mib(o.rss_before)
    );
    if let Some(first) = o.failures.first() {
        detail.push_str(&format!("; first failure: {first}"));
    }
    (
        vec![
            measure(
                "upstream blob downloads (bytes ÷ blob)",
                o.downloads_upstream(),
            ),
            measure(
                "blob HEADs upstream per credential",
                o.heads_per_credential(),
            ),
            measure("clients failed or unverified", unverified as f64),
            measure("peer peak RSS, MiB", mib(o.peak_rss)),
        ],
        detail,
    )
}
