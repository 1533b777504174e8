//! What a task kept across a crash. A record in `pieces.log` says a piece was stored, but not
//! that its bytes reached the disk. Pieces are written without an fsync each: two
//! `fdatasync`s per piece (data, then log) cost more than the write itself (about 10 ms here,
//! serialised on the log: a cap near 100 pieces/s, under 2 MiB/s with a lazy blob's 16 KiB
//! pieces). So after a power loss or a kernel crash a record may outlive its bytes (a hole
//! reads as zeros), and a disk may rot. A process killed with SIGKILL loses nothing the kernel
//! accepted, and a piece's bytes are written before its record, so there its records hold.
//! Either way, before a task that was not synced whole is believed, each recorded piece is
//! hashed again and kept only if it still matches the sha256 it was stored with: a restarted
//! peer serves and announces only pieces whose bytes it has, and fetches the rest again.
//!
//! A task whose last piece arrived is flushed once (data, then log) and gets the `synced`
//! marker; it is believed without reading it, so a restart re-reads only the downloads that
//! were running (at ~1-2 GB/s of sha256 per core).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use shoal_common::{Digest, PieceLayout, PieceSet, Sha256Hasher};

use super::task_file::{DATA, LOG, RECORD};
use crate::error::{Error, Result};

/// How long a prefix of the log (in bytes) was flushed with the data of its pieces: written
/// after the flush, so its records are believed without reading their pieces again.
pub(super) const SYNCED: &str = "synced";
/// Piece bytes a task stores between two flushes: what a restart may have to hash again per
/// running download, and one flush of the data and the log per this many bytes.
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Bytes read and hashed at a time.
const CHUNK: usize = 256 << 10;

/// The records to believe on load, in log order: those of the flushed prefix (all of them for
/// a task verified whole, which was flushed first), then those after it whose bytes still
/// match; and whether some had to be checked and all matched (then a checkpoint spares the
/// next load that work). Blocking I/O.
pub(super) fn believed_records(
    dir: &Path,
    data: &File,
    layout: PieceLayout,
    records: Vec<(u32, Digest)>,
    verified: bool,
) -> (Vec<(u32, Digest)>, bool) {
    let mut have = PieceSet::new(layout.piece_count());
    records.iter().for_each(|&(p, _)| have.insert(p));
    let prefix = if verified && have.is_complete() {
        records.len()
    } else {
        let synced = std::fs::read_to_string(dir.join(SYNCED))
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        (synced / RECORD).min(records.len())
    };
    let mut believed = records;
    let rest = believed.split_off(prefix);
    let held: HashSet<u32> = believed.iter().map(|&(p, _)| p).collect();
    let rest: Vec<_> = rest
        .into_iter()
        .filter(|(p, _)| !held.contains(p))
        .collect();
    let checked = rest.len();
    let matching = matching_records(dir, data, layout, rest);
    let all_matched = checked > 0 && matching.len() == checked;
    believed.extend(matching);
    (believed, all_matched)
}

/// When a task's pieces were last flushed.
#[derive(Default)]
pub(super) struct Flushes {
    /// Piece bytes stored since the last checkpoint.
    unsynced: AtomicU64,
    /// Log length covered by the last checkpoint.
    synced_len: AtomicU64,
}

impl Flushes {
    /// Counts `len` more bytes stored; whether a checkpoint is due.
    pub fn stored(&self, len: u64) -> bool {
        self.unsynced.fetch_add(len, Ordering::Relaxed) + len >= CHECKPOINT_BYTES
    }

    /// Flushes `data` and the log as long as it is now, unless that was done already.
    pub fn checkpoint(&self, dir: &Path, data: &File, log: &Mutex<File>) -> Result<()> {
        let io = |e| Error::io(dir.join(LOG), e);
        let (log, len) = {
            let log = log.lock();
            let len = log.metadata().map_err(io)?.len();
            (log.try_clone().map_err(io)?, len)
        };
        if self.synced_len.load(Ordering::Acquire) >= len {
            return Ok(());
        }
        self.unsynced.store(0, Ordering::Relaxed);
        checkpoint(dir, data, &log, len)?;
        self.synced_len.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }
}

/// Flushes the data, then the log up to at least `log_len` bytes, then records that length
/// in the `synced` marker (atomically: a torn marker would claim records that are not
/// durable). Blocking I/O.
fn checkpoint(dir: &Path, data: &File, log: &File, log_len: u64) -> Result<()> {
    data.sync_data().map_err(|e| Error::io(dir.join(DATA), e))?;
    log.sync_data().map_err(|e| Error::io(dir.join(LOG), e))?;
    super::write_atomic(&dir.join(SYNCED), log_len.to_string().as_bytes())
}

