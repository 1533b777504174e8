//! Lazy mounts for the snapshotter, each served by its own `shoal-lazyfs mount` process.
//!
//! Why a process per mount and not a thread of the snapshotter: a container's root overlay
//! holds the FUSE superblock of its lazy lower layer, and that superblock dies with the
//! process serving it. A remount after a snapshotter restart cannot repair a running
//! container's overlay, so the mount must outlive the snapshotter. The mount processes run
//! in their own session (no signal of the snapshotter's terminal or process group reaches
//! them) and are found again after a restart by their mountpoints; unmounting a mountpoint
//! is what ends its process.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::mount::PrefetchMode;

/// How the snapshotter starts lazy mounts.
#[derive(Clone, Debug)]
pub struct Mounter {
    /// The `shoal-lazyfs` executable (normally the running one).
    pub exe: PathBuf,
    /// The local peer's mirror; "" reads from the registry directly.
    pub peer: String,
    pub insecure: Vec<String>,
    /// Disk cache quota of each mount, in bytes.
    pub cache_size: u64,
    pub prefetch: PrefetchMode,
    /// How long a mount may take to appear before Prepare fails.
    pub start_timeout: Duration,
}

/// A mount the snapshotter asked for: where, and its own files.
pub struct LazyMount<'a> {
    /// `HOST/REPO@sha256:…`.
    pub image: &'a str,
    pub mountpoint: &'a Path,
    pub cache_dir: &'a Path,
    pub log: &'a Path,
}

impl Mounter {
    /// Starts a mount process and waits until the kernel shows the mount. On failure the
    /// error carries the end of the mount's log, which is what containerd and the pod's
    /// events will show.
    pub fn mount(&self, m: &LazyMount<'_>) -> Result<SocketAddr> {
        let metrics = free_local_port()?;
        let log = std::fs::File::create(m.log).ctx(|| format!("creating {}", m.log.display()))?;
        let log_err = log
            .try_clone()
            .ctx(|| format!("opening {}", m.log.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("mount")
            .arg(m.image)
            .arg(m.mountpoint)
            .arg("--peer")
            .arg(&self.peer)
            .arg("--cache-dir")
            .arg(m.cache_dir)
            .arg("--cache-size")
            .arg(self.cache_size.to_string())
            .arg("--prefetch")
            .arg(self.prefetch.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            // Containers run as any user, and overlayfs checks the caller's permissions.
            .arg("--allow-other");
        for host in &self.insecure {
            cmd.arg("--insecure-registry").arg(host);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .ctx(|| format!("starting {} mount", self.exe.display()))?;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if is_mounted(m.mountpoint)? {
                // Reap the process whenever it ends, so it never lingers as a zombie.
                std::thread::spawn(move || child.wait());
                return Ok(metrics);
            }
            let exited = child
                .try_wait()
                .ctx(|| "waiting for the mount process".into())?;
            if exited.is_some() || Instant::now() >= deadline {
                if exited.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let why = match exited {
                    Some(status) => format!("the mount process exited ({status})"),
                    None => format!("no mount after {:?}", self.start_timeout),
                };
                return Err(Error::Mount {
                    mountpoint: m.mountpoint.display().to_string(),
                    context: format!("lazy mount of {}: {why}: {}", m.image, log_tail(m.log)),
                    source: std::io::Error::other("mount did not start"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Detaches the mount at `mountpoint` (its process then exits). Not mounted is fine.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    if !is_mounted(mountpoint)? {
        return Ok(());
    }
    crate::mount::detach(mountpoint).map_err(|source| Error::Mount {
        mountpoint: mountpoint.display().to_string(),
        context: "unmounting".into(),
        source,
    })
}

/// Whether something is mounted exactly at `path`, by the mount table (a stat would hang
/// or fail on a FUSE mount whose process died).
pub fn is_mounted(path: &Path) -> Result<bool> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// Every mount point of this mount namespace, unescaped.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "reading /proc/self/mountinfo".into())?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// Whether a FUSE mount still answers (its process may have died, leaving a mount that
/// fails every call with ENOTCONN). `statfs` always reaches the serving process: the kernel
/// caches attributes and lookups of the mount (long TTLs), never filesystem statistics.
pub fn is_alive(mountpoint: &Path) -> bool {
    rustix::fs::statfs(mountpoint).is_ok()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let digit = |k: usize| u32::from(b[i + k] - b'0');
            let v = digit(1) * 64 + digit(2) * 8 + digit(3);
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn free_local_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").ctx(|| "choosing a metrics port".into())?;
    l.local_addr().ctx(|| "choosing a metrics port".into())
}

/// The last lines of a mount's log, for an error message.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(the mount wrote no log)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn the_root_is_mounted() {
        assert!(is_mounted(Path::new("/")).unwrap());
        assert!(!is_mounted(Path::new("/surely/not/a/mountpoint")).unwrap());
    }
}
