//! Child processes: long-running daemons (registry, supernodes, peers) held by a guard that
//! stops them on drop, the binaries under test, prerequisites and termination signals.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Makes the child receive SIGKILL when shoal-bench dies, even by SIGKILL: nothing outlives
/// the benchmark. (`ip netns exec` keeps the setting across its exec of the real program.)
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn signal_pids(pids: &[i32], signal: libc::c_int) {
    for &pid in pids {
        if pid > 0 {
            // SAFETY: plain syscall; a stale pid only yields ESRCH.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// A running daemon whose output goes to a log file.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of its log) when the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// Resident memory in bytes (`VmRSS`), when the process is still there.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }
}

/// Memory figures of a process from `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcMemory {
    /// `VmRSS`: resident set, = anon + file + shmem.
    pub rss_bytes: u64,
    /// `RssAnon`: heap, stacks and other private memory.
    pub anon_bytes: u64,
    /// `RssFile`: resident file-backed mappings (the executable, mmapped files).
    pub file_bytes: u64,
    /// `RssShmem`: resident shared memory (and tmpfs mappings).
    pub shmem_bytes: u64,
    /// `VmHWM`: the largest `VmRSS` since the process started.
    pub hwm_bytes: u64,
}

impl ProcMemory {
    /// Reads `/proc/PID/status`; `None` once the process is gone.
    pub fn of_pid(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Self::parse(&status)
    }

    /// Parses the text of a `/proc/PID/status` file; `None` without a `VmRSS` line.
    pub fn parse(status: &str) -> Option<Self> {
        let mut m = ProcMemory::default();
        let mut has_rss = false;
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let field = match key {
                "VmRSS" => {
                    has_rss = true;
                    &mut m.rss_bytes
                }
                "RssAnon" => &mut m.anon_bytes,
                "RssFile" => &mut m.file_bytes,
                "RssShmem" => &mut m.shmem_bytes,
                "VmHWM" => &mut m.hwm_bytes,
                _ => continue,
            };
            // The kernel prints these as "<n> kB" (KiB).
            let kib: u64 = value.split_whitespace().next()?.parse().ok()?;
            *field = kib * 1024;
        }
        has_rss.then_some(m)
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (the test kit's, never handed out twice by
/// this process; a later bind by someone else could still take one, which is rare enough on
/// a test machine).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    Ok(std::array::from_fn(|_| shoal_testkit::free_port()))
}

/// Daemons stopped together on drop: SIGTERM to all, up to 3 s of grace, then SIGKILL.
#[derive(Debug, Default)]
pub struct Daemons(pub Vec<Daemon>);

impl Daemons {
    pub fn push(&mut self, d: Daemon) -> &mut Daemon {
        self.0.push(d);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.0.iter_mut().try_for_each(Daemon::check_alive)
    }

    pub fn stop(&mut self) {
        let pids: Vec<i32> = self
            .0
            .iter_mut()
            .filter_map(|d| match d.child.try_wait() {
                Ok(None) => i32::try_from(d.pid()).ok(),
                _ => None,
            })
            .collect();
        signal_pids(&pids, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in &mut self.0 {
            loop {
                match d.child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = d.child.kill();
                        let _ = d.child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (at most 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the binaries under test live: `--bin-dir`, else beside this executable.
pub fn find_binary(bin_dir: Option<&Path>, name: &str) -> Result<PathBuf> {
    let dir = match bin_dir {
        Some(d) => d.to_owned(),
        None => {
            let exe = std::env::current_exe().context("locating shoal-bench itself")?;
            exe.parent()
                .map(Path::to_owned)
                .context("shoal-bench has no parent directory")?
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it first (`cargo build --release -p shoal-peer -p shoal-supernode`, \
             or --bin-dir DIR)",
            path.display()
        );
    }
    Ok(path)
}

pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating shoal-bench itself")
}

/// Fails with a clear message unless the benchmark can create namespaces.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the cluster benchmark needs root (network namespaces, tc): run it with sudo");
    }
    Ok(())
}

/// Fails unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{program}` not found on PATH: install the Debian package {package}")
        })
}

/// Handlers for SIGINT, SIGTERM and SIGHUP, installed up front (they also override an
/// inherited "ignore", as scripts give background jobs for SIGINT).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing a SIGHUP handler")?,
        })
    }

    /// The next signal's name and the conventional exit code (128 + number).
    pub async fn recv(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("interrupted", 130),
            _ = self.term.recv() => ("terminated", 143),
            _ = self.hup.recv() => ("hung up", 129),
        }
    }
}

/// Polls `probe` every 200 ms until it is true, failing after `timeout` or as soon as one of
/// `daemons` exits.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    daemons: &mut Daemons,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        daemons.check_alive()?;
        if Instant::now() >= deadline {
            bail!("{what}: not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a benchmark client until `deadline` (killing it then): `Ok` when it exited 0,
/// else what went wrong.
pub async fn wait_client(
    child: anyhow::Result<tokio::process::Child>,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let mut child = child.map_err(|e| format!("{e:#}"))?;
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exited with {status}")),
        Ok(Err(e)) => Err(format!("wait failed: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err("timed out".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_of_missing_and_short_logs() {
        assert_eq!(log_tail(Path::new("/nonexistent/x.log"), 3), "(no log)");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&p, 2), "c\nd");
        assert_eq!(log_tail(&p, 10), "a\nb\nc\nd");
    }

    #[test]
    fn proc_memory() {
        let text = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nRssAnon:\t 512 kB\n\
                    RssFile:\t 500 kB\nRssShmem:\t 12 kB\nThreads:\t3\n";
        let m = ProcMemory::parse(text).unwrap();
        assert_eq!(
            m,
            ProcMemory {
                rss_bytes: 1 << 20,
                anon_bytes: 512 << 10,
                file_bytes: 500 << 10,
                shmem_bytes: 12 << 10,
                hwm_bytes: 2 << 20,
            }
        );
        assert_eq!(ProcMemory::parse("Name:\tkthread\n"), None);
        let me = ProcMemory::of_pid(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.hwm_bytes >= me.rss_bytes, "{me:?}");
        let ports = free_ports::<3>().unwrap();
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    }

    #[test]
    fn daemon_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let mut ds = Daemons::default();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let d = ds.push(Daemon::spawn("sleeper", cmd, &dir.path().join("s.log")).unwrap());
        d.check_alive().unwrap();
        assert!(d.rss_bytes().is_some());
        assert!(d.cpu_time().is_some());
        let pid = d.pid();
        ds.stop();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom; exit 3"]);
        let d = ds.push(Daemon::spawn("failer", cmd, &dir.path().join("f.log")).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        let err = d.check_alive().unwrap_err().to_string();
        assert!(
            err.contains("failer exited") && err.contains("boom"),
            "{err}"
        );
    }
}
