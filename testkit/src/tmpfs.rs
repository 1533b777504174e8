//! A small tmpfs mounted for one test, to give a process a filesystem that really fills up
//! (`ENOSPC`), unmounted when the handle drops, also when the test panics. Root only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A mounted tmpfs; declare it before the processes that use it, so that they are killed
/// (dropped) before it is unmounted.
pub struct Tmpfs {
    pub path: PathBuf,
}

/// Whether this process runs as root (owner of `/proc/self`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `path` (created if missing). `None`, with the reason
    /// printed, when not root: the caller skips its test.
    pub fn mount(path: &Path, size: u64) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap_or_else(|e| panic!("running mount: {e}"));
        assert!(
            status.success(),
            "mount -t tmpfs at {}: {status}",
            path.display()
        );
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Bytes still free for an unprivileged writer (`df`'s "avail").
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap_or_else(|e| panic!("running df: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df {}: {:?}", self.path.display(), out))
    }

    /// Writes a file of `bytes` (non-zero, so nothing can be deduplicated or left sparse) at
    /// `name` inside the tmpfs: space that only deleting it frees.
    pub fn fill(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.path.join(name);
        let data = vec![0xa5u8; bytes as usize];
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there must not keep the mount alive.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}
