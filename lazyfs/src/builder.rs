//! From a finished [`Tree`] to an [`Index`] plus one new data blob.
//!
//! Determinism comes from ordering everything by name bytes: entries breadth-first with
//! sorted siblings, inodes numbered by first use, and file data laid out prefetch list
//! first, then depth-first in path order so that files of one directory sit together.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::chunker::{ChunkDict, ChunkStats, Chunker, Home};
use crate::error::{Error, IoContext, Result};
use crate::index::{BlobRef, Chunk, ChunkParams, Entry, Index, Inode, Kind};
use crate::tree::{Body, Content, NodeId, Tree, ROOT};

pub struct BuildOptions<'a> {
    pub params: ChunkParams,
    /// Paths (relative to the root) whose files are laid out first, in this order.
    pub prefetch: Vec<Vec<u8>>,
    pub dict: Option<Arc<ChunkDict>>,
    /// Spool file backing [`Content::Spool`] contents.
    pub spool: Option<&'a File>,
    /// Receives the number of content bytes processed, for progress display.
    pub progress: &'a (dyn Fn(u64) + Sync),
}

pub struct Built {
    pub index: Index,
    /// The new data blob (written to the file given to [`build`]); `None` if every chunk
    /// was already in the dictionary or the image has no file data.
    pub data_blob: Option<BlobRef>,
    /// Blobs of the dictionary this image references, in index order.
    pub dict_blobs: Vec<BlobRef>,
    pub stats: ChunkStats,
    /// Prefetch paths that name no regular file.
    pub prefetch_missing: Vec<String>,
}

/// Total bytes of file content in the tree (hardlinks once), for progress bars.
pub fn content_bytes(tree: &Tree) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        for c in tree.dir(id).into_iter().flat_map(|d| d.values()) {
            match tree.node(c.node).map(|n| &n.body) {
                Some(Body::Dir(_)) => stack.push(c.node),
                Some(Body::File(content)) if seen.insert(c.node) => total += content.len(),
                _ => {}
            }
        }
    }
    total
}

