//! The attributes the kernel sees: an image inode's, a negative entry's, and file types.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::index::{Index, Inode, Kind};

/// The block size reported for every file.
pub(super) const BLOCK: u32 = 4096;

/// The attributes of image inode `id` (FUSE inode `id + 1`).
pub(super) fn attr(index: &Index, id: u32, inode: &Inode) -> FileAttr {
    let mtime = inode.mtime.map_or(UNIX_EPOCH, |m| {
        let nanos = Duration::new(m.sec.unsigned_abs(), m.nsec);
        if m.sec >= 0 {
            UNIX_EPOCH + nanos
        } else {
            UNIX_EPOCH.checked_sub(nanos).unwrap_or(UNIX_EPOCH)
        }
    });
    let rdev = match inode.kind {
        Kind::CharDev | Kind::BlockDev => {
            // Linux dev_t encoding (what makedev does), truncated to the 32 bits FUSE carries.
            let (ma, mi) = inode.rdev;
            (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & !0xff) << 12)
        }
        _ => 0,
    };
    FileAttr {
        ino: INodeNo(u64::from(id) + 1),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(inode.kind),
        perm: (inode.mode & 0o7777) as u16,
        nlink: index.nlink.get(id as usize).copied().unwrap_or(1),
        uid: inode.uid,
        gid: inode.gid,
        rdev,
        blksize: BLOCK,
        flags: 0,
    }
}

/// The attributes of a negative entry: only its node id (0) matters to the kernel.
pub(super) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

pub(super) fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}
