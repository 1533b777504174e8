//! `check`: verify an image completely — manifest, config, index, every data blob's digest
//! and every chunk's size and sha256 — and name each problem precisely (chunk number, blob,
//! offset and a file using it) instead of stopping at the first.

use rayon::prelude::*;
use shoal_common::{Digest, Sha256Hasher};

use crate::artifact::LazyImage;
use crate::error::Error;
use crate::index::{Index, Kind};
use crate::store::BlobSource;

/// Bytes read per range request while walking a blob.
const WINDOW: u64 = 32 << 20;

#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<Error>,
    pub chunks_ok: u64,
    pub blobs_ok: u64,
}

pub fn check(src: &dyn BlobSource, image: &LazyImage) -> CheckReport {
    let mut report = CheckReport::default();
    // Our readers never need the config, but containerd does: a runnable image whose
    // diff_ids do not match its layers would fail at pull time, far from its cause.
    if let Err(e) = image.config(src) {
        report.problems.push(e);
    }
    let index = match &image.index {
        Ok(ix) => ix,
        Err(e) => {
            report.problems.push(Error::Invalid(format!(
                "index blob {}: {e}",
                image.index_digest
            )));
            return report;
        }
    };
    for (n, blob) in index.blobs.iter().enumerate() {
        match whole_blob_digest(src, &blob.digest) {
            Ok((d, size)) if d == blob.digest && size == blob.size => report.blobs_ok += 1,
            Ok((d, size)) => report.problems.push(Error::Blob {
                digest: blob.digest,
                reason: format!(
                    "data blob #{n}: content is {size} bytes hashing to {d}, expected {} bytes",
                    blob.size
                ),
            }),
            Err(e) => report.problems.push(e),
        }
    }
    let (ok, problems) = check_chunks(src, index);
    report.chunks_ok = ok;
    report.problems.extend(problems);
    report
}

fn whole_blob_digest(src: &dyn BlobSource, digest: &Digest) -> Result<(Digest, u64), Error> {
    let mut r = src.blob(digest)?;
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::Blob {
            digest: *digest,
            reason: e.to_string(),
        })?;
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
            break;
        };
        h.update(data);
        size += n as u64;
    }
    Ok((h.finish(), size))
}

use std::io::Read;

/// Verify every chunk of the chunk table; returns (chunks verified, problems).
pub fn check_chunks(src: &dyn BlobSource, index: &Index) -> (u64, Vec<Error>) {
    let mut ok = 0;
    let mut problems = Vec::new();
    for (b, blob) in index.blobs.iter().enumerate() {
        let mut ids: Vec<u32> = (0..index.chunks.len() as u32)
            .filter(|&i| {
                index
                    .chunks
                    .get(i as usize)
                    .is_some_and(|c| c.blob == b as u32)
            })
            .collect();
        ids.sort_by_key(|&i| index.chunks.get(i as usize).map_or(0, |c| c.offset));
        let mut pos = 0;
        while pos < ids.len() {
            // A window of chunks sorted by offset, read with one range request.
            let first = ids.get(pos).and_then(|&i| index.chunks.get(i as usize));
            let Some(start) = first.map(|c| c.offset) else {
                break;
            };
            let mut end_pos = pos;
            let mut end = start;
            while let Some(c) = ids.get(end_pos).and_then(|&i| index.chunks.get(i as usize)) {
                if end_pos > pos && c.end() - start > WINDOW {
                    break;
                }
                end = end.max(c.end());
                end_pos += 1;
            }
            let window = src.blob_range(&blob.digest, start, end - start);
            let batch = ids.get(pos..end_pos).unwrap_or_default();
            let results: Vec<Option<Error>> = batch
                .par_iter()
                .map(|&id| match &window {
                    Ok(bytes) => verify_chunk(index, id, bytes, start).err(),
                    Err(e) => Some(chunk_error(index, id, format!("cannot read: {e}"))),
                })
                .collect();
            for r in results {
                match r {
                    None => ok += 1,
                    Some(e) => problems.push(e),
                }
            }
            pos = end_pos;
        }
    }
    (ok, problems)
}

/// Decompress and hash one chunk out of `window` (which starts at blob offset `base`): the
/// one chunk check, shared by `check`, `unpack` and the mount's fetcher. Decompression is
/// capped at the chunk's size, so a forged frame cannot make it allocate more.
pub fn verify_chunk(index: &Index, id: u32, window: &[u8], base: u64) -> Result<Vec<u8>, Error> {
    let c = index
        .chunks
        .get(id as usize)
        .ok_or_else(|| chunk_error(index, id, "no such chunk".into()))?;
    let from = (c.offset - base) as usize;
    let Some(frame) = window.get(from..from + c.stored_len as usize) else {
        return Err(chunk_error(
            index,
            id,
            format!(
                "blob truncated: has {} bytes, chunk ends at {}",
                base + window.len() as u64,
                c.end()
            ),
        ));
    };
    let data = zstd::bulk::decompress(frame, c.raw_len as usize)
        .map_err(|e| chunk_error(index, id, format!("bad zstd frame: {e}")))?;
    if data.len() != c.raw_len as usize {
        return Err(chunk_error(
            index,
            id,
            format!(
                "decompresses to {} bytes, expected {}",
                data.len(),
                c.raw_len
            ),
        ));
    }
    let got = Digest::of(&data);
    if got != c.digest {
        return Err(chunk_error(
            index,
            id,
            format!("content hashes to {got}, expected {}", c.digest),
        ));
    }
    Ok(data)
}

/// An error naming the chunk and the first file that uses it.
pub fn chunk_error(index: &Index, id: u32, reason: String) -> Error {
    let (blob, offset) = index
        .chunks
        .get(id as usize)
        .map(|c| {
            (
                index
                    .blobs
                    .get(c.blob as usize)
                    .map(|b| b.digest)
                    .unwrap_or(Digest::from_bytes([0; 32])),
                c.offset,
            )
        })
        .unwrap_or((Digest::from_bytes([0; 32]), 0));
    let path = index
        .inodes
        .iter()
        .enumerate()
        .find(|(_, ino)| {
            ino.kind == Kind::File
                && index
                    .file_chunks
                    .get(ino.chunks.start as usize..ino.chunks.end as usize)
                    .is_some_and(|ids| ids.contains(&id))
        })
        .map(|(n, _)| index.inode_path(n as u32))
        .unwrap_or_else(|| "(unused)".into());
    Error::Chunk {
        chunk: id,
        blob,
        offset,
        path,
        reason,
    }
}
