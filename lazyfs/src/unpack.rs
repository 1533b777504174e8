//! `unpack`: materialize an image's tree in a directory, every chunk verified. Directories
//! are created first with owner-only permissions and get their real metadata last, deepest
//! first, so read-only directories and mtimes come out right.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, Timespec, Timestamps, CWD};

use crate::check::verify_chunk;
use crate::error::{Error, IoContext, Result};
use crate::index::{Index, Inode, Kind, ROOT_ENTRY};
use crate::store::BlobSource;

/// Largest single range request while fetching file data.
const MAX_RUN: u64 = 16 << 20;

#[derive(Debug, Default)]
pub struct UnpackReport {
    pub entries: u64,
    pub bytes: u64,
    /// Ownership could not be set (not root); everything else was.
    pub chown_failed: u64,
}

pub fn unpack(src: &dyn BlobSource, index: &Index, out: &Path) -> Result<UnpackReport> {
    if out.exists() {
        let mut rd = fs::read_dir(out).ctx(|| format!("reading {}", out.display()))?;
        if rd.next().is_some() {
            return Err(Error::Invalid(format!("{} is not empty", out.display())));
        }
    } else {
        fs::create_dir_all(out).ctx(|| format!("creating {}", out.display()))?;
    }
    let mut report = UnpackReport::default();
    let mut paths: Vec<PathBuf> = Vec::with_capacity(index.entries.len());
    let mut first_path: Vec<Option<usize>> = vec![None; index.inodes.len()];
    for (id, e) in index.entries.iter().enumerate() {
        let path = if id == ROOT_ENTRY as usize {
            out.to_path_buf()
        } else {
            // Parents precede children (validated), so the parent's path exists.
            let parent = paths
                .get(e.parent as usize)
                .cloned()
                .unwrap_or_else(|| out.to_path_buf());
            parent.join(std::ffi::OsStr::from_bytes(index.name(e)))
        };
        paths.push(path.clone());
        report.entries += 1;
        if id == ROOT_ENTRY as usize {
            first_path[0] = Some(0);
            continue;
        }
        let Some(ino) = index.inode(e.inode) else {
            continue;
        };
        if let Some(Some(first)) = first_path.get(e.inode as usize) {
            let target = paths.get(*first).cloned().unwrap_or_default();
            fs::hard_link(&target, &path)
                .ctx(|| format!("linking {} to {}", path.display(), target.display()))?;
            continue;
        }
        if let Some(slot) = first_path.get_mut(e.inode as usize) {
            *slot = Some(id);
        }
        match ino.kind {
            Kind::Dir => fs::create_dir(&path).ctx(|| format!("creating {}", path.display()))?,
            Kind::File => report.bytes += write_file(src, index, e.inode, &path)?,
            Kind::Symlink => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&ino.target), &path)
                    .ctx(|| format!("creating {}", path.display()))?
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                let ft = match ino.kind {
                    Kind::CharDev => FileType::CharacterDevice,
                    Kind::BlockDev => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = crate::dirsrc::make_dev(ino.rdev.0, ino.rdev.1);
                rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e.into()))?;
            }
        }
        if ino.kind != Kind::Dir {
            apply_meta(&path, ino, &mut report)?;
        }
    }
    // Directories last, children before parents.
    for (id, e) in index.entries.iter().enumerate().rev() {
        let Some(ino) = index.inode(e.inode).filter(|i| i.kind == Kind::Dir) else {
            continue;
        };
        if let Some(path) = paths.get(id) {
            apply_meta(path, ino, &mut report)?;
        }
    }
    Ok(report)
}

fn write_file(src: &dyn BlobSource, index: &Index, inode: u32, path: &Path) -> Result<u64> {
    let mut f = File::create(path).ctx(|| format!("creating {}", path.display()))?;
    let chunks = index.file_chunks(inode);
    let mut written = 0u64;
    for run in index.blob_runs(&chunks, MAX_RUN) {
        let blob = index
            .blobs
            .get(run.blob as usize)
            .ok_or_else(|| Error::Invalid(format!("blob #{} missing", run.blob)))?;
        let window = src.blob_range(&blob.digest, run.offset, run.len)?;
        for fc in &run.chunks {
            let data = verify_chunk(index, fc.chunk, &window, run.offset)?;
            f.write_all(&data)
                .ctx(|| format!("writing {}", path.display()))?;
            written += data.len() as u64;
        }
    }
    Ok(written)
}

fn apply_meta(path: &Path, ino: &Inode, report: &mut UnpackReport) -> Result<()> {
    let ctx = || format!("setting metadata of {}", path.display());
    // Owner before mode: chown clears set-id bits.
    if std::os::unix::fs::lchown(path, Some(ino.uid), Some(ino.gid)).is_err() {
        report.chown_failed += 1;
    }
    for (k, v) in &ino.xattrs {
        xattr::set(path, std::ffi::OsStr::from_bytes(k), v).ctx(|| {
            format!(
                "setting xattr {} of {}",
                String::from_utf8_lossy(k),
                path.display()
            )
        })?;
    }
    if ino.kind != Kind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(ino.mode)).ctx(ctx)?;
    }
    if let Some(m) = ino.mtime {
        let t = Timespec {
            tv_sec: m.sec,
            tv_nsec: i64::from(m.nsec) as _,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(ctx(), e.into()))?;
    }
    Ok(())
}
