//! The plumbing of `shoal-bench lazyfs` (see `lazyfs_bench`): commands run inside a
//! namespace, the registry and peer daemons, FUSE mounts held in guards, directory sizes and
//! the containerd full-pull baseline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lazyfs_bench::REGISTRY_PORT;
use crate::lazyfs_tree::{self as tree, FileSpec};
use crate::netns::{self, Network, WORK_DIR_PREFIX};
use crate::processes::{self, Daemon, Daemons};

pub(crate) fn cmd(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    c
}

/// `nsenter --net=/run/netns/NS PROGRAM`: the namespace's network, the host's mounts.
pub(crate) fn nsenter(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion; fails with its stderr.
pub(crate) async fn run_ok(c: &mut Command) -> Result<()> {
    let desc = format!("{c:?}");
    let out = tokio::process::Command::from(std::mem::replace(c, Command::new("true")))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `shoal-bench-NAME-…` in `parent`, else in /dev/shm when it has 10 GiB free, else in the
/// temp dir.
pub(crate) fn make_work_dir(parent: Option<&Path>, name: &str) -> Result<tempfile::TempDir> {
    let parent = match parent {
        Some(p) => p.to_owned(),
        None if free_bytes(Path::new("/dev/shm")).unwrap_or(0) > 10 << 30 => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(&format!("{WORK_DIR_PREFIX}{name}-"))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))
}

pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct we pass; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        Some(s.f_bavail as u64 * s.f_frsize as u64)
    }
}

pub(crate) fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if ty.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

pub(crate) fn largest_blob(dir: &Path) -> Result<u64> {
    let mut max = 0;
    for entry in std::fs::read_dir(dir)? {
        max = max.max(entry?.metadata()?.len());
    }
    Ok(max)
}

/// Bytes the origin sent so far, read from its switch port.
pub(crate) async fn origin_sent(net: &Network, port: &str) -> Result<u64> {
    let counters = netns::port_counters(net.switch()).await?;
    Ok(counters
        .get(port)
        .with_context(|| format!("no counters for {port}"))?
        .sent)
}

pub(crate) async fn start_registry(
    work: &Path,
    logs: &Path,
    ns: &str,
    daemons: &mut Daemons,
) -> Result<()> {
    let config = crate::registry::prepare(work, &format!("0.0.0.0:{REGISTRY_PORT}"))?;
    let mut c = nsenter(ns, "docker-registry");
    c.arg("serve").arg(&config);
    daemons.push(Daemon::spawn(
        "docker-registry",
        c,
        &logs.join("registry.log"),
    )?);
    let url = format!("http://127.0.0.1:{REGISTRY_PORT}/v2/");
    wait_http(ns, &url, daemons, "docker-registry").await
}

/// Polls URL with curl inside the namespace until it answers 2xx.
pub(crate) async fn wait_http(
    ns: &str,
    url: &str,
    daemons: &mut Daemons,
    what: &str,
) -> Result<()> {
    let ns = ns.to_owned();
    let url = url.to_owned();
    processes::wait_until(what, Duration::from_secs(30), daemons, || {
        let mut c = nsenter(&ns, "curl");
        c.args(["-sf", "-o", "/dev/null", "--max-time", "2", &url]);
        let mut c = tokio::process::Command::from(c);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        async move { c.status().await.is_ok_and(|s| s.success()) }
    })
    .await
}

/// `shoal-peer run` (embedded supernode) in `ns` with a fresh data directory.
pub(crate) async fn start_peer(
    bin: &Path,
    ns: &str,
    work: &Path,
    tag: &str,
    insecure: &str,
) -> Result<Daemons> {
    let data = work.join(format!("peer-{tag}"));
    let mut c = nsenter(ns, bin);
    c.arg("run").arg("--data-dir").arg(&data).args([
        "--cache-size",
        "4GiB",
        "--insecure-registry",
        insecure,
    ]);
    let mut d = Daemons::default();
    d.push(Daemon::spawn(
        "shoal-peer",
        c,
        &work.join("logs").join(format!("peer-{tag}.log")),
    )?);
    wait_http(ns, "http://127.0.0.1:65003/readyz", &mut d, "shoal-peer").await?;
    Ok(d)
}

/// A FUSE mount held by a daemon: stopped with SIGTERM (which unmounts), then
/// `umount -l` if it is still there.
pub(crate) struct FuseMount {
    pub(crate) daemons: Daemons,
    pub(crate) mp: PathBuf,
}

