//! Bytes → [`Index`], treating the input as hostile (see the module above).

use std::collections::HashSet;

use shoal_common::Digest;

use super::names::{validate_name, validate_params};
use super::varint::{unzigzag, Reader};
use super::{
    FLAG_MTIME, HEADER_LEN, MAGIC, MAX_BODY, MAX_CHUNK, MAX_NAME, MAX_TARGET, MAX_XATTR_NAME,
    MAX_XATTR_VALUE, VERSION,
};
use crate::error::{Error, Result};
use crate::index::{BlobRef, Chunk, ChunkParams, Entry, Index, Inode, Kind, Mtime};

/// Parse and fully validate an index blob.
pub fn decode(blob: &[u8]) -> Result<Index> {
    let header = blob.get(..HEADER_LEN).ok_or_else(|| {
        Error::index(
            "header",
            format!("blob is {} bytes, shorter than the header", blob.len()),
        )
    })?;
    // `header` is exactly HEADER_LEN bytes, so the fixed slices below are in bounds.
    if &header[..8] != MAGIC {
        return Err(Error::index("header", "bad magic (not a lazyfs index)"));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(Error::index(
            "header",
            format!("unsupported version {version}"),
        ));
    }
    if header[10..16].iter().any(|&b| b != 0) {
        return Err(Error::index("header", "unknown flags set"));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[16..24]);
    let body_len = u64::from_le_bytes(len_bytes);
    if body_len > MAX_BODY {
        return Err(Error::index(
            "header",
            format!("body length {body_len} exceeds limit"),
        ));
    }
    let mut want = [0u8; 32];
    want.copy_from_slice(&header[24..56]);
    let compressed = blob.get(HEADER_LEN..).unwrap_or_default();
    // Stream with a cap rather than preallocating what a forged header claims.
    let mut body = Vec::new();
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| Error::index("body", format!("zstd: {e}")))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(decoder, body_len + 1), &mut body)
        .map_err(|e| Error::index("body", format!("zstd: {e} (truncated or corrupt)")))?;
    if body.len() as u64 != body_len {
        return Err(Error::index(
            "body",
            format!(
                "decompressed to {} bytes, header says {body_len}",
                body.len()
            ),
        ));
    }
    if Digest::of(&body) != Digest::from_bytes(want) {
        return Err(Error::index(
            "body",
            "sha256 of the body does not match the header",
        ));
    }
    decode_body(&body)
}

