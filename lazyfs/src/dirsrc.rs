//! Reading a plain directory (`dir:PATH`) into a [`Tree`]. Nothing follows symlinks
//! (lstat, l*xattr); hardlinks are recognised by `(dev, ino)`; file contents stay on disk
//! and are read when chunked. Readdir order does not matter: the tree sorts names.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::index::Mtime;
use crate::tree::{Body, Content, Meta, Node, NodeId, Tree, ROOT};

/// Read `root` into a new tree. Sockets are skipped (no layer format can hold them); the
/// count of skipped entries is returned for reporting.
pub fn read_dir_tree(root: &Path) -> Result<(Tree, u64)> {
    let mut tree = Tree::new();
    let md = fs::symlink_metadata(root).ctx(|| format!("reading {}", root.display()))?;
    if !md.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    if let Some(n) = tree.node_mut(ROOT) {
        n.meta = meta_of(root, &md)?;
    }
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut skipped = 0u64;
    let mut stack = vec![(root.to_path_buf(), ROOT)];
    while let Some((dir, node)) = stack.pop() {
        let rd = fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
        for item in rd {
            let item = item.ctx(|| format!("listing {}", dir.display()))?;
            let path = item.path();
            let name = item.file_name().as_bytes().to_vec();
            let md = fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
            let ft = md.file_type();
            if ft.is_socket() {
                skipped += 1;
                continue;
            }
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(&existing) = links.get(&(md.dev(), md.ino())) {
                    tree.link(node, name, existing, 0);
                    continue;
                }
            }
            let meta = meta_of(&path, &md)?;
            let (major, minor) = split_dev(md.rdev());
            let body = if ft.is_dir() {
                Body::Dir(Default::default())
            } else if ft.is_file() {
                let len = md.len();
                Body::File(if len == 0 {
                    Content::Empty
                } else {
                    Content::Path {
                        path: path.clone(),
                        len,
                    }
                })
            } else if ft.is_symlink() {
                let target =
                    fs::read_link(&path).ctx(|| format!("reading link {}", path.display()))?;
                Body::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                Body::CharDev(major, minor)
            } else if ft.is_block_device() {
                Body::BlockDev(major, minor)
            } else if ft.is_fifo() {
                Body::Fifo
            } else {
                skipped += 1;
                continue;
            };
            let is_dir = ft.is_dir();
            let id = tree.add(Node { meta, body });
            tree.link(node, name, id, 0);
            if is_dir {
                stack.push((path, id));
            } else if md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), id);
            }
        }
    }
    Ok((tree, skipped))
}

fn meta_of(path: &Path, md: &fs::Metadata) -> Result<Meta> {
    let mut xattrs = std::collections::BTreeMap::new();
    // Filesystems without xattr support simply have none.
    if let Ok(names) = xattr::list(path) {
        for name in names {
            if let Some(value) =
                xattr::get(path, &name).ctx(|| format!("reading xattr of {}", path.display()))?
            {
                xattrs.insert(OsStr::as_bytes(&name).to_vec(), value);
            }
        }
    }
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Some(Mtime {
            sec: md.mtime(),
            nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0),
        }),
        xattrs,
    })
}

/// Linux `dev_t` encoding (glibc's gnu_dev_major/minor).
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// Inverse of [`split_dev`], for `mknod`.
pub fn make_dev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_roundtrip() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 17), (259, 65536), (4095, 1 << 20)] {
            assert_eq!(split_dev(make_dev(ma, mi)), (ma, mi));
        }
    }
}
