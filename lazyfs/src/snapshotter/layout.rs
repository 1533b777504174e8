//! Where a snapshot's files live and the mounts containerd is told to make for it — the
//! same shapes as containerd's overlayfs snapshotter, so a normal image behaves the same.

use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;

use super::store::{Kind, Lazy, Record};

/// The directories under the snapshotter's root.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub cache: PathBuf,
}

impl Layout {
    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata.json")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Everything a snapshot owns: `fs` (its tree, or the lazy mountpoint), `work`
    /// (overlayfs's work dir), `mount.log` of a lazy mount.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    pub fn mount_log(&self, id: u64) -> PathBuf {
        self.dir(id).join("mount.log")
    }

    /// A lazy mount's chunk cache; removed with its snapshot.
    pub fn chunk_cache(&self, id: u64) -> PathBuf {
        self.cache.join(id.to_string())
    }
}

/// The mounts of `record` on top of `ancestors` (nearest first).
pub fn mounts(layout: &Layout, record: &Record, ancestors: &[&Record]) -> Vec<Mount> {
    // Lazy data layers are empty directories: leaving them out keeps the option string
    // short (the kernel limits it to a page) and spares overlayfs a lookup per layer.
    let lowers: Vec<String> = ancestors
        .iter()
        .filter(|r| r.lazy != Some(Lazy::Data))
        .map(|r| layout.fs(r.id).display().to_string())
        .collect();
    let fs = layout.fs(record.id).display().to_string();
    match record.kind {
        Kind::Active if lowers.is_empty() => vec![bind(fs, "rw")],
        Kind::Active => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("workdir={}", layout.work(record.id).display()),
                format!("upperdir={fs}"),
                format!("lowerdir={}", lowers.join(":")),
            ],
        }],
        _ if lowers.is_empty() => vec![bind(fs, "ro")],
        // overlayfs needs two lower directories when it has no upper one.
        _ if lowers.len() == 1 => vec![bind(lowers[0].clone(), "ro")],
        _ => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![format!("lowerdir={}", lowers.join(":"))],
        }],
    }
}

fn bind(source: String, mode: &str) -> Mount {
    Mount {
        r#type: "bind".into(),
        source,
        target: String::new(),
        options: vec![mode.into(), "rbind".into()],
    }
}

/// Bytes and inodes under `dir`, not crossing into other filesystems (a lazy mount's tree
/// is not on this disk).
pub fn usage(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::SystemTime;

    use super::*;

    fn rec(id: u64, kind: Kind, lazy: Option<Lazy>) -> Record {
        Record {
            id,
            kind,
            parent: String::new(),
            labels: HashMap::new(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            lazy,
        }
    }

    fn layout() -> Layout {
        Layout {
            root: "/r".into(),
            cache: "/c".into(),
        }
    }

    #[test]
    fn shapes_match_the_overlayfs_snapshotter() {
        let l = layout();
        let base = rec(1, Kind::Committed, None);
        let mid = rec(2, Kind::Committed, None);
        let m = mounts(&l, &rec(3, Kind::Active, None), &[]);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].options[0].as_str()),
            ("bind", "rw")
        );
        let m = mounts(&l, &rec(3, Kind::Active, None), &[&mid, &base]);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(m[0].options[0], "workdir=/r/snapshots/3/work");
        assert_eq!(m[0].options[1], "upperdir=/r/snapshots/3/fs");
        assert_eq!(
            m[0].options[2],
            "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
        );
        let m = mounts(&l, &rec(3, Kind::View, None), &[&base]);
        assert_eq!(
            (m[0].source.as_str(), m[0].options[0].as_str()),
            ("/r/snapshots/1/fs", "ro")
        );
        let m = mounts(&l, &rec(3, Kind::View, None), &[&mid, &base]);
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
    }

    #[test]
    fn lazy_data_layers_are_left_out() {
        let l = layout();
        let index = rec(
            1,
            Kind::Committed,
            Some(Lazy::Index {
                image: "h/r@sha256:00".into(),
                metrics: None,
            }),
        );
        let data = rec(2, Kind::Committed, Some(Lazy::Data));
        let m = mounts(&l, &rec(3, Kind::Active, None), &[&data, &data, &index]);
        assert_eq!(m[0].options[2], "lowerdir=/r/snapshots/1/fs");
        let m = mounts(&l, &rec(3, Kind::View, None), &[&data, &index]);
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].source, "/r/snapshots/1/fs");
    }

    #[test]
    fn usage_counts_bytes_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![1u8; 10_000]).unwrap();
        let (bytes, inodes) = usage(d.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10_000, "{bytes}");
    }
}