/// Parse a decompressed body (exposed for fuzzing, which should not spend its time in zstd).
pub fn decode_body(body: &[u8]) -> Result<Index> {
    let mut r = Reader { buf: body, pos: 0 };
    let mut index = Index::default();

    let at = |what: &str| what.to_string();
    let min = r.u32(&at("params"))?;
    let avg = r.u32(&at("params"))?;
    let max = r.u32(&at("params"))?;
    let level = unzigzag(r.var(&at("params"))?);
    let level = i32::try_from(level)
        .map_err(|_| Error::index("params", "compression level out of range"))?;
    let params = ChunkParams {
        min,
        avg,
        max,
        level,
    };
    validate_params(&params).map_err(|reason| Error::index("params", reason))?;
    index.params = params;
    let flags = r.var("flags")?;
    if flags & !FLAG_MTIME != 0 {
        return Err(Error::index("flags", format!("unknown flags {flags:#x}")));
    }
    let has_mtime = flags & FLAG_MTIME != 0;

    let n = r.count("blob table", 33)?;
    let mut seen = HashSet::with_capacity(n);
    for i in 0..n {
        let at = format!("blob #{i}");
        let digest = r.digest(&at)?;
        let size = r.var(&at)?;
        if !seen.insert(digest) {
            return Err(Error::index(at, format!("{digest} listed twice")));
        }
        index.blobs.push(BlobRef { digest, size });
    }

    let n = r.count("chunk table", 36)?;
    index.chunks.reserve(n);
    for i in 0..n {
        let at = format!("chunk #{i}");
        let blob = r.u32(&at)?;
        let offset = r.var(&at)?;
        let stored_len = r.u32(&at)?;
        let raw_len = r.u32(&at)?;
        let digest = r.digest(&at)?;
        let b = index
            .blobs
            .get(blob as usize)
            .ok_or_else(|| Error::index(&at, format!("data blob #{blob} does not exist")))?;
        if raw_len == 0 || raw_len > MAX_CHUNK {
            return Err(Error::index(
                &at,
                format!("uncompressed size {raw_len} out of range"),
            ));
        }
        if stored_len == 0 || u64::from(stored_len) > zstd_bound(raw_len) {
            return Err(Error::index(
                &at,
                format!("compressed size {stored_len} out of range"),
            ));
        }
        if offset
            .checked_add(u64::from(stored_len))
            .is_none_or(|end| end > b.size)
        {
            return Err(Error::index(
                &at,
                format!(
                    "bytes {offset}+{stored_len} lie outside blob {} ({} bytes)",
                    b.digest, b.size
                ),
            ));
        }
        index.chunks.push(Chunk {
            blob,
            offset,
            stored_len,
            raw_len,
            digest,
        });
    }

    let n = r.count("inode table", 5)?;
    index.inodes.reserve(n);
    for i in 0..n {
        let at = format!("inode #{i}");
        let ino = decode_inode(&mut r, &mut index, has_mtime, &at)?;
        index.inodes.push(ino);
    }

    let n = r.count("entry table", 3)?;
    index.entries.reserve(n);
    let mut dir_seen = vec![false; index.inodes.len()];
    let mut next_inode = 0u32;
    for i in 0..n {
        decode_entry(&mut r, &mut index, i, &mut dir_seen, &mut next_inode)?;
    }
    if index.entries.is_empty() {
        return Err(Error::index("entry table", "no root entry"));
    }
    if next_inode as usize != index.inodes.len() {
        return Err(Error::index(
            format!("inode #{next_inode}"),
            "not named by any entry",
        ));
    }

    let n = r.count("prefetch list", 1)?;
    for i in 0..n {
        let at = format!("prefetch #{i}");
        let ino = r.u32(&at)?;
        match index.inodes.get(ino as usize) {
            Some(x) if x.kind == Kind::File => index.prefetch.push(ino),
            _ => return Err(Error::index(at, format!("inode #{ino} is not a file"))),
        }
    }
    if r.pos != body.len() {
        return Err(Error::index(
            "body",
            format!("{} trailing bytes", body.len() - r.pos),
        ));
    }
    index.derive();
    Ok(index)
}

fn decode_inode(r: &mut Reader<'_>, index: &mut Index, has_mtime: bool, at: &str) -> Result<Inode> {
    let code = r.byte(at)?;
    let kind =
        Kind::from_code(code).ok_or_else(|| Error::index(at, format!("unknown kind {code}")))?;
    let mode = r.u32(at)?;
    if mode & !0o7777 != 0 {
        return Err(Error::index(
            at,
            format!("mode {mode:#o} has bits outside 0o7777"),
        ));
    }
    let uid = r.u32(at)?;
    let gid = r.u32(at)?;
    let mtime = if has_mtime {
        let sec = unzigzag(r.var(at)?);
        let nsec = r.u32(at)?;
        if nsec >= 1_000_000_000 {
            return Err(Error::index(at, "mtime nanoseconds out of range"));
        }
        Some(Mtime { sec, nsec })
    } else {
        None
    };
    let mut ino = Inode {
        kind,
        mode,
        uid,
        gid,
        mtime,
        size: 0,
        target: Vec::new(),
        rdev: (0, 0),
        xattrs: Vec::new(),
        chunks: 0..0,
    };
    match kind {
        Kind::File => {
            let n = r.count(at, 1)?;
            let start = u32::try_from(index.file_chunks.len())
                .map_err(|_| Error::index(at, "too many file chunks"))?;
            let mut size = 0u64;
            for _ in 0..n {
                let id = r.u32(at)?;
                let c = index
                    .chunks
                    .get(id as usize)
                    .ok_or_else(|| Error::index(at, format!("chunk #{id} does not exist")))?;
                size = size
                    .checked_add(u64::from(c.raw_len))
                    .ok_or_else(|| Error::index(at, "file size overflows"))?;
                index.file_chunks.push(id);
            }
            let end = u32::try_from(index.file_chunks.len())
                .map_err(|_| Error::index(at, "too many file chunks"))?;
            ino.chunks = start..end;
            ino.size = size;
        }
        Kind::Symlink => {
            let t = r.bytes(at, MAX_TARGET)?;
            if t.is_empty() || t.contains(&0) {
                return Err(Error::index(at, "symlink target empty or contains NUL"));
            }
            ino.target = t.to_vec();
            ino.size = t.len() as u64;
        }
        Kind::CharDev | Kind::BlockDev => ino.rdev = (r.u32(at)?, r.u32(at)?),
        Kind::Dir | Kind::Fifo => {}
    }
    let n = r.count(at, 2)?;
    for _ in 0..n {
        let k = r.bytes(at, MAX_XATTR_NAME)?;
        let v = r.bytes(at, MAX_XATTR_VALUE)?;
        if k.is_empty() || k.contains(&0) {
            return Err(Error::index(at, "xattr name empty or contains NUL"));
        }
        if let Some((prev, _)) = ino.xattrs.last() {
            if prev.as_slice() >= k {
                return Err(Error::index(at, "xattrs not sorted or duplicated"));
            }
        }
        ino.xattrs.push((k.to_vec(), v.to_vec()));
    }
    Ok(ino)
}

