//! `inspect`: what an image holds — counts, sizes, chunking and dedup figures, and
//! optionally the tree itself.

use std::collections::HashSet;
use std::fmt::Write;

use crate::artifact::{Form, LazyImage};
use crate::index::{Index, Kind};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub others: u64,
    pub hardlinks: u64,
    /// Sum of file sizes (hardlinked inodes once).
    pub file_bytes: u64,
    /// Chunk references made by files.
    pub chunk_refs: u64,
    pub chunks: u64,
    /// Uncompressed bytes of the unique chunks.
    pub chunk_bytes: u64,
    pub compressed_bytes: u64,
    /// Blob number → chunks and compressed bytes the image uses there.
    pub per_blob: Vec<(u64, u64)>,
}

pub fn stats(index: &Index) -> Stats {
    let mut s = Stats {
        entries: index.entries.len() as u64,
        per_blob: vec![(0, 0); index.blobs.len()],
        ..Stats::default()
    };
    let mut seen_inode = HashSet::new();
    for e in &index.entries {
        let Some(ino) = index.inode(e.inode) else {
            continue;
        };
        if !seen_inode.insert(e.inode) {
            s.hardlinks += 1;
            continue;
        }
        match ino.kind {
            Kind::Dir => s.dirs += 1,
            Kind::File => {
                s.files += 1;
                s.file_bytes += ino.size;
                s.chunk_refs += u64::from(ino.chunks.end - ino.chunks.start);
            }
            Kind::Symlink => s.symlinks += 1,
            _ => s.others += 1,
        }
    }
    for c in &index.chunks {
        s.chunks += 1;
        s.chunk_bytes += u64::from(c.raw_len);
        s.compressed_bytes += u64::from(c.stored_len);
        if let Some(b) = s.per_blob.get_mut(c.blob as usize) {
            b.0 += 1;
            b.1 += u64::from(c.stored_len);
        }
    }
    s
}

pub fn summary(image: &LazyImage, index: &Index) -> String {
    let s = stats(index);
    let mut out = String::new();
    let p = index.params;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let form = match image.form {
        Form::Image => "runnable image",
        Form::Artifact => "artifact",
    };
    let _ = writeln!(out, "manifest   {} ({form})", image.manifest_digest);
    let _ = writeln!(
        out,
        "index      {} ({} bytes)",
        image.index_digest,
        image.index_bytes.len()
    );
    let _ = writeln!(
        out,
        "chunking   fastcdc min {} avg {} max {}, zstd level {}",
        p.min, p.avg, p.max, p.level
    );
    let _ = writeln!(
        out,
        "entries    {} ({} dirs, {} files, {} symlinks, {} other, {} extra hardlinks)",
        s.entries, s.dirs, s.files, s.symlinks, s.others, s.hardlinks
    );
    let _ = writeln!(
        out,
        "file data  {} bytes in {} chunk references",
        s.file_bytes, s.chunk_refs
    );
    let _ = writeln!(
        out,
        "chunks     {} unique, {} bytes ({:.2}x dedup), {} bytes compressed ({:.2}x)",
        s.chunks,
        s.chunk_bytes,
        ratio(s.file_bytes, s.chunk_bytes),
        s.compressed_bytes,
        ratio(s.chunk_bytes, s.compressed_bytes)
    );
    let _ = writeln!(out, "prefetch   {} files", index.prefetch.len());
    for (b, (blob, (n, bytes))) in index.blobs.iter().zip(&s.per_blob).enumerate() {
        let _ = writeln!(
            out,
            "blob #{b}    {} ({} bytes): {n} chunks, {bytes} bytes used",
            blob.digest, blob.size
        );
    }
    out
}

/// `ls -l`-like listing, one entry per line in index order.
pub fn tree_listing(index: &Index) -> String {
    let mut out = String::new();
    for (id, e) in index.entries.iter().enumerate() {
        let Some(ino) = index.inode(e.inode) else {
            continue;
        };
        let kind = match ino.kind {
            Kind::Dir => 'd',
            Kind::File => '-',
            Kind::Symlink => 'l',
            Kind::CharDev => 'c',
            Kind::BlockDev => 'b',
            Kind::Fifo => 'p',
        };
        let _ = write!(
            out,
            "{kind}{:04o} {:>5}:{:<5} ino {:>6} links {:>2} {:>12} {}",
            ino.mode,
            ino.uid,
            ino.gid,
            e.inode + 1,
            index.nlink.get(e.inode as usize).copied().unwrap_or(0),
            ino.size,
            index.display_path(id as u32)
        );
        if ino.kind == Kind::Symlink {
            let _ = write!(out, " -> {}", String::from_utf8_lossy(&ino.target));
        }
        out.push('\n');
    }
    out
}
