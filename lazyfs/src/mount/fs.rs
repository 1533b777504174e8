//! The FUSE filesystem: a thin, read-only view of the index. Metadata operations answer
//! from memory on the FUSE thread, and so does a `read` whose chunks are all cached (memory
//! or disk); a read that must fetch is handed to the tokio runtime and replied to from
//! there, so a slow fetch never stalls lookups or other reads.
//!
//! Inode numbers are the index's: image inode `i` is FUSE inode `i + 1` (root = 1), so they
//! are stable across mounts and hardlinks share one.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use super::read::Reader;
use crate::index::{Index, Inode, Kind};

/// The tree never changes, so the kernel may cache everything for long.
const TTL: Duration = Duration::from_secs(3600);
const BLOCK: u32 = 4096;

pub struct LazyFs {
    index: Arc<Index>,
    reader: Arc<Reader>,
    rt: tokio::runtime::Handle,
}

impl LazyFs {
    pub fn new(index: Arc<Index>, reader: Arc<Reader>, rt: tokio::runtime::Handle) -> Self {
        LazyFs { index, reader, rt }
    }

    /// FUSE inode → image inode.
    fn image_inode(&self, ino: INodeNo) -> Option<(u32, &Inode)> {
        let id = u32::try_from(ino.0.checked_sub(1)?).ok()?;
        self.index.inode(id).map(|i| (id, i))
    }

    /// The entry of a directory inode (directories have exactly one).
    fn dir_entry(&self, ino: INodeNo) -> Result<u32, Errno> {
        let (id, inode) = self.image_inode(ino).ok_or(Errno::ENOENT)?;
        if inode.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.index
            .first_entry
            .get(id as usize)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn attr(&self, id: u32, inode: &Inode) -> FileAttr {
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
            nlink: self.index.nlink.get(id as usize).copied().unwrap_or(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev,
            blksize: BLOCK,
            flags: 0,
        }
    }

    fn entry_attr(&self, entry: u32) -> Option<(FileAttr, &[u8])> {
        let e = self.index.entry(entry)?;
        let inode = self.index.inode(e.inode)?;
        Some((self.attr(e.inode, inode), self.index.name(e)))
    }

    /// `.`, `..` and the children of a directory.
    fn listing(&self, ino: INodeNo) -> Result<Vec<DirItem>, Errno> {
        let entry = self.dir_entry(ino)?;
        let parent_inode = self
            .index
            .entry(entry)
            .and_then(|e| self.index.entry(e.parent))
            .map_or(ino.0, |p| u64::from(p.inode) + 1);
        let dot = |ino, name: &[u8]| DirItem {
            ino,
            kind: FileType::Directory,
            name: name.to_vec(),
        };
        let mut out = vec![dot(ino, b"."), dot(INodeNo(parent_inode), b"..")];
        for child in self.index.children(entry) {
            if let Some(e) = self.index.entry(child) {
                let kind = self.index.inode(e.inode).map_or(Kind::File, |i| i.kind);
                out.push(DirItem {
                    ino: INodeNo(u64::from(e.inode) + 1),
                    kind: file_type(kind),
                    name: self.index.name(e).to_vec(),
                });
            }
        }
        Ok(out)
    }
}

struct DirItem {
    ino: INodeNo,
    kind: FileType,
    name: Vec<u8>,
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus saves a lookup per entry when listing; optional.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let entry = match self.dir_entry(parent) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        match self
            .index
            .lookup(entry, name.as_bytes())
            .and_then(|child| self.entry_attr(child))
        {
            Some((attr, _)) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.image_inode(ino) {
            Some((id, inode)) => reply.attr(&TTL, &self.attr(id, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.image_inode(ino) {
            Some((_, i)) if i.kind == Kind::Symlink => reply.data(&i.target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.image_inode(ino) {
            None => reply.error(Errno::ENOENT),
            Some((_, i)) if i.kind == Kind::Dir => reply.error(Errno::EISDIR),
            Some(_) if flags.acc_mode() != OpenAccMode::O_RDONLY => reply.error(Errno::EROFS),
            // Content never changes: let the page cache keep it across opens.
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let id = match self.image_inode(ino) {
            Some((id, i)) if i.kind == Kind::File => id,
            Some(_) => return reply.error(Errno::EINVAL),
            None => return reply.error(Errno::ENOENT),
        };
        // Warm reads are answered here; only a read that must fetch goes to the runtime.
        if let Some(data) = self.reader.read_local(id, offset, size) {
            return reply.data(&data);
        }
        let reader = self.reader.clone();
        self.rt.spawn(async move {
            match reader.read(id, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    /// Nothing is ever dirty: close and fsync succeed without work.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctls (what a plain file on most filesystems answers to unknown ones).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (i, item) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(
                item.ino,
                i as u64 + 1,
                item.kind,
                OsStr::from_bytes(&item.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (i, item) in list.iter().enumerate().skip(offset as usize) {
            let Some((id, inode)) = self.image_inode(item.ino) else {
                continue;
            };
            let attr = self.attr(id, inode);
            if reply.add(
                item.ino,
                i as u64 + 1,
                OsStr::from_bytes(&item.name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.index.file_bytes().div_ceil(u64::from(BLOCK));
        let files = self.index.inodes.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, BLOCK, 255, BLOCK);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((_, inode)) = self.image_inode(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Some((_, value)) = inode.xattrs.iter().find(|(n, _)| n == name.as_bytes()) else {
            return reply.error(Errno::NO_XATTR);
        };
        xattr_reply(value, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some((_, inode)) = self.image_inode(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (n, _) in &inode.xattrs {
            names.extend_from_slice(n);
            names.push(0);
        }
        xattr_reply(&names, size, reply);
    }
}

/// `size == 0` asks for the length; otherwise the value must fit.
fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