impl FuseMount {
    pub(crate) fn start(
        bin: &Path,
        ns: &str,
        image: &str,
        mp: &Path,
        flags: &[String],
        log: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(mp)?;
        let mut c = nsenter(ns, bin);
        c.arg("mount").arg(image).arg(mp).args(flags);
        let mut daemons = Daemons::default();
        daemons.push(Daemon::spawn("shoal-lazyfs mount", c, log)?);
        Ok(FuseMount {
            daemons,
            mp: mp.to_owned(),
        })
    }

    pub(crate) fn wait_mounted(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !is_mounted(&self.mp) {
            self.daemons.check_alive()?;
            if Instant::now() > deadline {
                bail!("{} not mounted after {timeout:?}", self.mp.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub(crate) fn stop(&mut self) {
        self.daemons.stop();
        if is_mounted(&self.mp) {
            umount_lazy(&self.mp);
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .collect()
}

pub(crate) fn is_mounted(mp: &Path) -> bool {
    mounts().iter().any(|m| m == mp)
}

pub(crate) fn umount_lazy(mp: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// On drop, detaches every mount under the work directory (deepest first).
pub(crate) struct MountSweep(pub(crate) PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        let mut under: Vec<PathBuf> = mounts()
            .into_iter()
            .filter(|m| m.starts_with(&self.0))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in under {
            umount_lazy(&m);
        }
    }
}

/// Reads `f` under `mp` until it succeeds (the mount comes up meanwhile) and checks its
/// bytes; returns the time since `start`.
pub(crate) fn poll_read(mp: &Path, f: &FileSpec, start: Instant) -> Result<Duration> {
    let path = mp.join(&f.path);
    loop {
        if std::fs::metadata(&path).is_ok() {
            tree::verify_file(mp, f)?;
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{} not readable after 120 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(crate) fn poll_stat(path: &Path, start: Instant) -> Result<Duration> {
    loop {
        if std::fs::metadata(path).is_ok() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{} not there after 120 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// containerd 1.6 in the node namespace pulls (and unpacks, overlayfs snapshotter) the
/// regular image straight from the registry; returns the time until the pull command
/// returned, after checking that `first` exists in an unpacked snapshot.
pub(crate) async fn containerd_pull(
    work: &Path,
    logs: &Path,
    ns: &str,
    registry_host: &str,
    first: &FileSpec,
) -> Result<Duration> {
    let dir = work.join("containerd");
    let certs = dir.join("certs").join(registry_host);
    std::fs::create_dir_all(&certs)?;
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"http://{registry_host}\"\n\n[host.\"http://{registry_host}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    let sock = dir.join("sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            dir.join("root").display(),
            dir.join("state").display(),
            sock.display()
        ),
    )?;
    let mut daemons = Daemons::default();
    let mut c = nsenter(ns, "containerd");
    c.arg("--config").arg(&config);
    daemons.push(Daemon::spawn(
        "containerd",
        c,
        &logs.join("containerd.log"),
    )?);
    let sock_s = sock.display().to_string();
    processes::wait_until("containerd", Duration::from_secs(30), &mut daemons, || {
        let mut c = tokio::process::Command::new("ctr");
        c.args(["--address", &sock_s, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        async move { c.status().await.is_ok_and(|s| s.success()) }
    })
    .await?;
    let t = Instant::now();
    run_ok(
        nsenter(ns, "ctr")
            .args(["--address", &sock_s, "images", "pull", "--hosts-dir"])
            .arg(dir.join("certs"))
            .arg(format!("{registry_host}/full:t")),
    )
    .await?;
    let elapsed = t.elapsed();
    let snaps = dir.join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut found = false;
    for entry in std::fs::read_dir(&snaps).with_context(|| format!("{}", snaps.display()))? {
        let fs_dir = entry?.path().join("fs");
        if fs_dir.join(&first.path).is_file() {
            tree::verify_file(&fs_dir, first)?;
            found = true;
        }
    }
    if !found {
        bail!(
            "containerd pulled, but {} is in no snapshot",
            first.path.display()
        );
    }
    daemons.stop();
    // Unpacking leaves no mounts, but be sure before the directory is removed.
    for m in mounts().into_iter().filter(|m| m.starts_with(&dir)) {
        umount_lazy(&m);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(elapsed)
}