fn decode_entry(
    r: &mut Reader<'_>,
    index: &mut Index,
    i: usize,
    dir_seen: &mut [bool],
    next_inode: &mut u32,
) -> Result<()> {
    let at = || {
        let parent = index.entries.last().map_or(0, |e| e.parent);
        format!("entry #{i} (after {})", path_of(index, parent))
    };
    let parent = r.u32(&at())?;
    let name = r.bytes(&at(), MAX_NAME)?;
    let inode = r.u32(&at())?;
    let here = |idx: &Index| {
        format!(
            "entry #{i} ({}/{})",
            path_of(idx, parent),
            String::from_utf8_lossy(name)
        )
    };
    if i == 0 {
        if parent != 0 || !name.is_empty() {
            return Err(Error::index(
                "entry #0",
                "root must have parent 0 and an empty name",
            ));
        }
    } else {
        if parent as usize >= i {
            return Err(Error::index(
                here(index),
                "parent does not precede the entry",
            ));
        }
        validate_name(name).map_err(|reason| Error::index(here(index), reason))?;
        let p = index.entries.get(parent as usize);
        let parent_is_dir = p
            .and_then(|p| index.inodes.get(p.inode as usize))
            .is_some_and(|ino| ino.kind == Kind::Dir);
        if !parent_is_dir {
            return Err(Error::index(here(index), "parent is not a directory"));
        }
        if let Some(prev) = index.entries.last() {
            if parent < prev.parent {
                return Err(Error::index(
                    here(index),
                    "entries not in breadth-first order",
                ));
            }
            if parent == prev.parent && name <= index.name(prev) {
                return Err(Error::index(here(index), "names not sorted or duplicated"));
            }
        }
    }
    let ino = index
        .inodes
        .get(inode as usize)
        .ok_or_else(|| Error::index(here(index), format!("inode #{inode} does not exist")))?;
    if i == 0 && ino.kind != Kind::Dir {
        return Err(Error::index("entry #0", "root is not a directory"));
    }
    // Inodes are numbered in order of first use: canonical, and proves none is orphaned.
    if inode > *next_inode {
        return Err(Error::index(
            here(index),
            format!("inode #{inode} used before #{next_inode}"),
        ));
    }
    if inode == *next_inode {
        *next_inode += 1;
    } else if ino.kind == Kind::Dir {
        return Err(Error::index(here(index), "directory hardlinked"));
    }
    if ino.kind == Kind::Dir {
        if let Some(seen) = dir_seen.get_mut(inode as usize) {
            *seen = true;
        }
    }
    let start = u32::try_from(index.names.len())
        .map_err(|_| Error::index(here(index), "names too long"))?;
    index.names.extend_from_slice(name);
    let end = u32::try_from(index.names.len())
        .map_err(|_| Error::index(here(index), "names too long"))?;
    index.entries.push(Entry {
        parent,
        name: start..end,
        inode,
    });
    Ok(())
}

/// Path of an entry of a partially decoded index (parents are already validated).
fn path_of(index: &Index, entry: u32) -> String {
    let mut parts = Vec::new();
    let mut at = entry;
    while at != 0 {
        let Some(e) = index.entries.get(at as usize) else {
            break;
        };
        parts.push(String::from_utf8_lossy(index.name(e)).into_owned());
        if e.parent >= at {
            break;
        }
        at = e.parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Upper bound of a zstd frame for `n` input bytes (ZSTD_compressBound plus frame header slack).
fn zstd_bound(n: u32) -> u64 {
    let n = u64::from(n);
    n + (n >> 8) + (128 << 10 >> 11) + 64
}
