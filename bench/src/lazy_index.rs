//! What a set of files needs from a lazyfs image: which chunks, how many compressed bytes,
//! and how many bytes of the data blob once those chunks are rounded out to P2P pieces.
//!
//! `shoal-bench lazy-cluster` compares the origin's egress with "the startup set", and there
//! are three honest sizes of it: the files' own bytes, the compressed chunks they use (what a
//! reader fetching exact ranges needs), and the pieces covering those chunks (what a peer
//! fetching whole pieces needs: with 64 KiB pieces a 10 KB chunk costs a whole piece, two
//! when it straddles a boundary). Only the index knows where chunks lie, so this module reads
//! it, straight from the registry's storage directory.
//!
//! It parses just enough of the format (`lazyfs/FORMAT.md` §3) to map paths to chunk
//! locations, rather than linking the `shoal-lazyfs` library: the benchmark drives the
//! binaries under test and stays independent of their crates (and their FUSE dependencies).
//! The input is the index the benchmark just converted, so the parser only bounds-checks
//! (every read fails cleanly on a short or odd body); `shoal-lazyfs check` is the validator.
//! The body is zstd-compressed; the `zstd` program decompresses it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shoal_common::Digest;

use crate::lazyfs_tree::FileSpec;

/// Where one chunk lies.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    blob: u32,
    offset: u64,
    csize: u32,
}

/// The parts of an index the benchmark uses.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Data blobs' sizes, in index order.
    blob_sizes: Vec<u64>,
    chunks: Vec<Chunk>,
    /// Every regular file's chunk numbers, by path relative to the root.
    files: HashMap<PathBuf, Vec<u32>>,
}

/// The image as stored in the registry: its blobs' sizes and the parsed index.
pub(crate) struct StoredImage {
    pub(crate) index_bytes: u64,
    pub(crate) data_bytes: u64,
    pub(crate) index: Index,
}

/// What a set of files needs from the image (see the module doc).
/// Piece sizes the set is also rounded out to, besides `--set-piece-size`.
const OTHER_PIECE_SIZES: [u64; 6] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];

/// The pieces of one size that cover a set's chunks.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PieceCover {
    pub(crate) piece_size: u64,
    pub(crate) pieces: usize,
    pub(crate) bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SetNeeds {
    pub(crate) files: usize,
    /// The files' sizes, summed.
    pub(crate) file_bytes: u64,
    /// Distinct chunks the files use.
    pub(crate) chunks: usize,
    /// Their compressed sizes, summed: what exact range requests fetch.
    pub(crate) chunk_bytes: u64,
    pub(crate) piece_size: u64,
    /// Distinct pieces (`piece_size`-aligned spans of the data blobs) the chunks touch.
    pub(crate) pieces: usize,
    /// Their bytes (a blob's last piece may be short).
    pub(crate) piece_bytes: u64,
    /// The same for other piece sizes: what the piece size costs a sparse reader.
    pub(crate) by_piece_size: Vec<PieceCover>,
    /// The index blob, which every mount fetches whole first.
    pub(crate) index_bytes: u64,
    /// All data blobs of the image.
    pub(crate) data_blob_bytes: u64,
}

