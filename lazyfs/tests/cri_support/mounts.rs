//! `/proc/self/mountinfo`: which mounts exist under a directory, their filesystem types
//! (`fuse.*` for a lazyfs mount, `overlay` for a container root), an overlay's lowerdirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    /// `overlay`, `fuse.shoal-lazyfs`, `tmpfs`, …
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (an overlay's `lowerdir=…,upperdir=…,workdir=…`).
    pub super_options: String,
}

impl MountInfo {
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }

    /// An overlay's `lowerdir`s, topmost first (empty for other filesystems).
    pub fn lowerdirs(&self) -> Vec<PathBuf> {
        self.option("lowerdir")
            .map(|v| {
                split_unescaped(&v, ':')
                    .iter()
                    .map(|p| PathBuf::from(unescape_backslash(p)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn option(&self, key: &str) -> Option<String> {
        split_unescaped(&self.super_options, ',')
            .into_iter()
            .find_map(|o| o.strip_prefix(&format!("{key}=")).map(str::to_string))
    }
}

/// Splits on `sep` not preceded by a backslash (overlay escapes `:` and `,` in paths);
/// escapes are kept, for a split on another separator ([`unescape_backslash`] drops them).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.last_mut().unwrap().push(c);
            escaped = false;
        } else if c == '\\' {
            out.last_mut().unwrap().push(c);
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

/// `\x` → `x`.
fn unescape_backslash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if c == '\\' && !escaped {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount of this process's mount namespace, in mount order.
pub fn all_mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut r = right.splitn(3, ' ');
    let fs_type = r.next()?.to_string();
    let source = unescape_octal(r.next()?);
    let super_options = unescape_octal(r.next().unwrap_or(""));
    Some(MountInfo {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type,
        source,
        super_options,
    })
}

/// The mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountInfo> {
    all_mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// The FUSE mounts at or below `dir`.
pub fn fuse_mounts_under(dir: &Path) -> Vec<MountInfo> {
    mounts_under(dir)
        .into_iter()
        .filter(MountInfo::is_fuse)
        .collect()
}

/// The topmost mount at exactly `mount_point`.
pub fn mount_at(mount_point: &Path) -> Option<MountInfo> {
    all_mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
}

/// The mount holding `path`: the (topmost) mount whose mount point is its longest prefix.
pub fn mount_holding(path: &Path) -> Option<MountInfo> {
    let mut best: Option<MountInfo> = None;
    for m in all_mounts() {
        if path.starts_with(&m.mount_point)
            && best.as_ref().is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// The overlay lowerdirs of the overlay mounted at `mount_point` (a container's root), each
/// with the mount holding it.
pub fn overlay_lowers(mount_point: &Path) -> Option<Vec<(PathBuf, Option<MountInfo>)>> {
    let m = mount_at(mount_point)?;
    if m.fs_type != "overlay" {
        return None;
    }
    Some(
        m.lowerdirs()
            .into_iter()
            .map(|l| {
                let holder = mount_holding(&l);
                (l, holder)
            })
            .collect(),
    )
}

/// Detaches (`umount -l`) every mount at or below `dir`, deepest first.
pub fn detach_all_under(dir: &Path) {
    let mut ms = mounts_under(dir);
    ms.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in ms {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m.mount_point)
            .stderr(Stdio::null())
            .status();
    }
}

/// A readable list of mounts for messages.
pub fn describe(ms: &[MountInfo]) -> String {
    ms.iter()
        .map(|m| format!("{} ({}, {})", m.mount_point.display(), m.fs_type, m.source))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_line() {
        let line = "612 30 0:77 / /run/x/rootfs rw,relatime - overlay overlay \
                    rw,lowerdir=/a/1/fs:/b\\:c/fs,upperdir=/u,workdir=/w";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point, Path::new("/run/x/rootfs"));
        assert_eq!(m.fs_type, "overlay");
        assert_eq!(
            m.lowerdirs(),
            vec![PathBuf::from("/a/1/fs"), PathBuf::from("/b:c/fs")]
        );
        let fuse =
            parse_line("700 30 0:80 / /tmp/a\\040b rw - fuse.shoal-lazyfs shoal ro").unwrap();
        assert!(fuse.is_fuse());
        assert_eq!(fuse.mount_point, Path::new("/tmp/a b"));
    }
}
