//! `shoal-bench warm-read`: how much slower than native disk a container's second read of its
//! whole tree is through a lazyfs mount, both page-cache warm (the acceptance target:
//! at most 1.3 ×).
//!
//! A real directory (by default /usr/lib/x86_64-linux-gnu) is converted (`dir:` source) into
//! a `docker-registry` in a namespace of its own (no shaping: only the warm reads are timed)
//! and mounted with `shoal-lazyfs mount` straight from that registry. The mount is read once
//! cold; then an untimed pass per variant both warms it and checks that it serves the same
//! tree (`tar --sort=name` streams, modification times aside, hashed and compared); then `repeat` rounds each time
//! `tar -cf - . | wc -c` (cwd = the tree) natively and through the mount — and, unless
//! `--no-overlay`, through an overlayfs whose lower dir is the mount (what a container reads
//! through) and through one over the native tree (what it reads through with a regular
//! image) — in alternating order so drift in the machine's load hits every variant alike.
//! Reported: each time, the medians and the ratios to native; and, as a check that does not
//! depend on how busy the machine is, the CPU time of the reading commands and of the mount's
//! daemon per pass.
//!
//! Last, FUSE requests are counted by opcode over one more warm pass (kernel tracepoint
//! `fuse:fuse_request_send` in a private tracefs instance), separately so tracing costs no
//! timed run anything. A warm pass that still sends requests is what makes a mount slower
//! than the disk: each is a round trip to the daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::fuse_trace::FuseTrace;
use crate::lazyfs_bench::{mount_flags, REGISTRY_PORT};
use crate::lazyfs_env::{make_work_dir, start_registry, umount_lazy, FuseMount, MountSweep};
use crate::lazyfs_images::convert_dir;
use crate::netns::{self, Namespace, PREFIX};
use crate::processes::{self, Daemons};
use crate::warm_read_report::Report;

#[derive(Args, Debug, Clone)]
pub struct WarmReadArgs {
    /// The directory to convert, mount and read.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/x86_64-linux-gnu")]
    pub tree: PathBuf,
    /// Warm rounds; each reads the tree once per variant (medians are reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Skip the reads through overlayfs.
    #[arg(long)]
    pub no_overlay: bool,
    /// Skip counting the FUSE requests of a warm pass (needs tracefs at /sys/kernel/tracing).
    #[arg(long)]
    pub no_request_count: bool,
    /// Extra argument for `shoal-lazyfs mount` (repeatable), e.g. `--mount-arg=--threads=4`.
    #[arg(long = "mount-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub mount_args: Vec<String>,
    /// Directory holding shoal-lazyfs (default: next to shoal-bench).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the work directory (registry storage, mount cache) goes (default: /dev/shm when
    /// it has 10 GiB free, else the temp dir).
    #[arg(long, value_name = "DIR")]
    pub work_parent: Option<PathBuf>,
    /// Also print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The acceptance target: warm mount time ÷ warm native time.
pub(crate) const TARGET_RATIO: f64 = 1.3;
/// The command every variant is timed with, in the tree's root.
pub(crate) const READ_CMD: &str = "tar -cf - . | wc -c";
/// What the verification pass hashes: the same tree gives the same stream whatever the
/// directory order. Modification times are left out: `shoal-lazyfs convert` drops them
/// unless told otherwise, so that equal trees give equal images.
const VERIFY_CMD: &str = "tar --sort=name --mtime=@0 -cf - . | sha256sum";

/// One way of reading the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    Native,
    Mount,
    OverlayNative,
    OverlayMount,
}

impl Variant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Native => "native",
            Variant::Mount => "lazyfs",
            Variant::OverlayNative => "overlay_native",
            Variant::OverlayMount => "overlay_lazyfs",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Variant::Native => "native disk",
            Variant::Mount => "lazyfs mount",
            Variant::OverlayNative => "overlayfs over native",
            Variant::OverlayMount => "overlayfs over lazyfs",
        }
    }
}

/// An overlayfs mount (empty upper dir), detached on drop.
struct Overlay {
    target: PathBuf,
}

impl Overlay {
    fn mount(work: &Path, name: &str, lower: &Path) -> Result<Overlay> {
        let base = work.join(name);
        let (upper, wdir, target) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &wdir, &target] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            wdir.display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&target)
            .stdin(Stdio::null())
            .output()
            .context("running mount -t overlay")?;
        if !out.status.success() {
            bail!(
                "mount -t overlay -o {opts} {} failed: {}",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Overlay { target })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        umount_lazy(&self.target);
    }
}

/// Teardown order is field order: the registry stops, its namespace goes, every mount left
/// under the work directory is detached, then the directory is removed.
struct Env {
    _registry: Daemons,
    ns: Namespace,
    _sweep: MountSweep,
    _work_dir: tempfile::TempDir,
    work: PathBuf,
    logs: PathBuf,
    lazyfs_bin: PathBuf,
}

