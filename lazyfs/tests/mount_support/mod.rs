//! Real processes for the mount tests, on the test kit (`docker-registry`, the counting and
//! HTTP-logging proxies, kill-on-drop processes): `shoal-peer` and `shoal-lazyfs mount`
//! itself. Every handle kills its process (and the mount handle detaches its mountpoint) on
//! drop, also when a test panics. [`swarm`]: a supernode and peers registered with it.
#![allow(dead_code)]

pub mod fixture;
pub mod swarm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// Each test file uses a different subset.
#[allow(unused_imports)]
pub use shoal_testkit::proxies::{Exchange, HttpLog};
#[allow(unused_imports)]
pub use shoal_testkit::{
    free_port, metric_sum, CountingProxy, Daemon as Proc, Registry, RegistryAuth,
};

/// How long a daemon may take to answer its readiness URL.
pub const READY: Duration = Duration::from_secs(60);

/// Run `f` on a thread; panic if it does not finish within `limit` (a hang fails the test).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// The body `url` answers a `GET` with.
pub fn http_get(url: &str) -> String {
    match shoal_testkit::http_get(url) {
        Some((_, body)) => body,
        None => panic!("GET {url}: no answer"),
    }
}

pub fn peer_bin() -> PathBuf {
    shoal_testkit::workspace_bin("shoal-peer")
}

pub struct PeerProc {
    pub proc_: Proc,
    pub mirror: String,
    pub metrics: String,
}

impl PeerProc {
    /// A single-node peer (embedded supernode) with a 64 MiB cache, reaching `registry` over
    /// plain http; data in `dir/peer-data`, log in `dir/peer.log`.
    pub fn start(dir: &Path, registry: &str) -> PeerProc {
        Self::launch(dir, "peer", registry, "64MiB", &[])
    }

    /// A peer named `name` (data in `dir/NAME-data`, log in `dir/NAME.log`) reaching
    /// `registry` over plain http; `extra`: more `shoal-peer run` flags. Waits for `/readyz`.
    fn launch(dir: &Path, name: &str, registry: &str, cache: &str, extra: &[&str]) -> PeerProc {
        let (m, p2p, met) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(peer_bin());
        cmd.args(["run", "--data-dir"])
            .arg(dir.join(format!("{name}-data")))
            .args(["--cache-size", cache])
            .args(["--mirror-listen", &format!("127.0.0.1:{m}")])
            .args(["--p2p-listen", &format!("127.0.0.1:{p2p}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{met}")])
            .args(["--insecure-registry", registry])
            .args(extra);
        let mut proc_ = Proc::spawn_logged(name, cmd, &dir.join(format!("{name}.log")));
        let metrics = format!("http://127.0.0.1:{met}");
        proc_.wait_http(&format!("{metrics}/readyz"), &[200], READY);
        PeerProc {
            proc_,
            mirror: format!("http://127.0.0.1:{m}"),
            metrics,
        }
    }
}

pub fn is_mounted(mp: &Path) -> bool {
    let want = mp.to_string_lossy().into_owned();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// `umount -l`.
pub fn detach(mp: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mp)
        .stderr(Stdio::null())
        .status();
}

/// A running `shoal-lazyfs mount`.
pub struct MountProc {
    pub proc_: Proc,
    pub mp: PathBuf,
    pub metrics: String,
}

impl MountProc {
    /// Mount `image` at `mp` with the common flags plus `extra`; waits for the mount.
    pub fn start(dir: &Path, name: &str, image: &str, mp: &Path, extra: &[&str]) -> MountProc {
        Self::start_env(dir, name, image, mp, extra, &[])
    }

    /// [`MountProc::start`] with extra environment variables for the mount process.
    pub fn start_env(
        dir: &Path,
        name: &str,
        image: &str,
        mp: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> MountProc {
        fs::create_dir_all(mp).unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-lazyfs"));
        cmd.arg("mount")
            .arg(image)
            .arg(mp)
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().copied())
            .env("SHOAL_LOG", "shoal_lazyfs=info");
        let proc_ = Proc::spawn_logged(name, cmd, &dir.join(format!("{name}.log")));
        let mut m = MountProc {
            proc_,
            mp: mp.to_path_buf(),
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        };
        let mp = m.mp.clone();
        m.proc_
            .wait_until("the mount", Duration::from_secs(60), || is_mounted(&mp));
        m
    }

    pub fn scrape(&self) -> String {
        http_get(&self.metrics)
    }

    /// Sum of a metric's samples whose line starts with `prefix` (name plus labels).
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_sum(&self.scrape(), prefix)
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        match self
            .proc_
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        {
            Some(st) => st,
            None => panic!(
                "mount did not exit after SIGTERM:\n{}",
                self.proc_.log_text()
            ),
        }
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if is_mounted(&self.mp) {
            detach(&self.mp);
        }
        // Dropping `proc_` then kills it, printing its log tail if the test panicked.
    }
}

/// An overlay mount removed on drop.
pub struct Overlay(pub PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        detach(&self.0);
    }
}