impl StoredImage {
    /// Reads `REPO:TAG`'s manifest and index from a docker-registry storage directory.
    pub(crate) fn load(storage: &Path, repo: &str, tag: &str, scratch: &Path) -> Result<Self> {
        let v2 = storage.join("docker/registry/v2");
        let link = v2.join(format!(
            "repositories/{repo}/_manifests/tags/{tag}/current/link"
        ));
        let manifest_digest = std::fs::read_to_string(&link)
            .with_context(|| format!("reading {}", link.display()))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&read_blob(&v2, manifest_digest.trim())?)
                .context("parsing the lazyfs manifest")?;
        let layers = manifest["layers"]
            .as_array()
            .context("the manifest has no layers")?;
        let (index_layer, data_layers) = layers
            .split_first()
            .context("the manifest has no index layer")?;
        let size = |l: &serde_json::Value| l["size"].as_u64().context("a layer has no size");
        let index_digest = index_layer["digest"]
            .as_str()
            .context("the index layer has no digest")?;
        let blob = read_blob(&v2, index_digest)?;
        let body = decompress_body(&blob, scratch)?;
        Ok(StoredImage {
            index_bytes: size(index_layer)?,
            data_bytes: data_layers.iter().map(size).sum::<Result<u64>>()?,
            index: Index::parse(&body)?,
        })
    }

    /// What `files` need, with pieces of `piece_size` bytes (and of [`OTHER_PIECE_SIZES`]).
    pub(crate) fn needs(&self, files: &[&FileSpec], piece_size: u64) -> Result<SetNeeds> {
        let ix = &self.index;
        let mut chunks = BTreeSet::new();
        for f in files {
            let ids = ix
                .files
                .get(&f.path)
                .with_context(|| format!("{} is not a file in the index", f.path.display()))?;
            chunks.extend(ids.iter().copied());
        }
        let mut chunk_bytes = 0;
        for &id in &chunks {
            let c = ix
                .chunks
                .get(id as usize)
                .context("chunk number out of range")?;
            chunk_bytes += u64::from(c.csize);
        }
        let piece_size = piece_size.max(1);
        let mut sizes: BTreeSet<u64> = OTHER_PIECE_SIZES.into_iter().collect();
        sizes.insert(piece_size);
        let by_piece_size = sizes
            .into_iter()
            .map(|size| self.cover(&chunks, size))
            .collect::<Result<Vec<_>>>()?;
        let main = self.cover(&chunks, piece_size)?;
        Ok(SetNeeds {
            files: files.len(),
            file_bytes: files.iter().map(|f| f.size).sum(),
            chunks: chunks.len(),
            chunk_bytes,
            piece_size,
            pieces: main.pieces,
            piece_bytes: main.bytes,
            by_piece_size,
            index_bytes: self.index_bytes,
            data_blob_bytes: self.data_bytes,
        })
    }

    /// The `piece_size`-aligned spans of the data blobs that `chunks` touch.
    fn cover(&self, chunks: &BTreeSet<u32>, piece_size: u64) -> Result<PieceCover> {
        let ix = &self.index;
        let mut pieces = HashSet::new();
        let mut bytes = 0;
        for &id in chunks {
            let c = ix
                .chunks
                .get(id as usize)
                .context("chunk number out of range")?;
            let blob_size = *ix.blob_sizes.get(c.blob as usize).context("no such blob")?;
            let last = c.offset + u64::from(c.csize).max(1) - 1;
            for p in c.offset / piece_size..=last / piece_size {
                if pieces.insert((c.blob, p)) {
                    bytes += piece_size.min(blob_size.saturating_sub(p * piece_size));
                }
            }
        }
        Ok(PieceCover {
            piece_size,
            pieces: pieces.len(),
            bytes,
        })
    }
}

/// A blob's bytes from the registry's content-addressed store.
fn read_blob(v2: &Path, digest: &str) -> Result<Vec<u8>> {
    let d: Digest = digest
        .parse()
        .with_context(|| format!("bad digest {digest:?}"))?;
    // A sha256 digest's hex is always 64 characters, so the 2-character prefix exists.
    let hex = d.hex();
    let path = v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Header: magic (8), version (2), flags (2), reserved (4), body length (8), body sha256 (32).
const HEADER_LEN: usize = 56;

/// The index blob's body, decompressed by `zstd -d` and checked against the header's length
/// and sha256.
fn decompress_body(blob: &[u8], scratch: &Path) -> Result<Vec<u8>> {
    if blob.len() < HEADER_LEN || &blob[..8] != b"SHOALIDX" {
        bail!("not a lazyfs index blob");
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&blob[16..24]);
    let body_len = u64::from_le_bytes(len);
    let mut want = [0u8; 32];
    want.copy_from_slice(&blob[24..HEADER_LEN]);
    let frames = scratch.join("index.zst");
    std::fs::write(&frames, &blob[HEADER_LEN..])?;
    let out = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(&frames)
        .output()
        .context("running zstd (install the Debian package zstd)")?;
    std::fs::remove_file(&frames).ok();
    if !out.status.success() {
        bail!(
            "zstd -d failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.len() as u64 != body_len || Digest::of(&out.stdout) != Digest::from_bytes(want) {
        bail!("the index body does not match its header's length and sha256");
    }
    Ok(out.stdout)
}

/// A cursor over the body; every read fails cleanly past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn var(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).context("index body ends early")?;
            self.pos += 1;
            v |= u64::from(b & 0x7F)
                .checked_shl(shift)
                .context("varint too long")?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    }

    fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.var()?).context("value does not fit 32 bits")
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).context("length overflow")?;
        let s = self
            .buf
            .get(self.pos..end)
            .context("index body ends early")?;
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<&[u8]> {
        let n = usize::try_from(self.var()?)?;
        self.bytes(n)
    }

    /// A count of items at least `min` bytes each, bounded by what is left.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = usize::try_from(self.var()?)?;
        if n > (self.buf.len() - self.pos) / min {
            bail!("count {n} exceeds the body");
        }
        Ok(n)
    }
}