/// The records (piece, sha256) whose bytes in `data` still match, one per piece (the last
/// record of a piece is the one that counts: an earlier one was dropped here and the piece
/// stored again). Blocking I/O.
pub(super) fn matching_records(
    dir: &Path,
    data: &File,
    layout: PieceLayout,
    records: Vec<(u32, Digest)>,
) -> Vec<(u32, Digest)> {
    let started = Instant::now();
    let latest: BTreeMap<u32, Digest> = records.into_iter().collect();
    let mut buf = vec![0u8; CHUNK.min(layout.piece_size as usize)];
    let mut kept = Vec::with_capacity(latest.len());
    let mut dropped = Vec::new();
    for (piece, sha) in latest {
        let matches = layout
            .range(piece)
            .is_some_and(|r| hash_range(data, r.start, r.end, &mut buf).is_some_and(|d| d == sha));
        if matches {
            kept.push((piece, sha));
        } else {
            dropped.push(piece);
        }
    }
    if !dropped.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            pieces = ?dropped,
            "recorded pieces whose bytes do not match their digest: dropped, fetched again"
        );
    }
    tracing::debug!(
        dir = %dir.display(),
        kept = kept.len(),
        dropped = dropped.len(),
        millis = started.elapsed().as_millis() as u64,
        "recorded pieces checked"
    );
    kept
}

/// The sha256 of `start..end` of `data`; `None` when it cannot be read (a piece that cannot be
/// read is not held).
fn hash_range(data: &File, start: u64, end: u64, buf: &mut [u8]) -> Option<Digest> {
    let mut hasher = Sha256Hasher::new();
    let mut pos = start;
    while pos < end {
        let n = buf.len().min((end - pos) as usize);
        data.read_exact_at(&mut buf[..n], pos).ok()?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{TaskFile, TaskMeta};
    use shoal_common::TaskId;
    use std::io::Write;

    #[test]
    fn a_reopened_task_holds_only_pieces_whose_bytes_survived() {
        let dir = tempfile::tempdir().unwrap();
        let meta = TaskMeta {
            task_id: TaskId::Content(Digest::of(b"t")),
            url: "http://x/y".into(),
            layout: PieceLayout::new(3 * 4096, 4096).unwrap(),
        };
        let piece = |n: u8| vec![n; 4096];
        let t = TaskFile::create(dir.path(), meta.clone()).unwrap();
        for p in [0u8, 1] {
            t.write_piece(u32::from(p), &piece(p + 1), Digest::of(&piece(p + 1)))
                .unwrap();
        }
        drop(t);
        // A power loss kept piece 1's record but not its bytes.
        let data = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(DATA))
            .unwrap();
        data.write_all_at(&[0; 4096], 4096).unwrap();
        let t = TaskFile::open(dir.path()).unwrap();
        assert_eq!(t.have().iter().collect::<Vec<_>>(), vec![0]);
        assert_eq!(t.digests().len(), 1);
        assert!(!dir.path().join(SYNCED).exists());
        // Stored again, the task completes and is synced once: the next load believes its
        // records without reading the pieces (a damaged byte is not even seen).
        t.write_piece(1, &piece(2), Digest::of(&piece(2))).unwrap();
        t.write_piece(2, &piece(3), Digest::of(&piece(3))).unwrap();
        assert!(dir.path().join(SYNCED).exists());
        drop(t);
        data.write_all_at(&[0], 0).unwrap();
        assert!(TaskFile::open(dir.path()).unwrap().is_complete());
        // Without the marker every piece is checked.
        std::fs::remove_file(dir.path().join(SYNCED)).unwrap();
        let t = TaskFile::open(dir.path()).unwrap();
        assert_eq!(t.have().iter().collect::<Vec<_>>(), vec![1, 2]);
        drop(t);

        // A checkpoint covers the records before it; those after it are checked.
        let t = TaskFile::create(dir.path(), meta).unwrap();
        t.write_piece(0, &piece(1), Digest::of(&piece(1))).unwrap();
        t.checkpoint().unwrap();
        t.write_piece(1, &piece(2), Digest::of(&piece(2))).unwrap();
        drop(t);
        data.write_all_at(&[0; 4096], 0).unwrap();
        data.write_all_at(&[0; 4096], 4096).unwrap();
        let t = TaskFile::open(dir.path()).unwrap();
        assert_eq!(t.have().iter().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn keeps_only_pieces_whose_bytes_match_and_the_last_record_of_each() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PieceLayout::new(3 * 4096 + 100, 4096).unwrap();
        let mut f = File::create(dir.path().join("data")).unwrap();
        let bytes: Vec<u8> = (0..layout.length).map(|i| (i % 251) as u8).collect();
        f.write_all(&bytes).unwrap();
        let data = File::open(dir.path().join("data")).unwrap();
        let d = |p: u32| {
            let r = layout.range(p).unwrap();
            Digest::of(&bytes[r.start as usize..r.end as usize])
        };
        let records = vec![
            (0, d(0)),
            (1, Digest::of(b"what the disk lost")),
            (2, Digest::of(b"an earlier, dropped copy")),
            (2, d(2)),
            (3, d(3)),
            (1, Digest::of(b"still wrong")),
        ];
        let kept = matching_records(dir.path(), &data, layout, records);
        assert_eq!(kept, vec![(0, d(0)), (2, d(2)), (3, d(3))]);
        // A file cut short (the disk lost its tail): the pieces past the end are not held.
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("data"))
            .unwrap();
        data.set_len(4096 * 2).unwrap();
        let kept = matching_records(dir.path(), &data, layout, vec![(0, d(0)), (3, d(3))]);
        assert_eq!(kept, vec![(0, d(0))]);
    }
}
