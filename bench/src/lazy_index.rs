//! What a set of files needs from a lazyfs image: which chunks, how many compressed bytes,
//! and how many bytes of the data blob once those chunks are rounded out to P2P pieces.
//!
//! `shoal-bench lazy-cluster` compares the origin's egress with "the startup set", and there
//! are three honest sizes of it: the files' own bytes, the compressed chunks they use (what a
//! reader fetching exact ranges needs), and the pieces covering those chunks (what a peer
//! fetching whole pieces needs: with 64 KiB pieces a 10 KB chunk costs a whole piece, two
//! when it straddles a boundary). Only the index knows where chunks lie.
//!
//! The image is read with the `shoal-lazyfs` library ([`LazyImage::open`] verifies and parses
//! the index), straight from the registry's storage directory: the registry serves only inside
//! the origin's namespace, and [`RegistryStorage`] gives the library its files as a
//! [`BlobSource`].

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use shoal_common::Digest;
use shoal_lazyfs::index::Chunk;
use shoal_lazyfs::store::{read_blob, RawManifest};
use shoal_lazyfs::{BlobSource, Index, Kind, LazyImage};

use crate::lazyfs_tree::FileSpec;

/// The image as stored in the registry: its blobs' sizes and its index.
pub(crate) struct StoredImage {
    pub(crate) index_bytes: u64,
    pub(crate) data_bytes: u64,
    pub(crate) index: Index,
}

/// Piece sizes the set is also rounded out to, besides `--set-piece-size`.
const OTHER_PIECE_SIZES: [u64; 6] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];

/// The pieces of one size that cover a set's chunks.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PieceCover {
    pub(crate) piece_size: u64,
    pub(crate) pieces: usize,
    pub(crate) bytes: u64,
}