const KIND_FILE: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_CHARDEV: u8 = 4;
const KIND_BLOCKDEV: u8 = 5;
const FLAG_MTIME: u64 = 1;

impl Index {
    /// Parses a decompressed body (`FORMAT.md` §3.1).
    fn parse(body: &[u8]) -> Result<Index> {
        use std::os::unix::ffi::OsStrExt;
        let mut r = Reader { buf: body, pos: 0 };
        let mut ix = Index::default();
        for _ in 0..4 {
            r.var()?; // chunking params and compression level
        }
        let has_mtime = r.var()? & FLAG_MTIME != 0;
        for _ in 0..r.count(33)? {
            r.bytes(32)?;
            ix.blob_sizes.push(r.var()?);
        }
        for _ in 0..r.count(36)? {
            let (blob, offset, csize) = (r.u32()?, r.var()?, r.u32()?);
            r.var()?; // uncompressed size
            r.bytes(32)?; // sha256
            ix.chunks.push(Chunk {
                blob,
                offset,
                csize,
            });
        }
        // Per inode: its chunk numbers when it is a file.
        let mut inode_chunks: Vec<Option<Vec<u32>>> = Vec::new();
        for _ in 0..r.count(5)? {
            let kind = *r.bytes(1)?.first().context("index body ends early")?;
            for _ in 0..3 {
                r.var()?; // mode, uid, gid
            }
            if has_mtime {
                r.var()?;
                r.var()?;
            }
            let mut chunks = None;
            match kind {
                KIND_FILE => {
                    let n = r.count(1)?;
                    chunks = Some((0..n).map(|_| r.u32()).collect::<Result<Vec<_>>>()?);
                }
                KIND_SYMLINK => {
                    r.string()?;
                }
                KIND_CHARDEV | KIND_BLOCKDEV => {
                    r.var()?;
                    r.var()?;
                }
                _ => {}
            }
            for _ in 0..r.count(2)? {
                r.string()?;
                r.string()?;
            }
            inode_chunks.push(chunks);
        }
        // Entries come parents first (breadth-first), so a parent's path is always known.
        let mut paths: Vec<PathBuf> = Vec::new();
        for i in 0..r.count(3)? {
            let parent = r.var()?;
            let name = PathBuf::from(std::ffi::OsStr::from_bytes(r.string()?));
            let inode = r.var()?;
            let path = if i == 0 {
                PathBuf::new()
            } else {
                let p = usize::try_from(parent)
                    .ok()
                    .and_then(|p| paths.get(p))
                    .context("an entry's parent comes after it")?;
                p.join(name)
            };
            let chunks = usize::try_from(inode)
                .ok()
                .and_then(|i| inode_chunks.get(i))
                .context("an entry names no inode")?;
            if let Some(ids) = chunks {
                if ids.iter().any(|&c| c as usize >= ix.chunks.len()) {
                    bail!("{} uses a chunk that does not exist", path.display());
                }
                ix.files.insert(path.clone(), ids.clone());
            }
            paths.push(path);
        }
        Ok(ix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                b.push(byte);
                return;
            }
            b.push(byte | 0x80);
        }
    }

    fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
        put(b, s.len() as u64);
        b.extend_from_slice(s);
    }

    /// root/ with `a` (chunks 0, 1), `d/` and `d/b` (chunk 2), `l` a symlink; one blob of
    /// 300 000 bytes.
    fn body() -> Vec<u8> {
        let mut b = Vec::new();
        for v in [65536, 262144, 1 << 20, 6] {
            put(&mut b, v);
        }
        put(&mut b, 0); // flags
        put(&mut b, 1);
        b.extend_from_slice(&[7; 32]);
        put(&mut b, 300_000);
        put(&mut b, 3);
        for (off, csize, usize) in [
            (0, 70_000, 100_000),
            (70_000, 1_000, 5_000),
            (140_000, 10, 20),
        ] {
            for v in [0, off, csize, usize] {
                put(&mut b, v);
            }
            b.extend_from_slice(&[1; 32]);
        }
        put(&mut b, 5);
        let inode = |b: &mut Vec<u8>, kind: u8| {
            b.push(kind);
            for v in [0o755, 0, 0] {
                put(b, v);
            }
        };
        inode(&mut b, 1); // root
        put(&mut b, 0);
        inode(&mut b, KIND_FILE); // a
        put(&mut b, 2);
        put(&mut b, 0);
        put(&mut b, 1);
        put(&mut b, 1); // one xattr
        put_bytes(&mut b, b"user.x");
        put_bytes(&mut b, b"y");
        inode(&mut b, 1); // d
        put(&mut b, 0);
        inode(&mut b, KIND_SYMLINK); // l
        put_bytes(&mut b, b"a");
        put(&mut b, 0);
        inode(&mut b, KIND_FILE); // d/b
        put(&mut b, 1);
        put(&mut b, 2);
        put(&mut b, 0);
        put(&mut b, 5);
        for (parent, name, ino) in [(0, &b""[..], 0), (0, b"a", 1), (0, b"d", 2), (0, b"l", 3)] {
            put(&mut b, parent);
            put_bytes(&mut b, name);
            put(&mut b, ino);
        }
        put(&mut b, 2);
        put_bytes(&mut b, b"b");
        put(&mut b, 4);
        put(&mut b, 0); // prefetch
        b
    }

    #[test]
    fn maps_paths_to_chunks_and_pieces() {
        let ix = Index::parse(&body()).unwrap();
        assert_eq!(ix.files[Path::new("a")], [0, 1]);
        assert_eq!(ix.files[Path::new("d/b")], [2]);
        assert_eq!(ix.files.len(), 2);
        let img = StoredImage {
            index_bytes: 99,
            data_bytes: 300_000,
            index: ix,
        };
        let files = crate::lazyfs_tree::plan_big(crate::lazyfs_tree::Mix {
            small: 1,
            medium: 0,
            large: 0,
        });
        // A path that is not in the index fails.
        assert!(img.needs(&[&files[0]], 65536).is_err());
        let spec = |p: &str, size| FileSpec::for_test(p, size);
        let (a, b) = (spec("a", 105_000), spec("d/b", 20));
        let n = img.needs(&[&a, &b], 65536).unwrap();
        assert_eq!((n.files, n.file_bytes, n.chunks), (2, 105_020, 3));
        assert_eq!(n.chunk_bytes, 71_010);
        // Chunks span bytes 0..71 000 (pieces 0, 1) and 140 000..140 010 (piece 2).
        assert_eq!((n.pieces, n.piece_bytes), (3, 3 * 65536));
        // The blob's last piece is short: 300 000 = 4 × 65 536 + 37 856.
        let c = img.index.chunks[2];
        assert_eq!(c.offset, 140_000);
        let whole = img.needs(&[&b], 1 << 20).unwrap();
        assert_eq!((whole.pieces, whole.piece_bytes), (1, 300_000));
        // Every listed size, the asked one included once, smallest first.
        let sizes: Vec<u64> = n.by_piece_size.iter().map(|c| c.piece_size).collect();
        assert_eq!(sizes, OTHER_PIECE_SIZES);
        let four_k = n.by_piece_size[0];
        // 0..71 000 is 18 pieces of 4 KiB; 140 000..140 010 one more.
        assert_eq!((four_k.pieces, four_k.bytes), (19, 19 * 4096));
        assert_eq!(img.needs(&[&b], 1000).unwrap().by_piece_size.len(), 7);
    }

    #[test]
    fn a_short_body_fails_cleanly() {
        let b = body();
        for cut in [0, 1, 10, b.len() / 2, b.len() - 2] {
            assert!(Index::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
