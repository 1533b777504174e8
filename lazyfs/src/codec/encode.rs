//! Index → bytes. The output depends only on the index contents, so that conversions are
//! reproducible.

use shoal_common::Sha256Hasher;

use super::varint::{put, put_bytes, zigzag};
use super::{FLAG_MTIME, HEADER_LEN, MAGIC, VERSION};
use crate::error::{Error, Result};
use crate::index::{Index, Kind};

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
        put(&mut b, u64::from(c.stored_len));
        put(&mut b, u64::from(c.raw_len));
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