/// What a set of files needs from the image (see the module doc).
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
    pub(crate) fn load(storage: &Path, repo: &str, tag: &str) -> Result<Self> {
        let source = RegistryStorage {
            v2: storage.join("docker/registry/v2"),
            repo: repo.to_owned(),
            tag: tag.to_owned(),
        };
        let image = LazyImage::open(&source).context("reading the lazyfs image")?;
        let index = image.index.context("reading the lazyfs index")?;
        Ok(StoredImage {
            index_bytes: image.index_bytes.len() as u64,
            // The library checked that the manifest's data layers are the index's blobs.
            data_bytes: index.blobs.iter().map(|b| b.size).sum(),
            index,
        })
    }

    /// What `files` need, with pieces of `piece_size` bytes (and of [`OTHER_PIECE_SIZES`]).
    pub(crate) fn needs(&self, files: &[&FileSpec], piece_size: u64) -> Result<SetNeeds> {
        let mut chunks = BTreeSet::new();
        for f in files {
            chunks.extend(self.file_chunks(&f.path)?);
        }
        let mut chunk_bytes = 0;
        for &id in &chunks {
            chunk_bytes += u64::from(self.chunk(id)?.stored_len);
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

    /// The chunk numbers of the regular file at `path` (relative to the root).
    fn file_chunks(&self, path: &Path) -> Result<Vec<u32>> {
        use std::os::unix::ffi::OsStrExt;
        let ix = &self.index;
        ix.resolve(path.as_os_str().as_bytes())
            .and_then(|entry| ix.entry(entry))
            .and_then(|e| ix.inode(e.inode).map(|ino| (e.inode, ino)))
            .filter(|(_, ino)| ino.kind == Kind::File)
            .map(|(inode, _)| ix.file_chunks(inode).iter().map(|c| c.chunk).collect())
            .with_context(|| format!("{} is not a file in the index", path.display()))
    }

    fn chunk(&self, id: u32) -> Result<&Chunk> {
        self.index
            .chunks
            .get(id as usize)
            .context("chunk number out of range")
    }

    /// The `piece_size`-aligned spans of the data blobs that `chunks` touch.
    fn cover(&self, chunks: &BTreeSet<u32>, piece_size: u64) -> Result<PieceCover> {
        let mut pieces = HashSet::new();
        let mut bytes = 0;
        for &id in chunks {
            let c = self.chunk(id)?;
            let blob_size = self
                .index
                .blobs
                .get(c.blob as usize)
                .context("no such blob")?
                .size;
            let last = c.offset + u64::from(c.stored_len).max(1) - 1;
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

/// One repository's tag in docker-registry's storage directory (the filesystem driver's
/// `docker/registry/v2` tree), read as a [`BlobSource`]. Only whole blobs are verified, as
/// from any source.
struct RegistryStorage {
    v2: PathBuf,
    repo: String,
    tag: String,
}

impl RegistryStorage {
    fn open(&self, digest: &Digest) -> shoal_lazyfs::Result<File> {
        // A sha256 digest's hex is always 64 characters, so the 2-character prefix exists.
        let hex = digest.hex();
        let path = self
            .v2
            .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
        File::open(&path).map_err(|e| shoal_lazyfs::Error::Blob {
            digest: *digest,
            reason: format!("{}: {e}", path.display()),
        })
    }
}

impl BlobSource for RegistryStorage {
    fn describe(&self) -> String {
        format!("{}:{} in {}", self.repo, self.tag, self.v2.display())
    }

    fn reference(&self) -> Option<String> {
        Some(self.tag.clone())
    }

    fn manifest(&self, reference: Option<&str>) -> shoal_lazyfs::Result<RawManifest> {
        let tag = reference.unwrap_or(&self.tag);
        let link = self.v2.join(format!(
            "repositories/{}/_manifests/tags/{tag}/current/link",
            self.repo
        ));
        let text = std::fs::read_to_string(&link)
            .map_err(|e| shoal_lazyfs::Error::io(format!("reading {}", link.display()), e))?;
        let digest: Digest = text.trim().parse().map_err(|e| {
            shoal_lazyfs::Error::manifest(link.display().to_string(), format!("{e}"))
        })?;
        Ok(RawManifest {
            bytes: read_blob(self, &digest, 16 << 20)?,
            media_type: None,
            digest,
        })
    }

    fn blob(&self, digest: &Digest) -> shoal_lazyfs::Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.open(digest)?))
    }

    fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> shoal_lazyfs::Result<Vec<u8>> {
        let mut f = self.open(digest)?;
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.take(len).read_to_end(&mut out))
            .map_err(|e| shoal_lazyfs::Error::io(format!("reading blob {digest}"), e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use shoal_lazyfs::index::{BlobRef, Entry, Inode};

    use super::*;

    /// root/ with `a` (chunks 0, 1), `d/` and `d/b` (chunk 2), `l` a symlink; one data blob
    /// of 300 000 bytes. Built from its primary tables and encoded as a lazyfs index blob.
    fn index_blob() -> (Vec<u8>, BlobRef) {
        let blob = BlobRef {
            digest: Digest::of(b"data"),
            size: 300_000,
        };
        let chunk = |offset, stored_len, raw_len| Chunk {
            blob: 0,
            offset,
            stored_len,
            raw_len,
            digest: Digest::of(&offset.to_le_bytes()),
        };
        let inode = |kind, chunks: std::ops::Range<u32>| Inode {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: None,
            size: 0,
            target: if kind == Kind::Symlink {
                b"a".to_vec()
            } else {
                Vec::new()
            },
            rdev: (0, 0),
            xattrs: Vec::new(),
            chunks,
        };
        let mut ix = Index {
            blobs: vec![blob.clone()],
            chunks: vec![
                chunk(0, 70_000, 100_000),
                chunk(70_000, 1_000, 5_000),
                chunk(140_000, 10, 20),
            ],
            file_chunks: vec![0, 1, 2],
            inodes: vec![
                inode(Kind::Dir, 0..0),
                inode(Kind::File, 0..2),
                inode(Kind::Dir, 0..0),
                inode(Kind::Symlink, 0..0),
                inode(Kind::File, 2..3),
            ],
            ..Index::default()
        };
        // Breadth-first: the root, its children by name, then d's.
        for (parent, name, inode) in [
            (0, "", 0),
            (0, "a", 1),
            (0, "d", 2),
            (0, "l", 3),
            (2, "b", 4),
        ] {
            let start = ix.names.len() as u32;
            ix.names.extend_from_slice(name.as_bytes());
            ix.entries.push(Entry {
                parent,
                name: start..ix.names.len() as u32,
                inode,
            });
        }
        (shoal_lazyfs::codec::encode(&ix, 3).unwrap(), blob)
    }

    /// A docker-registry storage directory holding `index` as `lazy:t`.
    fn storage(index: &[u8], data: &BlobRef) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("docker/registry/v2");
        let put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            let hex = d.hex();
            let blob = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
            std::fs::create_dir_all(&blob).unwrap();
            std::fs::write(blob.join("data"), bytes).unwrap();
            d
        };
        let config = put(b"{}");
        let manifest = shoal_lazyfs::artifact::make_manifest(
            shoal_lazyfs::artifact::Form::Image,
            (&config, 2),
            (&Digest::of(index), index.len() as u64),
            std::slice::from_ref(data),
        )
        .unwrap();
        put(index);
        let manifest = put(&manifest);
        let tag = v2.join("repositories/lazy/_manifests/tags/t/current");
        std::fs::create_dir_all(&tag).unwrap();
        std::fs::write(tag.join("link"), manifest.to_string()).unwrap();
        dir
    }

    #[test]
    fn maps_paths_to_chunks_and_pieces() {
        let (index, data) = index_blob();
        let dir = storage(&index, &data);
        let img = StoredImage::load(dir.path(), "lazy", "t").unwrap();
        assert_eq!(
            (img.index_bytes, img.data_bytes),
            (index.len() as u64, 300_000)
        );
        let files = crate::lazyfs_tree::plan_big(crate::lazyfs_tree::Mix {
            small: 1,
            medium: 0,
            large: 0,
        });
        // A path that is not in the index fails, and so do a directory and a symlink.
        assert!(img.needs(&[&files[0]], 65536).is_err());
        let spec = |p: &str, size| FileSpec::for_test(p, size);
        for not_a_file in ["d", "l"] {
            assert!(img.needs(&[&spec(not_a_file, 0)], 65536).is_err());
        }
        let (a, b) = (spec("a", 105_000), spec("d/b", 20));
        let n = img.needs(&[&a, &b], 65536).unwrap();
        assert_eq!((n.files, n.file_bytes, n.chunks), (2, 105_020, 3));
        assert_eq!(n.chunk_bytes, 71_010);
        assert_eq!(
            (n.index_bytes, n.data_blob_bytes),
            (index.len() as u64, 300_000)
        );
        // Chunks span bytes 0..71 000 (pieces 0, 1) and 140 000..140 010 (piece 2).
        assert_eq!((n.pieces, n.piece_bytes), (3, 3 * 65536));
        // The blob's last piece is short: 300 000 = 4 × 65 536 + 37 856.
        let c = &img.index.chunks[2];
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
    fn a_missing_tag_or_a_bad_index_fails_cleanly() {
        let (index, data) = index_blob();
        let dir = storage(&index, &data);
        assert!(StoredImage::load(dir.path(), "lazy", "other").is_err());
        assert!(StoredImage::load(dir.path(), "nothing", "t").is_err());
        // Cut short, the stored index no longer matches its digest, nor parses.
        let hex = Digest::of(&index).hex();
        let stored = dir.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        for cut in [0, 10, index.len() / 2, index.len() - 1] {
            std::fs::write(&stored, &index[..cut]).unwrap();
            let err = StoredImage::load(dir.path(), "lazy", "t").err().unwrap();
            assert!(
                format!("{err:#}").contains("index"),
                "cut at {cut}: {err:#}"
            );
        }
    }
}
