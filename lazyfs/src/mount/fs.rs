//! The FUSE filesystem: a thin, read-only view of the index. Metadata operations answer
//! from memory on the FUSE thread, and so does a `read` whose chunks are all cached (memory
//! or disk); a read that must fetch is handed to the tokio runtime and replied to from
//! there, so a slow fetch never stalls lookups or other reads.
//!
//! Inode numbers are the index's: image inode `i` is FUSE inode `i + 1` (root = 1), so they
//! are stable across mounts and hardlinks share one.
//!
//! The image never changes, so once the kernel has seen something it never needs to ask
//! again, and a warm read of the tree should cost no round trip to this process at all: each
//! one is two context switches, and a tree walk makes several per file (open, flush,
//! release, readlink, opendir, readdir, releasedir) — enough to make a warm `tar` of a few
//! thousand files half again as slow as the same read of a native directory. Hence:
//! - entries, attributes and negative lookups are cached for (practically) ever ([`TTL`]);
//! - `open` and `opendir` answer `ENOSYS` when the kernel supports "no open"
//!   (`FUSE_NO_OPEN_SUPPORT`/`FUSE_NO_OPENDIR_SUPPORT`): it then stops sending them, and
//!   their `release`s, for the whole connection and opens every file with `FOPEN_KEEP_CACHE`
//!   (page cache kept across opens) and every directory with `FOPEN_CACHE_DIR` (listings
//!   cached in the kernel). Nothing here keeps per-open state (every handle is 0), so
//!   nothing is lost; on older kernels the same flags are returned from a real open;
//! - `flush` answers `ENOSYS`, which the kernel remembers: nothing is ever dirty;
//! - symlink targets are cached by the kernel (`FUSE_CACHE_SYMLINKS`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

mod attr;
mod listing;

use super::read::Reader;
use crate::index::{Index, Inode, Kind};
use attr::{negative_attr, BLOCK};
use listing::{dir_listing, DirItem};

/// How long the kernel may trust an entry, an attribute or a negative lookup: the tree never
/// changes, so "forever". A year rather than `u64::MAX` seconds, which the kernel would turn
/// into a negative `time64_t`.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct LazyFs {
    index: Arc<Index>,
    reader: Arc<Reader>,
    rt: tokio::runtime::Handle,
    /// The kernel takes `ENOSYS` from `open` as "opens need no call" (set in `init`).
    no_open: bool,
    /// The same for `opendir`.
    no_opendir: bool,
}

impl LazyFs {
    pub fn new(index: Arc<Index>, reader: Arc<Reader>, rt: tokio::runtime::Handle) -> Self {
        LazyFs {
            index,
            reader,
            rt,
            no_open: false,
            no_opendir: false,
        }
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
        attr::attr(&self.index, id, inode)
    }

    fn entry_attr(&self, entry: u32) -> Option<(FileAttr, &[u8])> {
        let e = self.index.entry(entry)?;
        let inode = self.index.inode(e.inode)?;
        Some((self.attr(e.inode, inode), self.index.name(e)))
    }

    /// `.`, `..` and the children of a directory (see [`dir_listing`]).
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, DirItem<'_>)> + '_, Errno> {
        let entry = self.dir_entry(ino)?;
        Ok(dir_listing(&self.index, entry, ino, offset))
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // All optional: a kernel without one just keeps asking. readdirplus saves a lookup
        // per entry when listing; parallel dirops let cold lookups in one directory overlap.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // These two are the kernel telling what it supports; nothing to request.
        let kernel = config.capabilities();
        self.no_open = kernel.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = kernel.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
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
            // Node id 0 is "no such entry, and remember that": a negative dentry. Programs
            // probe for missing files all the time (the dynamic linker's search path,
            // interpreters' module paths), and without it each probe is a round trip.
            None => reply.entry(&TTL, &negative_attr(), Generation(0)),
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
            // The mount is read-only, so the kernel refuses these itself; kept for the
            // opens before `ENOSYS` took (and kernels without no-open).
            Some(_) if flags.acc_mode() != OpenAccMode::O_RDONLY => reply.error(Errno::EROFS),
            // No call for any later open of any file, and no release: the kernel then opens
            // with FOPEN_KEEP_CACHE, the page cache kept across opens.
            Some(_) if self.no_open => reply.error(Errno::ENOSYS),
            // The same by hand: content never changes, and there is nothing to flush.
            Some(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.image_inode(ino) {
            None => reply.error(Errno::ENOENT),
            Some((_, i)) if i.kind != Kind::Dir => reply.error(Errno::ENOTDIR),
            // As `open`: the kernel then opens directories with FOPEN_CACHE_DIR.
            Some(_) if self.no_opendir => reply.error(Errno::ENOSYS),
            // Listings never change: the kernel may keep them in its cache.
            Some(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
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

    /// Nothing is ever dirty. `ENOSYS` tells the kernel so once for the whole connection
    /// (it then lets every close succeed without a call), where `ok` would cost a round
    /// trip per close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Nothing is ever dirty: fsync succeeds without work.
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
        let list = match self.listing(ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (next, item) in list {
            if reply.add(item.ino, next, item.kind, OsStr::from_bytes(item.name)) {
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
        let list = match self.listing(ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (next, item) in list {
            let Some((id, inode)) = self.image_inode(item.ino) else {
                continue;
            };
            let attr = self.attr(id, inode);
            if reply.add(
                item.ino,
                next,
                OsStr::from_bytes(item.name),
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