pub async fn main(args: WarmReadArgs) -> Result<()> {
    preflight(&args)?;
    let tree = std::fs::canonicalize(&args.tree)
        .with_context(|| format!("--tree {}", args.tree.display()))?;
    if !tree.is_dir() {
        bail!("--tree {} is not a directory", tree.display());
    }
    let env = setup(&args).await?;
    let local = format!("127.0.0.1:{REGISTRY_PORT}");
    eprintln!("converting {} (dir: source)", tree.display());
    let convert = convert_dir(env.ns.name(), &env.lazyfs_bin, &tree, &local, "warm", None).await?;
    eprintln!("  converted in {:.1} s", convert.as_secs_f64());

    let mp = env.work.join("mnt");
    let mut flags = mount_flags(&env.work.join("cache"), &local, false);
    flags.extend(args.mount_args.iter().cloned());
    let mut mount = FuseMount::start(
        &env.lazyfs_bin,
        env.ns.name(),
        &format!("{local}/warm:t"),
        &mp,
        &flags,
        &env.logs.join("mount.log"),
    )?;
    mount.wait_mounted(Duration::from_secs(60))?;

    // Cold: every chunk comes from the registry (the kernel has seen nothing of the mount).
    let cold = timed_read(&mp).await?;
    eprintln!(
        "cold read through the mount: {:.2} s, {} B of tar",
        cold.time.as_secs_f64(),
        cold.bytes
    );

    let overlays = if args.no_overlay {
        Vec::new()
    } else {
        vec![
            (
                Variant::OverlayNative,
                Overlay::mount(&env.work, "ovl-native", &tree)?,
            ),
            (
                Variant::OverlayMount,
                Overlay::mount(&env.work, "ovl-lazyfs", &mp)?,
            ),
        ]
    };
    let mut variants: Vec<(Variant, PathBuf)> = vec![
        (Variant::Native, tree.clone()),
        (Variant::Mount, mp.clone()),
    ];
    variants.extend(overlays.iter().map(|(v, o)| (*v, o.target.clone())));

    // Untimed: warms every variant and checks each serves the native tree.
    let mut native_sum = None;
    for (v, dir) in &variants {
        let sum = verify_pass(dir).await?;
        eprintln!("  {}: sorted tar stream's sha256 {sum}", v.describe());
        match &native_sum {
            None => native_sum = Some(sum),
            Some(n) if *n == sum => {}
            Some(n) => {
                let diff = listing_diff(&tree, dir).await?;
                bail!(
                    "{} serves a different tree than the native directory ({sum} ≠ {n}); \
                     first differences of `tar -tv` (native, then {}):\n{diff}",
                    v.describe(),
                    v.name()
                )
            }
        }
    }

    let mut times: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut cpu: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut daemon_cpu: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut bytes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let daemon_cpu_now = |m: &FuseMount| m.daemons.0.first().and_then(|d| d.cpu_time());
    for round in 0..args.repeat {
        // Alternate the order so a trend in the machine's load favours no variant.
        let order: Vec<&(Variant, PathBuf)> = if round % 2 == 0 {
            variants.iter().collect()
        } else {
            variants.iter().rev().collect()
        };
        let mut line = format!("  round {round}:");
        for (v, dir) in order {
            let daemon_before = daemon_cpu_now(&mount);
            let r = timed_read(dir).await?;
            if let (Some(a), Some(b)) = (daemon_before, daemon_cpu_now(&mount)) {
                if matches!(v, Variant::Mount | Variant::OverlayMount) {
                    daemon_cpu
                        .entry(v.name())
                        .or_default()
                        .push(b.saturating_sub(a));
                }
            }
            cpu.entry(v.name()).or_default().push(r.cpu);
            if let Some(&b) = bytes.get(v.name()) {
                if b != r.bytes {
                    bail!("{}: tar gave {} B, earlier {b} B", v.describe(), r.bytes);
                }
            }
            bytes.insert(v.name(), r.bytes);
            times.entry(v.name()).or_default().push(r.time);
            line.push_str(&format!(" {} {:.3} s;", v.name(), r.time.as_secs_f64()));
        }
        eprintln!("{}", line.trim_end_matches(';'));
    }

    let requests = if args.no_request_count {
        BTreeMap::new()
    } else {
        count_requests(&variants, &mp).await
    };

    let report = Report {
        tree,
        repeat: args.repeat,
        convert,
        cold,
        bytes,
        times,
        cpu,
        daemon_cpu,
        requests,
    };
    report.print();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    }
    drop(overlays);
    mount.stop();
    drop(env);
    Ok(())
}

