//! Byte encoding of the index blob (see `FORMAT.md`): a fixed header, then one zstd frame
//! holding a body of LEB128 varints and length-prefixed byte strings.
//!
//! The decoder treats its input as hostile. Every count is bounded by the bytes left, every
//! reference is checked against the table it points into, and the tree rules (parents
//! before children, sorted unique names, no `/`, NUL, `.` or `..`) are enforced, so that
//! code walking a decoded [`Index`] needs no further checks and cannot loop.

use std::collections::HashSet;

use shoal_common::{Digest, Sha256Hasher};

use crate::error::{Error, Result};
use crate::index::{BlobRef, Chunk, ChunkParams, Entry, Index, Inode, Kind, Mtime};

pub const MAGIC: &[u8; 8] = b"SHOALIDX";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 56;
/// Decompressed body limit: far above a million-file image, far below an allocation bomb.
pub const MAX_BODY: u64 = 1 << 30;
pub const MAX_NAME: usize = 255;
pub const MAX_TARGET: usize = 4095;
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65536;
/// fastcdc's own upper bound for a maximum chunk size.
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;

const FLAG_MTIME: u64 = 1;

/// Serialize an index. The output depends only on the index contents.
pub fn encode(index: &Index, level: i32) -> Result<Vec<u8>> {
    let mut b = Vec::with_capacity(64 + index.entries.len() * 48 + index.chunks.len() * 48);
    let p = &index.params;
    put(&mut b, u64::from(p.min));
    put(&mut b, u64::from(p.avg));
    put(&mut b, u64::from(p.max));
    put(&mut b, zigzag(i64::from(p.level)));
    let has_mtime = index.inodes.iter().any(|i| i.mtime.is_some());
    put(&mut b, if has_mtime { FLAG_MTIME } else { 0 });

    put(&mut b, index.blobs.len() as u64);
    for blob in &index.blobs {
        b.extend_from_slice(blob.digest.as_bytes());
        put(&mut b, blob.size);
    }
    put(&mut b, index.chunks.len() as u64);
    for c in &index.chunks {
        put(&mut b, u64::from(c.blob));
        put(&mut b, c.offset);
        put(&mut b, u64::from(c.csize));
        put(&mut b, u64::from(c.usize));
        b.extend_from_slice(c.digest.as_bytes());
    }
    put(&mut b, index.inodes.len() as u64);
    for ino in &index.inodes {
        b.push(ino.kind.code());
        put(&mut b, u64::from(ino.mode));
        put(&mut b, u64::from(ino.uid));
        put(&mut b, u64::from(ino.gid));
        if has_mtime {
            let m = ino.mtime.unwrap_or_default();
            put(&mut b, zigzag(m.sec));
            put(&mut b, u64::from(m.nsec));
        }
        match ino.kind {
            Kind::File => {
                let ids = index
                    .file_chunks
                    .get(ino.chunks.start as usize..ino.chunks.end as usize)
                    .ok_or_else(|| Error::index("encode", "file chunk range out of bounds"))?;
                put(&mut b, ids.len() as u64);
                for &id in ids {
                    put(&mut b, u64::from(id));
                }
            }
            Kind::Symlink => put_bytes(&mut b, &ino.target),
            Kind::CharDev | Kind::BlockDev => {
                put(&mut b, u64::from(ino.rdev.0));
                put(&mut b, u64::from(ino.rdev.1));
            }
            Kind::Dir | Kind::Fifo => {}
        }
        put(&mut b, ino.xattrs.len() as u64);
        for (k, v) in &ino.xattrs {
            put_bytes(&mut b, k);
            put_bytes(&mut b, v);
        }
    }
    put(&mut b, index.entries.len() as u64);
    for e in &index.entries {
        put(&mut b, u64::from(e.parent));
        put_bytes(&mut b, index.name(e));
        put(&mut b, u64::from(e.inode));
    }
    put(&mut b, index.prefetch.len() as u64);
    for &p in &index.prefetch {
        put(&mut b, u64::from(p));
    }

    let mut hasher = Sha256Hasher::new();
    hasher.update(&b);
    let body_digest = hasher.finish();
    let compressed =
        zstd::bulk::compress(&b, level).map_err(|e| Error::io("compressing index", e))?;
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(body_digest.as_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

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
        let csize = r.u32(&at)?;
        let usize = r.u32(&at)?;
        let digest = r.digest(&at)?;
        let b = index
            .blobs
            .get(blob as usize)
            .ok_or_else(|| Error::index(&at, format!("data blob #{blob} does not exist")))?;
        if usize == 0 || usize > MAX_CHUNK {
            return Err(Error::index(
                &at,
                format!("uncompressed size {usize} out of range"),
            ));
        }
        if csize == 0 || u64::from(csize) > zstd_bound(usize) {
            return Err(Error::index(
                &at,
                format!("compressed size {csize} out of range"),
            ));
        }
        if offset
            .checked_add(u64::from(csize))
            .is_none_or(|end| end > b.size)
        {
            return Err(Error::index(
                &at,
                format!(
                    "bytes {offset}+{csize} lie outside blob {} ({} bytes)",
                    b.digest, b.size
                ),
            ));
        }
        index.chunks.push(Chunk {
            blob,
            offset,
            csize,
            usize,
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
                    .checked_add(u64::from(c.usize))
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

/// Names that could escape or confuse a path walk are never valid.
pub fn validate_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    if name.len() > MAX_NAME {
        return Err("name longer than 255 bytes");
    }
    Ok(())
}

pub fn validate_params(p: &ChunkParams) -> std::result::Result<(), String> {
    use fastcdc::v2020::{
        AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
    };
    if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&p.min)
        || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&p.avg)
        || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&p.max)
        || p.min > p.avg
        || p.avg > p.max
    {
        return Err(format!(
            "chunk sizes min {} avg {} max {} must satisfy {MINIMUM_MIN}..={MINIMUM_MAX}, {AVERAGE_MIN}..={AVERAGE_MAX}, {MAXIMUM_MIN}..={MAXIMUM_MAX} and min <= avg <= max",
            p.min, p.avg, p.max
        ));
    }
    if !(-7..=22).contains(&p.level) {
        return Err(format!("compression level {} outside -7..=22", p.level));
    }
    Ok(())
}