pub fn build(tree: &Tree, opts: &BuildOptions<'_>, data_out: File) -> Result<Built> {
    crate::codec::validate_params(&opts.params).map_err(Error::Invalid)?;
    // Entries breadth-first; `entry_node[i]` is the tree node of entry i.
    let mut entries = vec![Entry {
        parent: 0,
        name: 0..0,
        inode: 0,
    }];
    let mut names = Vec::new();
    let mut entry_node = vec![ROOT];
    let mut inode_of: HashMap<NodeId, u32> = HashMap::from([(ROOT, 0)]);
    let mut inode_nodes = vec![ROOT];
    let mut i = 0;
    while i < entries.len() {
        let node = entry_node.get(i).copied().unwrap_or(ROOT);
        if let Some(children) = tree.dir(node) {
            for (name, child) in children {
                let inode = match inode_of.get(&child.node) {
                    Some(&ino) if tree.dir(child.node).is_some() => {
                        return Err(Error::Invalid(format!(
                            "directory inode #{ino} reachable twice (at {:?})",
                            String::from_utf8_lossy(name)
                        )))
                    }
                    Some(&ino) => ino,
                    None => {
                        let ino = inode_nodes.len() as u32;
                        inode_of.insert(child.node, ino);
                        inode_nodes.push(child.node);
                        ino
                    }
                };
                let start = names.len() as u32;
                names.extend_from_slice(name);
                entries.push(Entry {
                    parent: i as u32,
                    name: start..names.len() as u32,
                    inode,
                });
                entry_node.push(child.node);
            }
        }
        i += 1;
    }

    let mut inodes = Vec::with_capacity(inode_nodes.len());
    for &node in &inode_nodes {
        let n = tree
            .node(node)
            .ok_or_else(|| Error::Invalid(format!("tree node {node} missing")))?;
        let (kind, target, rdev) = match &n.body {
            Body::Dir(_) => (Kind::Dir, Vec::new(), (0, 0)),
            Body::File(_) => (Kind::File, Vec::new(), (0, 0)),
            Body::Symlink(t) => (Kind::Symlink, t.clone(), (0, 0)),
            Body::CharDev(a, b) => (Kind::CharDev, Vec::new(), (*a, *b)),
            Body::BlockDev(a, b) => (Kind::BlockDev, Vec::new(), (*a, *b)),
            Body::Fifo => (Kind::Fifo, Vec::new(), (0, 0)),
        };
        inodes.push(Inode {
            kind,
            mode: n.meta.mode & 0o7777,
            uid: n.meta.uid,
            gid: n.meta.gid,
            mtime: n.meta.mtime,
            size: if kind == Kind::Symlink {
                target.len() as u64
            } else {
                0
            },
            target,
            rdev,
            xattrs: n
                .meta
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            chunks: 0..0,
        });
    }

    // Data layout: prefetch files first, then depth-first path order.
    let mut order = Vec::new();
    let mut placed = HashSet::new();
    let mut prefetch = Vec::new();
    let mut prefetch_missing = Vec::new();
    for path in &opts.prefetch {
        let node = crate::tree::split_path(path).and_then(|p| tree.lookup(&p));
        match node.and_then(|n| inode_of.get(&n).map(|&ino| (n, ino))) {
            Some((n, ino)) if matches!(tree.node(n).map(|x| &x.body), Some(Body::File(_))) => {
                if placed.insert(ino) {
                    order.push((ino, n));
                    prefetch.push(ino);
                }
            }
            _ => prefetch_missing.push(String::from_utf8_lossy(path).into_owned()),
        }
    }
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        let Some(children) = tree.dir(id) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for child in children.values() {
            match tree.node(child.node).map(|n| &n.body) {
                Some(Body::Dir(_)) => subdirs.push(child.node),
                Some(Body::File(_)) => {
                    if let Some(&ino) = inode_of.get(&child.node) {
                        if placed.insert(ino) {
                            order.push((ino, child.node));
                        }
                    }
                }
                _ => {}
            }
        }
        // Reversed so the first subdirectory is visited first.
        stack.extend(subdirs.into_iter().rev());
    }

    let mut chunker = Chunker::new(opts.params, inodes.len(), data_out, opts.dict.clone());
    for &(ino, node) in &order {
        let Some(Body::File(content)) = tree.node(node).map(|n| &n.body) else {
            continue;
        };
        if content.is_empty() {
            continue;
        }
        let what = || format!("file {}", path_of_inode(&entries, &names, ino));
        let mut reader = open_content(content, opts.spool).map_err(|e| Error::io(what(), e))?;
        chunker.add_file(ino, &mut reader, content.len(), &what, opts.progress)?;
    }
    let written = chunker.finish()?;

    // Blob table: dictionary blobs in dictionary order, then the new blob.
    let mut used_dict: Vec<u32> = written
        .chunks
        .iter()
        .filter_map(|c| match c.home {
            Home::Dict(b) => Some(b),
            Home::New => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    used_dict.sort_unstable();
    let mut blobs = Vec::new();
    let mut dict_map = HashMap::new();
    for b in &used_dict {
        let blob = opts
            .dict
            .as_ref()
            .and_then(|d| d.blobs.get(*b as usize))
            .ok_or_else(|| Error::Invalid(format!("dictionary blob #{b} missing")))?;
        dict_map.insert(*b, blobs.len() as u32);
        blobs.push(blob.clone());
    }
    let dict_blobs = blobs.clone();
    let new_blob = blobs.len() as u32;
    if let Some(b) = &written.blob {
        blobs.push(b.clone());
    }
    let chunks = written
        .chunks
        .iter()
        .map(|c| Chunk {
            blob: match c.home {
                Home::New => new_blob,
                Home::Dict(b) => dict_map.get(&b).copied().unwrap_or(new_blob),
            },
            offset: c.offset,
            stored_len: c.stored_len,
            raw_len: c.raw_len,
            digest: c.digest,
        })
        .collect();

    let mut file_chunks = Vec::new();
    for (ino, list) in inodes.iter_mut().zip(&written.files) {
        if ino.kind != Kind::File {
            continue;
        }
        let start = file_chunks.len() as u32;
        file_chunks.extend_from_slice(list);
        ino.chunks = start..file_chunks.len() as u32;
    }
    let mut index = Index {
        params: opts.params,
        blobs,
        chunks,
        inodes,
        entries,
        names,
        file_chunks,
        prefetch,
        ..Index::default()
    };
    index.derive();
    for ino in index.inodes.iter_mut() {
        if ino.kind == Kind::File {
            let r = ino.chunks.start as usize..ino.chunks.end as usize;
            ino.size = index
                .file_chunks
                .get(r)
                .unwrap_or_default()
                .iter()
                .filter_map(|&c| index.chunks.get(c as usize))
                .map(|c| u64::from(c.raw_len))
                .sum();
        }
    }
    Ok(Built {
        index,
        data_blob: written.blob,
        dict_blobs,
        stats: written.stats,
        prefetch_missing,
    })
}

/// Only used for error messages, so a linear search is fine.
fn path_of_inode(entries: &[Entry], names: &[u8], ino: u32) -> String {
    let Some(first) = entries.iter().position(|e| e.inode == ino) else {
        return format!("inode #{ino}");
    };
    let mut parts = Vec::new();
    let mut at = first;
    while at != 0 {
        let Some(e) = entries.get(at) else { break };
        parts.push(
            String::from_utf8_lossy(
                names
                    .get(e.name.start as usize..e.name.end as usize)
                    .unwrap_or_default(),
            )
            .into_owned(),
        );
        at = e.parent as usize;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// A reader over a file's content, wherever it is kept.
fn open_content<'a>(
    content: &Content,
    spool: Option<&'a File>,
) -> std::io::Result<Box<dyn Read + 'a>> {
    match content {
        Content::Empty => Ok(Box::new(std::io::empty())),
        Content::Spool { offset, len } => {
            let file = spool.ok_or_else(|| std::io::Error::other("no spool file"))?;
            Ok(Box::new(SpoolReader {
                file,
                pos: *offset,
                end: offset + len,
            }))
        }
        Content::Path { path, .. } => Ok(Box::new(File::open(path)?)),
    }
}

struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The staging helper used by every destination: a temp file in `dir`.
pub fn staging_file(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::NamedTempFile::new_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))
}