fn preflight(args: &WarmReadArgs) -> Result<()> {
    processes::require_root()?;
    for (prog, pkg) in [
        ("docker-registry", "docker-registry"),
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("curl", "curl"),
        ("bash", "bash"),
        ("tar", "tar"),
        ("wc", "coreutils"),
        ("sha256sum", "coreutils"),
    ] {
        processes::require_program(prog, pkg)?;
    }
    if !args.no_overlay && !filesystem_available("overlay") {
        bail!("overlayfs is not available (modprobe overlay), or pass --no-overlay");
    }
    Ok(())
}

fn filesystem_available(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

async fn setup(args: &WarmReadArgs) -> Result<Env> {
    let lazyfs_bin = processes::find_binary(args.bin_dir.as_deref(), "shoal-lazyfs")?;
    let work_dir = make_work_dir(args.work_parent.as_deref(), "warm-read")?;
    let work = work_dir.path().to_owned();
    let sweep = MountSweep(work.clone());
    eprintln!("work directory {}", work.display());
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let run = format!("wr{}", std::process::id() % 100_000);
    netns::remove_leftovers(&run)?;
    let ns = Namespace::create(&format!("{PREFIX}{run}-reg"))?;
    let mut registry = Daemons::default();
    start_registry(&work, &logs, ns.name(), &mut registry).await?;
    Ok(Env {
        _registry: registry,
        ns,
        _sweep: sweep,
        _work_dir: work_dir,
        work,
        logs,
        lazyfs_bin,
    })
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Timed {
    pub(crate) time: Duration,
    /// User + system CPU time of the command's processes.
    pub(crate) cpu: Duration,
    pub(crate) bytes: u64,
}

/// User + system CPU time of this process's reaped children so far. Only the timed command
/// is reaped while it runs (the daemons live on), so a difference is that command's.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `bash -c 'set -o pipefail; CMD'` in `dir`: its stdout, failing on any error in the pipe.
fn pipeline(dir: &Path, cmd: &str) -> Result<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {cmd}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{cmd}` in {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` in {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// [`READ_CMD`] in `dir`, timed from spawn to exit.
async fn timed_read(dir: &Path) -> Result<Timed> {
    let dir = dir.to_owned();
    blocking(move || {
        let cpu_before = children_cpu();
        let t = Instant::now();
        let out = pipeline(&dir, READ_CMD)?;
        let time = t.elapsed();
        let cpu = children_cpu().saturating_sub(cpu_before);
        let bytes = out
            .parse()
            .with_context(|| format!("`{READ_CMD}` printed {out:?}"))?;
        Ok(Timed { time, cpu, bytes })
    })
    .await
}

/// [`VERIFY_CMD`] in `dir`: the hash of the tree's sorted tar stream.
async fn verify_pass(dir: &Path) -> Result<String> {
    let dir = dir.to_owned();
    blocking(move || {
        let out = pipeline(&dir, VERIFY_CMD)?;
        out.split_whitespace()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("`{VERIFY_CMD}` printed nothing"))
    })
    .await
}

/// What tells two trees apart: the first lines in which their verbose tar listings differ.
async fn listing_diff(a: &Path, b: &Path) -> Result<String> {
    const LIST_CMD: &str = "tar --sort=name --mtime=@0 -cf - . | tar -tv --numeric-owner -f -";
    let (a, b) = (a.to_owned(), b.to_owned());
    blocking(move || {
        let (la, lb) = (pipeline(&a, LIST_CMD)?, pipeline(&b, LIST_CMD)?);
        let mut out = Vec::new();
        for (x, y) in la.lines().zip(lb.lines()).filter(|(x, y)| x != y).take(5) {
            out.push(format!("  - {x}\n  + {y}"));
        }
        let (na, nb) = (la.lines().count(), lb.lines().count());
        if na != nb {
            out.push(format!("  ({na} entries against {nb})"));
        }
        Ok(out.join("\n"))
    })
    .await
}

/// FUSE requests of one more warm pass over each variant that reads through the mount, by
/// opcode. Best effort: without tracefs the report says why and has no counts.
async fn count_requests(
    variants: &[(Variant, PathBuf)],
    mp: &Path,
) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    let mut all = BTreeMap::new();
    for (v, dir) in variants {
        if !matches!(v, Variant::Mount | Variant::OverlayMount) {
            continue;
        }
        let counted = async {
            let trace = FuseTrace::start(mp)?;
            timed_read(dir).await?;
            trace.finish()
        };
        match counted.await {
            Ok(counts) => {
                all.insert(v.name(), counts);
            }
            Err(e) => {
                eprintln!("  FUSE requests not counted ({}): {e:#}", v.describe());
                break;
            }
        }
    }
    all
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
}
