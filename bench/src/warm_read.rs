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
use serde_json::{json, Value};

use crate::lazyfs_bench::{mount_flags, REGISTRY_PORT};
use crate::lazyfs_env::{make_work_dir, start_registry, umount_lazy, FuseMount, MountSweep};
use crate::lazyfs_images::convert_dir;
use crate::lazyfs_report::{mbps, median, met};
use crate::netns::{self, Namespace, PREFIX};
use crate::processes::{self, Daemons};

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
const TARGET_RATIO: f64 = 1.3;
/// The command every variant is timed with, in the tree's root.
const READ_CMD: &str = "tar -cf - . | wc -c";
/// What the verification pass hashes: the same tree gives the same stream whatever the
/// directory order. Modification times are left out: `shoal-lazyfs convert` drops them
/// unless told otherwise, so that equal trees give equal images.
const VERIFY_CMD: &str = "tar --sort=name --mtime=@0 -cf - . | sha256sum";

/// One way of reading the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Native,
    Mount,
    OverlayNative,
    OverlayMount,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Native => "native",
            Variant::Mount => "lazyfs",
            Variant::OverlayNative => "overlay_native",
            Variant::OverlayMount => "overlay_lazyfs",
        }
    }

    fn describe(self) -> &'static str {
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
struct Timed {
    time: Duration,
    /// User + system CPU time of the command's processes.
    cpu: Duration,
    bytes: u64,
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

/// A tracefs instance of its own (so nothing else's tracing is touched) recording
/// `fuse:fuse_request_send` for one FUSE connection. Removed on drop.
struct FuseTrace {
    dir: PathBuf,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const SEND_EVENT: &str = "events/fuse/fuse_request_send";

impl FuseTrace {
    fn start(mp: &Path) -> Result<FuseTrace> {
        use std::os::unix::fs::MetadataExt;
        let root = Path::new(TRACEFS);
        if !root.join(SEND_EVENT).is_dir() {
            bail!(
                "no {TRACEFS}/{SEND_EVENT} (tracefs not mounted, or a kernel older than 6.15): \
                 `mount -t tracefs nodev {TRACEFS}` if the kernel has it"
            );
        }
        let dir = root
            .join("instances")
            .join(format!("shoal-bench-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir(&dir).ok();
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let trace = FuseTrace { dir };
        // Room for a pass's worth of events; a full buffer is detected in `finish`.
        trace.write("buffer_size_kb", "16384")?;
        // The event's `connection` is the kernel's dev_t of the mount (MKDEV: 20 minor bits).
        let dev = std::fs::metadata(mp)?.dev();
        let kdev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
        trace.write(
            &format!("{SEND_EVENT}/filter"),
            &format!("connection == {kdev}"),
        )?;
        trace.write(&format!("{SEND_EVENT}/enable"), "1")?;
        Ok(trace)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }

    /// Stops recording; the counts by opcode name.
    fn finish(self) -> Result<BTreeMap<String, u64>> {
        self.write(&format!("{SEND_EVENT}/enable"), "0")?;
        let text = std::fs::read_to_string(self.dir.join("trace"))?;
        parse_trace(&text)
    }
}

impl Drop for FuseTrace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join(SEND_EVENT).join("enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Counts `opcode N (NAME)` of each event line; fails when the buffer overflowed (the
/// header's entries-in-buffer ≠ entries-written).
fn parse_trace(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# entries-in-buffer/entries-written: ") {
            let mut nums = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty());
            if let (Some(kept), Some(written)) = (nums.next(), nums.next()) {
                if kept != written {
                    bail!("the trace buffer overflowed: {kept} of {written} events kept");
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((_, after)) = line.split_once(" opcode ") else {
            continue;
        };
        let name = after
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map_or("?", |(n, _)| n);
        *counts
            .entry(name.trim_start_matches("FUSE_").to_owned())
            .or_insert(0) += 1;
    }
    Ok(counts)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
}

struct Report {
    tree: PathBuf,
    repeat: u32,
    convert: Duration,
    cold: Timed,
    /// Tar bytes per variant.
    bytes: BTreeMap<&'static str, u64>,
    times: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU time of the reading commands, per variant.
    cpu: BTreeMap<&'static str, Vec<Duration>>,
    /// CPU time of the mount's daemon during each pass through it.
    daemon_cpu: BTreeMap<&'static str, Vec<Duration>>,
    /// FUSE requests of one warm pass, per variant, by opcode.
    requests: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl Report {
    fn median(&self, v: Variant) -> Option<Duration> {
        self.times.get(v.name()).map(|t| median(t))
    }

    /// Median of `v` ÷ median of `base`.
    fn ratio(&self, v: Variant, base: Variant) -> Option<f64> {
        let (a, b) = (self.median(v)?, self.median(base)?);
        Some(a.as_secs_f64() / b.as_secs_f64().max(1e-9))
    }

    fn print(&self) {
        let native_bytes = self.bytes.get("native").copied().unwrap_or(0);
        println!(
            "warm reads of {} ({} B of tar), `{READ_CMD}`, median of {}",
            self.tree.display(),
            native_bytes,
            self.repeat
        );
        println!(
            "  convert {:.1} s; cold read through the mount {:.2} s ({:.0} MB/s)",
            self.convert.as_secs_f64(),
            self.cold.time.as_secs_f64(),
            mbps(self.cold.bytes, self.cold.time)
        );
        for v in [
            Variant::Native,
            Variant::Mount,
            Variant::OverlayNative,
            Variant::OverlayMount,
        ] {
            let (Some(times), Some(m)) = (self.times.get(v.name()), self.median(v)) else {
                continue;
            };
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.3}", t.as_secs_f64()))
                .collect();
            println!(
                "  {:<22} median {:.3} s ({:.0} MB/s)  [{}]",
                v.describe(),
                m.as_secs_f64(),
                mbps(native_bytes, m),
                all.join(" ")
            );
            let cpu = self.cpu.get(v.name()).map_or(Duration::ZERO, |c| median(c));
            let daemon = match self.daemon_cpu.get(v.name()) {
                Some(d) => format!(", daemon {:.3} s", median(d).as_secs_f64()),
                None => String::new(),
            };
            println!(
                "  {:<22} CPU per pass: tar + wc {:.3} s{daemon}",
                "",
                cpu.as_secs_f64()
            );
        }
        if let Some(r) = self.ratio(Variant::Mount, Variant::Native) {
            println!(
                "  lazyfs ÷ native: {r:.2} × (target ≤ {TARGET_RATIO}: {})",
                met(r <= TARGET_RATIO)
            );
        }
        if let Some(r) = self.ratio(Variant::OverlayMount, Variant::Native) {
            println!("  overlay over lazyfs ÷ native: {r:.2} ×");
        }
        if let Some(r) = self.ratio(Variant::OverlayMount, Variant::OverlayNative) {
            println!("  overlay over lazyfs ÷ overlay over native: {r:.2} ×");
        }
        for (v, counts) in &self.requests {
            let total: u64 = counts.values().sum();
            let list: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
            println!(
                "  FUSE requests of a warm {v} pass: {total}{}{}",
                if list.is_empty() { "" } else { ": " },
                list.join(", ")
            );
        }
    }

    fn json(&self) -> Value {
        let secs = |d: Duration| d.as_secs_f64();
        let mut variants = serde_json::Map::new();
        for (name, times) in &self.times {
            variants.insert(
                (*name).to_owned(),
                json!({
                    "seconds": times.iter().map(|t| secs(*t)).collect::<Vec<_>>(),
                    "median_seconds": secs(median(times)),
                    "median_cpu_seconds": self.cpu.get(name).map(|c| secs(median(c))),
                    "median_daemon_cpu_seconds":
                        self.daemon_cpu.get(name).map(|c| secs(median(c))),
                    "tar_bytes": self.bytes.get(name),
                }),
            );
        }
        json!({
            "tree": self.tree.display().to_string(),
            "command": READ_CMD,
            "repeat": self.repeat,
            "convert_seconds": secs(self.convert),
            "cold": { "seconds": secs(self.cold.time), "tar_bytes": self.cold.bytes },
            "warm": variants,
            "ratio_lazyfs_native": self.ratio(Variant::Mount, Variant::Native),
            "ratio_overlay_lazyfs_native": self.ratio(Variant::OverlayMount, Variant::Native),
            "ratio_overlay_lazyfs_overlay_native":
                self.ratio(Variant::OverlayMount, Variant::OverlayNative),
            "target_ratio": TARGET_RATIO,
            "fuse_requests": self.requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_are_counted_by_opcode() {
        let text = "\
# tracer: nop
#
# entries-in-buffer/entries-written: 3/3   #P:2
#
      tar-1234    [001] .....   10.000001: fuse_request_send: connection 77 req 10 opcode 14 (FUSE_OPEN) len 48
      tar-1234    [001] .....   10.000002: fuse_request_send: connection 77 req 12 opcode 25 (FUSE_FLUSH) len 64
      tar-1234    [000] .....   10.000003: fuse_request_send: connection 77 req 14 opcode 14 (FUSE_OPEN) len 48
";
        let counts = parse_trace(text).expect("a complete trace");
        assert_eq!(counts.get("OPEN"), Some(&2));
        assert_eq!(counts.get("FLUSH"), Some(&1));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn an_overflowed_trace_is_an_error() {
        let text = "# entries-in-buffer/entries-written: 10/12   #P:2\n";
        assert!(parse_trace(text).is_err());
    }
}
