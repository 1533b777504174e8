//! `shoal-lazyfs snapshotter` as a process: containerd's `[proxy_plugins.shoal]`, listening
//! on a unix socket, keeping its snapshots (and lazyfs FUSE mounts) under `--root`.
//! Dropping it sends SIGTERM, then SIGKILL if it lingers, and detaches mounts left under
//! its root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_testkit::Daemon;

use super::{mounts, tail};
use crate::mount_support::free_port;

pub fn snapshotter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal-lazyfs"))
}

/// Whether this build of `shoal-lazyfs` has the `snapshotter` subcommand.
pub fn snapshotter_available() -> bool {
    Command::new(snapshotter_bin())
        .args(["snapshotter", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Settings of a test's snapshotter beyond the kit's fixed ones.
#[derive(Clone, Debug, Default)]
pub struct SnapshotterOptions {
    /// `--mount-timeout` (the snapshotter's default when None).
    pub mount_timeout: Option<Duration>,
}

/// The line [`Snapshotter::restart`] writes into the log before starting it again.
const RESTART_MARK: &str = "===== test: snapshotter restarted =====";

pub struct Snapshotter {
    child: Daemon,
    cmd_args: Vec<std::ffi::OsString>,
    pub sock: PathBuf,
    pub root: PathBuf,
    pub cache_dir: PathBuf,
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT/metrics` (`--metrics-listen`).
    pub metrics_url: String,
}

impl Snapshotter {
    /// Starts it with socket `dir/shoal-snapshotter.sock`, root `dir/shoal-root`, cache
    /// `dir/shoal-cache`, metrics on a free loopback port, reading through `peer`; waits
    /// for the socket.
    pub fn start(
        dir: &Path,
        peer: &str,
        insecure_registry: &str,
        opts: &SnapshotterOptions,
    ) -> Snapshotter {
        let sock = dir.join("shoal-snapshotter.sock");
        let root = dir.join("shoal-root");
        let cache_dir = dir.join("shoal-cache");
        let log = dir.join("shoal-snapshotter.log");
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<std::ffi::OsString> = vec!["snapshotter".into(), "--address".into()];
        args.push(sock.clone().into());
        args.push("--root".into());
        args.push(root.clone().into());
        args.extend(["--peer".into(), peer.into(), "--cache-dir".into()]);
        args.push(cache_dir.clone().into());
        args.extend([
            "--insecure-registry".into(),
            insecure_registry.into(),
            "--metrics-listen".into(),
            metrics.clone().into(),
        ]);
        if let Some(t) = opts.mount_timeout {
            args.extend([
                "--mount-timeout".into(),
                format!("{}ms", t.as_millis()).into(),
            ]);
        }
        let child = spawn(&args, &log);
        let mut s = Snapshotter {
            child,
            cmd_args: args,
            sock,
            root,
            cache_dir,
            log,
            metrics_url: format!("http://{metrics}/metrics"),
        };
        s.wait_ready();
        s
    }

    /// Waits (up to 2 min: restoring lazy mounts comes first) for the socket.
    fn wait_ready(&mut self) {
        let sock = self.sock.clone();
        self.child
            .wait_until("its socket", Duration::from_secs(120), || sock.exists());
    }

    /// SIGKILL, as a crash or an OOM kill would end it; its mount processes live on.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// SIGTERM and wait for the exit (panics after 30 s).
    pub fn stop(&mut self) {
        if self
            .child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(30))
            .is_none()
        {
            panic!(
                "snapshotter did not exit within 30 s of SIGTERM\n{}",
                self.log_tail(40)
            );
        }
    }

    /// Starts it again, exactly as before (same socket, root, cache, metrics port); its log
    /// goes on in the same file. Call after [`Self::kill9`] or [`Self::stop`].
    pub fn restart(&mut self) {
        assert!(!self.alive(), "restart: the snapshotter is still running");
        // A killed snapshotter leaves its socket behind: the new one's shows it is up.
        let _ = fs::remove_file(&self.sock);
        {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&self.log).unwrap();
            let _ = writeln!(f, "{RESTART_MARK}");
        }
        self.child = spawn(&self.cmd_args, &self.log);
        self.wait_ready();
    }

    /// Its `/metrics` text (its own families and its mounts').
    pub fn scrape(&self) -> String {
        crate::mount_support::http_get(&self.metrics_url)
    }

    /// The pids of `shoal-lazyfs mount` processes serving a mountpoint under its root.
    pub fn mount_pids(&self) -> Vec<i32> {
        let snapshots = self.root.join("snapshots");
        processes()
            .into_iter()
            .filter(|(_, args)| {
                args.iter().any(|a| a == "mount")
                    && args.iter().any(|a| Path::new(a).starts_with(&snapshots))
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The pid of the mount process serving `mountpoint`.
    pub fn mount_pid_of(&self, mountpoint: &Path) -> Option<i32> {
        processes()
            .into_iter()
            .find(|(_, args)| {
                args.iter().any(|a| a == "mount") && args.iter().any(|a| Path::new(a) == mountpoint)
            })
            .map(|(pid, _)| pid)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Its log since the last [`Self::restart`] (all of it when never restarted).
    pub fn log_since_restart(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        match text.rfind(RESTART_MARK) {
            Some(i) => text[i + RESTART_MARK.len()..].to_string(),
            None => text,
        }
    }

    /// The tails of the lazy mounts' logs (`ROOT/snapshots/ID/mount.log`).
    pub fn mount_log_tails(&self, lines: usize) -> String {
        let mut logs: Vec<PathBuf> = fs::read_dir(self.root.join("snapshots"))
            .map(|d| d.flatten().map(|e| e.path().join("mount.log")).collect())
            .unwrap_or_default();
        logs.retain(|p| p.exists());
        logs.sort();
        logs.iter()
            .map(|p| tail(p, lines))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn alive(&mut self) -> bool {
        self.child.is_running()
    }

    /// The entries of `root/snapshots` (none after the last snapshot is removed).
    pub fn snapshot_dirs(&self) -> Vec<String> {
        entries(&self.root.join("snapshots"))
    }

    /// The entries of the cache dir (a lazy mount's chunk cache goes with its snapshot).
    pub fn cache_dirs(&self) -> Vec<String> {
        entries(&self.cache_dir)
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}\n{}", self.log_tail(60), self.mount_log_tails(20));
        }
        if self.child.is_running() {
            self.child
                .signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
        }
        self.child.kill();
        // Lazy mounts run in processes of their own that outlive the snapshotter; detaching
        // a mount ends its process, a kill makes sure.
        mounts::detach_all_under(&self.root);
        for pid in pids_with_arg_under(&self.root) {
            // SAFETY: kill(2) on a mount process serving a mountpoint under our temp root.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The snapshotter with debug logs, appended to `log` (a restart goes on in the same file).
fn spawn(args: &[std::ffi::OsString], log: &Path) -> Daemon {
    let mut cmd = Command::new(snapshotter_bin());
    cmd.args(args).env("SHOAL_LOG", "shoal_lazyfs=debug");
    Daemon::spawn_logged("shoal-lazyfs snapshotter", cmd, log)
}

/// Every process's pid and arguments.
fn processes() -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    out
}

/// A directory's entry names; a missing directory has none.
fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes with an argument naming a path under `dir` (the snapshotter's mount processes).
fn pids_with_arg_under(dir: &Path) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| Path::new(a).starts_with(dir)))
        .map(|(pid, _)| pid)
        .collect()
}
