//! The in-memory index: the final filesystem tree of an image and where every file byte lives.
//!
//! The layout is chosen for the FUSE mount: inodes are dense numbers (stable across mounts,
//! shared by hardlinks), directory children are a contiguous, name-sorted run of entries (so
//! `lookup` is a binary search and `readdir` a slice), and each file's chunks carry a
//! precomputed file offset (so a byte range maps to chunks with a binary search). Everything
//! here is either built by [`crate::builder`] or produced by [`crate::codec::decode`], which
//! validates all the invariants the accessors rely on.

use std::ops::Range;

use shoal_common::Digest;

/// Entry 0 is always the root directory.
pub const ROOT_ENTRY: u32 = 0;

/// What an inode is. Sockets are not representable: OCI layers cannot carry them either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Dir => 1,
            Kind::File => 2,
            Kind::Symlink => 3,
            Kind::CharDev => 4,
            Kind::BlockDev => 5,
            Kind::Fifo => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            4 => Kind::CharDev,
            5 => Kind::BlockDev,
            6 => Kind::Fifo,
            _ => return None,
        })
    }
}

/// Chunking and compression settings the image was built with; recorded so a later build
/// using this image as a chunk dictionary can cut chunks the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub level: i32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            min: 64 * 1024,
            avg: 256 * 1024,
            max: 1024 * 1024,
            level: 3,
        }
    }
}

/// A data blob of the image, named by digest so it can live in any repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// One stored chunk: a single zstd frame at `offset..offset+stored_len` of data blob `blob`,
/// decompressing to `raw_len` bytes whose sha256 is `digest`. (`FORMAT.md` calls the two
/// lengths `csize` and `usize`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub blob: u32,
    pub offset: u64,
    /// Bytes of the zstd frame in the blob.
    pub stored_len: u32,
    /// Bytes of the chunk's content (decompressed).
    pub raw_len: u32,
    pub digest: Digest,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.stored_len)
    }
}

/// Modification time, kept only with `--keep-mtime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits only (`0o7777`); the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Option<Mtime>,
    /// Files: content length (the sum of chunk sizes). Symlinks: target length. Else 0.
    pub size: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Device numbers (major, minor) for character and block devices.
    pub rdev: (u32, u32),
    /// Sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Range into [`Index::file_chunks`].
    pub chunks: Range<u32>,
}

/// A directory entry. Several entries naming one inode are hardlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub parent: u32,
    /// Range into [`Index::names`].
    pub name: Range<u32>,
    pub inode: u32,
}

/// Where one chunk sits inside a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileChunk {
    pub chunk: u32,
    /// Offset of the chunk's first byte within the file.
    pub file_offset: u64,
}

/// Adjacent chunks of one blob that can be fetched with a single range request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRun {
    pub blob: u32,
    pub offset: u64,
    pub len: u64,
    /// The chunks in the run, in file order.
    pub chunks: Vec<FileChunk>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub params: ChunkParams,
    pub blobs: Vec<BlobRef>,
    pub chunks: Vec<Chunk>,
    pub inodes: Vec<Inode>,
    /// Breadth-first, so every parent precedes its children and each directory's children
    /// are contiguous and sorted by name bytes.
    pub entries: Vec<Entry>,
    pub names: Vec<u8>,
    /// Chunk numbers of every file, concatenated; an inode's `chunks` range selects its part.
    pub file_chunks: Vec<u32>,
    /// Offset within its file of each `file_chunks` element (derived).
    pub chunk_offsets: Vec<u64>,
    /// File inodes to fetch first, in order.
    pub prefetch: Vec<u32>,
    /// Per entry: range of child entries (empty for non-directories) (derived).
    pub children: Vec<Range<u32>>,
    /// Per inode: number of entries naming it, plus subdirectories for directories (derived).
    pub nlink: Vec<u32>,
    /// Per inode: its first entry (derived).
    pub first_entry: Vec<u32>,
}

impl Index {
    pub fn entry(&self, id: u32) -> Option<&Entry> {
        self.entries.get(id as usize)
    }

    pub fn inode(&self, id: u32) -> Option<&Inode> {
        self.inodes.get(id as usize)
    }

    /// The entry's name bytes (empty for the root).
    pub fn name(&self, entry: &Entry) -> &[u8] {
        self.names
            .get(entry.name.start as usize..entry.name.end as usize)
            .unwrap_or_default()
    }

    /// Child entries of a directory entry, sorted by name.
    pub fn children(&self, dir: u32) -> Range<u32> {
        self.children.get(dir as usize).cloned().unwrap_or(0..0)
    }