/// Upper bound of a zstd frame for `n` input bytes (ZSTD_compressBound plus frame header slack).
fn zstd_bound(n: u32) -> u64 {
    let n = u64::from(n);
    n + (n >> 8) + (128 << 10 >> 11) + 64
}

fn put(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    put(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self, at: &str) -> Error {
        Error::index(at, format!("truncated at body byte {}", self.pos))
    }

    fn byte(&mut self, at: &str) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated(at))?;
        self.pos += 1;
        Ok(b)
    }

    fn var(&mut self, at: &str) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(at)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Error::index(at, "varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::index(at, "varint longer than 10 bytes"))
    }

    fn u32(&mut self, at: &str) -> Result<u32> {
        let v = self.var(at)?;
        u32::try_from(v).map_err(|_| Error::index(at, format!("value {v} exceeds 32 bits")))
    }

    /// A count of items that each take at least `min_item` bytes: bounded by what is left,
    /// so a forged count cannot make us allocate.
    fn count(&mut self, at: &str, min_item: usize) -> Result<usize> {
        let n = self.var(at)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(Error::index(
                at,
                format!("count {n} exceeds the remaining {left} bytes"),
            ));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, at: &str, max: usize) -> Result<&'a [u8]> {
        let n = self.var(at)?;
        if n > max as u64 {
            return Err(Error::index(
                at,
                format!("string of {n} bytes exceeds {max}"),
            ));
        }
        let end = self.pos + n as usize;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(at))?;
        self.pos = end;
        Ok(s)
    }

    fn digest(&mut self, at: &str) -> Result<Digest> {
        let s = self
            .buf
            .get(self.pos..self.pos + 32)
            .ok_or_else(|| self.truncated(at))?;
        let mut d = [0u8; 32];
        d.copy_from_slice(s);
        self.pos += 32;
        Ok(Digest::from_bytes(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put(&mut b, v);
            let mut r = Reader { buf: &b, pos: 0 };
            assert_eq!(r.var("t").unwrap(), v);
            assert_eq!(r.pos, b.len());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut r = Reader {
            buf: &[0xff; 11],
            pos: 0,
        };
        assert!(r.var("t").is_err());
    }

    #[test]
    fn names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(validate_name(bad).is_err());
        }
        assert!(validate_name(&[b'x'; 256]).is_err());
        assert!(validate_name("ünï".as_bytes()).is_ok());
        assert!(validate_name(b"...").is_ok());
    }
}