    /// Binary search of one name inside a directory.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let range = self.children(dir);
        let slice = self.entries.get(range.start as usize..range.end as usize)?;
        slice
            .binary_search_by(|e| self.name(e).cmp(name))
            .ok()
            .map(|i| range.start + i as u32)
    }

    /// Resolve a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<u32> {
        let mut at = ROOT_ENTRY;
        for comp in path.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            at = self.lookup(at, comp)?;
        }
        Some(at)
    }

    /// The path of an entry relative to the root, `/`-separated (empty for the root).
    pub fn path(&self, entry: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut at = entry;
        // Parents strictly decrease (validated), so this walk ends at the root.
        while at != ROOT_ENTRY {
            let Some(e) = self.entry(at) else { break };
            parts.push(self.name(e));
            if e.parent >= at {
                break;
            }
            at = e.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Human-readable path for messages.
    pub fn display_path(&self, entry: u32) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path(entry)))
    }

    /// Path of the first entry naming an inode.
    pub fn inode_path(&self, inode: u32) -> String {
        match self.first_entry.get(inode as usize) {
            Some(&e) => self.display_path(e),
            None => format!("inode #{inode}"),
        }
    }

    /// The chunks of a file inode with their file offsets.
    pub fn file_chunks(&self, inode: u32) -> Vec<FileChunk> {
        let Some(ino) = self.inode(inode) else {
            return Vec::new();
        };
        let r = ino.chunks.start as usize..ino.chunks.end as usize;
        match (self.file_chunks.get(r.clone()), self.chunk_offsets.get(r)) {
            (Some(ids), Some(offs)) => ids
                .iter()
                .zip(offs)
                .map(|(&chunk, &file_offset)| FileChunk { chunk, file_offset })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The chunks covering `offset..offset+len` of a file inode.
    pub fn chunks_for_range(&self, inode: u32, offset: u64, len: u64) -> Vec<FileChunk> {
        let Some(ino) = self.inode(inode) else {
            return Vec::new();
        };
        let end = offset.saturating_add(len).min(ino.size);
        if offset >= end {
            return Vec::new();
        }
        let r = ino.chunks.start as usize..ino.chunks.end as usize;
        let (Some(ids), Some(offs)) = (self.file_chunks.get(r.clone()), self.chunk_offsets.get(r))
        else {
            return Vec::new();
        };
        // First chunk starting after `offset`, minus one, is the chunk containing it.
        let first = offs.partition_point(|&o| o <= offset).saturating_sub(1);
        let mut out = Vec::new();
        for (&chunk, &file_offset) in ids.iter().zip(offs).skip(first) {
            if file_offset >= end {
                break;
            }
            out.push(FileChunk { chunk, file_offset });
        }
        out
    }

    /// Group file chunks into runs that are adjacent in one blob, each at most `max_len`
    /// bytes (a single chunk larger than that still forms its own run). One run is one
    /// HTTP range request.
    pub fn blob_runs(&self, chunks: &[FileChunk], max_len: u64) -> Vec<BlobRun> {
        let mut runs: Vec<BlobRun> = Vec::new();
        for fc in chunks {
            let Some(c) = self.chunks.get(fc.chunk as usize) else {
                continue;
            };
            if let Some(run) = runs.last_mut() {
                if run.blob == c.blob
                    && run.offset + run.len == c.offset
                    && run.len + u64::from(c.stored_len) <= max_len
                {
                    run.len += u64::from(c.stored_len);
                    run.chunks.push(*fc);
                    continue;
                }
            }
            runs.push(BlobRun {
                blob: c.blob,
                offset: c.offset,
                len: u64::from(c.stored_len),
                chunks: vec![*fc],
            });
        }
        runs
    }

    /// Fill the derived tables from the primary ones. Callers must have validated the
    /// primary tables (the decoder does; the builder produces them valid).
    pub(crate) fn derive(&mut self) {
        self.children = vec![0..0; self.entries.len()];
        self.nlink = vec![0; self.inodes.len()];
        self.first_entry = vec![u32::MAX; self.inodes.len()];
        // Indexing below is guarded by the loop conditions (`i < len`).
        let mut i = 1usize;
        while i < self.entries.len() {
            let parent = self.entries[i].parent;
            let start = i;
            while i < self.entries.len() && self.entries[i].parent == parent {
                i += 1;
            }
            if let Some(slot) = self.children.get_mut(parent as usize) {
                *slot = start as u32..i as u32;
            }
        }
        for (id, e) in self.entries.iter().enumerate() {
            let ino = e.inode as usize;
            if let Some(n) = self.nlink.get_mut(ino) {
                *n += 1;
            }
            if let Some(f) = self.first_entry.get_mut(ino) {
                if *f == u32::MAX {
                    *f = id as u32;
                }
            }
            if id != 0 {
                let is_dir = self.inodes.get(ino).is_some_and(|i| i.kind == Kind::Dir);
                let parent_ino = self
                    .entries
                    .get(e.parent as usize)
                    .map(|p| p.inode as usize);
                if let (true, Some(p)) = (is_dir, parent_ino) {
                    if let Some(n) = self.nlink.get_mut(p) {
                        *n += 1;
                    }
                }
            }
        }
        // Directories count "." as a link as well.
        for (n, ino) in self.nlink.iter_mut().zip(&self.inodes) {
            if ino.kind == Kind::Dir {
                *n += 1;
            }
        }
        self.chunk_offsets = vec![0; self.file_chunks.len()];
        for ino in &self.inodes {
            let mut off = 0u64;
            for pos in ino.chunks.start..ino.chunks.end {
                let Some(&c) = self.file_chunks.get(pos as usize) else {
                    break;
                };
                if let Some(slot) = self.chunk_offsets.get_mut(pos as usize) {
                    *slot = off;
                }
                off += self
                    .chunks
                    .get(c as usize)
                    .map_or(0, |c| u64::from(c.raw_len));
            }
        }
    }

    /// Sum of all file sizes, counting hardlinked inodes once.
    pub fn file_bytes(&self) -> u64 {
        self.inodes
            .iter()
            .filter(|i| i.kind == Kind::File)
            .map(|i| i.size)
            .sum()
    }
}
