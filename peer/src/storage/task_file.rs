//! One cached blob on disk: `meta.json` (id, url, layout), `data` (the blob, sparse until
//! filled) and `pieces.log` (an append-only record per stored piece: index + sha256 + check).
//!
//! Crash safety: a piece's bytes are written before its record is appended, and a torn record
//! fails its check and is cut. Neither is synced per piece (see [`super::recovery`]): a
//! checkpoint flushes both every 16 MiB and when the task completes, and on load every record
//! past the last checkpoint is checked against its bytes, so a piece is never "present" after
//! a restart unless its bytes match.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_common::api::PieceDigest;
use shoal_common::{Digest, PieceLayout, PieceSet, TaskId};
use tokio::sync::watch;

use super::recovery;
use super::relay::Relays;
use crate::error::{Error, Result};

const META: &str = "meta.json";
pub(super) const DATA: &str = "data";
pub(super) const LOG: &str = "pieces.log";
pub(super) const RECORD: usize = 4 + 32 + 4;
/// Present once the whole blob was checked against its digest (see `mark_verified`).
const VERIFIED: &str = "verified";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskMeta {
    pub task_id: TaskId,
    pub url: String,
    pub layout: PieceLayout,
}

/// What waiters (streaming readers, the download loop) watch.
#[derive(Debug, Clone, Default)]
pub struct TaskStatus {
    /// Pieces stored so far.
    pub pieces: u32,
    /// Set when the download gave up; readers stop waiting and report it (a full disk as
    /// such, see [`Error::for_waiter`]).
    pub failed: Option<Arc<Error>>,
    /// The whole blob matched its digest (content-addressed tasks only).
    pub verified: bool,
}

struct Pieces {
    have: PieceSet,
    digests: Vec<Option<Digest>>,
}

pub struct TaskFile {
    meta: TaskMeta,
    dir: PathBuf,
    data: File,
    log: Mutex<File>,
    pieces: Mutex<Pieces>,
    status: watch::Sender<TaskStatus>,
    relays: Arc<Relays>,
    flushes: recovery::Flushes,
}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("task", &self.meta.task_id)
            .field("pieces", &self.pieces.lock().have)
            .finish()
    }
}

fn record_check(body: &[u8]) -> [u8; 4] {
    let d = Digest::of(body);
    let b = d.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

impl TaskFile {
    /// Creates the files for a new task (or truncates leftovers of an unusable one).
    pub fn create(dir: &Path, meta: TaskMeta) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| Error::io(p, e)
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let data_path = dir.join(DATA);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(io(&data_path))?;
        data.set_len(meta.layout.length).map_err(io(&data_path))?;
        let log_path = dir.join(LOG);
        let log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        log.set_len(0).map_err(io(&log_path))?;
        // A marker left by an earlier task in this directory does not speak for these bytes.
        for marker in [VERIFIED, recovery::SYNCED] {
            match fs::remove_file(dir.join(marker)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(dir.join(marker), e))
                }
                _ => {}
            }
        }
        // meta.json last, atomically: a directory without it is debris and is removed on scan.
        let meta_path = dir.join(META);
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::io(&meta_path, std::io::Error::other(e)))?;
        super::write_atomic(&meta_path, &json)?;
        Ok(Self::assemble(dir, meta, data, log, Vec::new(), false))
    }

    /// Loads a task written earlier; pieces whose record is torn or invalid are dropped.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| Error::io(p, e)
        };
        let meta_path = dir.join(META);
        let text = fs::read(&meta_path).map_err(io(&meta_path))?;
        let meta: TaskMeta = serde_json::from_slice(&text)
            .map_err(|e| Error::io(&meta_path, std::io::Error::other(e)))?;
        meta.layout
            .validate()
            .map_err(|e| Error::io(&meta_path, std::io::Error::other(e)))?;
        let data_path = dir.join(DATA);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io(&data_path))?;
        let len = data.metadata().map_err(io(&data_path))?.len();
        if len != meta.layout.length {
            return Err(Error::io(
                &data_path,
                std::io::Error::other(format!(
                    "data is {len} bytes, expected {}",
                    meta.layout.length
                )),
            ));
        }
        let log_path = dir.join(LOG);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let mut raw = Vec::new();
        log.read_to_end(&mut raw).map_err(io(&log_path))?;
        let mut records = Vec::new();
        let mut valid = 0;
        for rec in raw.chunks_exact(RECORD) {
            let (body, check) = rec.split_at(RECORD - 4);
            if record_check(body) != check {
                break;
            }
            let mut idx = [0u8; 4];
            idx.copy_from_slice(&body[..4]);
            let mut sha = [0u8; 32];
            sha.copy_from_slice(&body[4..]);
            let piece = u32::from_le_bytes(idx);
            if piece >= meta.layout.piece_count() {
                break;
            }
            records.push((piece, Digest::from_bytes(sha)));
            valid += RECORD;
        }
        if valid != raw.len() {
            // A torn tail from a crash: cut it so later appends stay aligned.
            log.set_len(valid as u64).map_err(io(&log_path))?;
        }
        let verified = dir.join(VERIFIED).exists();
        let (records, checked) =
            recovery::believed_records(dir, &data, meta.layout, records, verified);
        let file = Self::assemble(dir, meta, data, log, records, verified);
        // Once flushed, checked records are believed (else a download killed again and again
        // would check a longer tail each time). A dropped record stays in the log: no
        // checkpoint then, the next load checks again.
        if checked {
            file.checkpoint_or_warn();
        }
        Ok(file)
    }

    fn assemble(
        dir: &Path,
        meta: TaskMeta,
        data: File,
        log: File,
        records: Vec<(u32, Digest)>,
        verified: bool,
    ) -> Self {
        let count = meta.layout.piece_count();
        let mut have = PieceSet::new(count);
        let mut digests = vec![None; count as usize];
        for (piece, sha) in records {
            have.insert(piece);
            if let Some(slot) = digests.get_mut(piece as usize) {
                *slot = Some(sha);
            }
        }
        let (status, _) = watch::channel(TaskStatus {
            pieces: have.count(),
            failed: None,
            // Only a complete file can have been verified; a marker beside a partial one is
            // debris.
            verified: verified && have.is_complete(),
        });
        TaskFile {
            meta,
            dir: dir.to_path_buf(),
            data,
            log: Mutex::new(log),
            pieces: Mutex::new(Pieces { have, digests }),
            status,
            relays: Arc::new(Relays::default()),
            flushes: recovery::Flushes::default(),
        }
    }

    pub fn id(&self) -> TaskId {
        self.meta.task_id
    }

    pub fn meta(&self) -> &TaskMeta {
        &self.meta
    }

    pub fn layout(&self) -> PieceLayout {
        self.meta.layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_piece(&self, piece: u32) -> bool {
        self.pieces.lock().have.contains(piece)
    }

    pub fn have(&self) -> PieceSet {
        self.pieces.lock().have.clone()
    }

    pub fn is_complete(&self) -> bool {
        self.pieces.lock().have.is_complete()
    }

    /// Digests of the pieces held (for re-announcing after a restart).
    pub fn digests(&self) -> Vec<PieceDigest> {
        let p = self.pieces.lock();
        p.digests
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.map(|sha256| PieceDigest {
                    piece: i as u32,
                    sha256,
                })
            })
            .collect()
    }

    /// Whether every piece overlapping `start..end` is stored.
    pub fn has_range(&self, start: u64, end: u64) -> bool {
        let p = self.pieces.lock();
        self.meta
            .layout
            .pieces_for(start..end)
            .all(|i| p.have.contains(i))
    }

    /// Pieces being received from parents, served while they arrive (cut-through).
    pub fn relays(&self) -> &Arc<Relays> {
        &self.relays
    }

    pub fn subscribe(&self) -> watch::Receiver<TaskStatus> {
        self.status.subscribe()
    }

    /// Marks the download as failed so that waiting readers give up.
    pub fn set_failed(&self, error: Arc<Error>) {
        self.status.send_modify(|s| s.failed = Some(error));
    }

    /// Records that the whole blob matched its digest, for readers now (they may release the
    /// bytes they held back) and after a restart (blocking I/O: a small marker file).
    pub fn mark_verified(&self) -> Result<()> {
        self.status.send_modify(|s| s.verified = true);
        // The marker vouches for the bytes on disk: they go first (nothing is left to flush
        // after the checkpoint of the completing piece).
        self.checkpoint()?;
        let path = self.dir.join(VERIFIED);
        fs::write(&path, b"").map_err(|e| Error::io(path, e))
    }

    /// Flushes what was stored since the last checkpoint and records it as believable after a
    /// restart without reading it again (see `recovery`). Blocking I/O; called every
    /// `CHECKPOINT_BYTES`, when the task completes and when a download of it ends.
    pub fn checkpoint(&self) -> Result<()> {
        self.flushes.checkpoint(&self.dir, &self.data, &self.log)
    }

    /// A checkpoint whose failure costs only a re-read after a restart (the bytes are in the
    /// page cache, correct): logged, not returned.
    fn checkpoint_or_warn(&self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(task = %self.id(), error = %e, "could not flush the task's pieces");
        }
    }

    pub fn is_verified(&self) -> bool {
        self.status.borrow().verified
    }

    /// Clears a previous failure when a new download attempt starts.
    pub fn clear_failed(&self) {
        self.status.send_if_modified(|s| s.failed.take().is_some());
    }

    /// Stores a verified piece durably (blocking I/O: call from a blocking thread).
    pub fn write_piece(&self, piece: u32, bytes: &[u8], sha256: Digest) -> Result<()> {
        let range = self
            .meta
            .layout
            .range(piece)
            .ok_or(Error::BadRequest(format!(
                "task {}: piece {piece} is past the end",
                self.meta.task_id
            )))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(Error::BadRequest(format!(
                "task {}: piece {piece} is {} bytes, expected {}",
                self.meta.task_id,
                bytes.len(),
                range.end - range.start
            )));
        }
        if self.has_piece(piece) {
            return Ok(());
        }
        // The bytes before the record (see the module docs: no sync per piece).
        self.data
            .write_all_at(bytes, range.start)
            .map_err(|e| Error::io(self.dir.join(DATA), e))?;
        let mut rec = Vec::with_capacity(RECORD);
        rec.extend_from_slice(&piece.to_le_bytes());
        rec.extend_from_slice(sha256.as_bytes());
        let check = record_check(&rec);
        rec.extend_from_slice(&check);
        {
            let mut log = self.log.lock();
            log.write_all(&rec)
                .map_err(|e| Error::io(self.dir.join(LOG), e))?;
        }
        let (count, completed) = {
            let mut p = self.pieces.lock();
            let new = !p.have.contains(piece);
            p.have.insert(piece);
            if let Some(slot) = p.digests.get_mut(piece as usize) {
                *slot = Some(sha256);
            }
            (p.have.count(), new && p.have.is_complete())
        };
        if self.flushes.stored(bytes.len() as u64) || completed {
            // Every piece in `have` had its bytes and record written before it joined.
            self.checkpoint_or_warn();
        }
        self.status.send_modify(|s| s.pieces = count);
        Ok(())
    }

    /// Reads `len` bytes at `offset` (blocking I/O). Callers check `has_range` first.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(offset, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `offset` (blocking I/O), for callers that reuse one buffer.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.data
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(self.dir.join(DATA), e))
    }

    /// An independent handle on the data file, for streaming it.
    pub fn data_file(&self) -> Result<File> {
        self.data
            .try_clone()
            .map_err(|e| Error::io(self.dir.join(DATA), e))
    }

    /// Marks the task recently used (persisted as meta.json's mtime for LRU across restarts).
    pub fn touch(&self) {
        if let Ok(f) = File::options().write(true).open(self.dir.join(META)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    pub(crate) fn last_used(dir: &Path) -> std::time::SystemTime {
        fs::metadata(dir.join(META))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: u64) -> TaskMeta {
        TaskMeta {
            task_id: TaskId::Content(Digest::of(b"t")),
            url: "http://x/y".into(),
            layout: PieceLayout::new(len, 4096).unwrap(),
        }
    }

    #[test]
    fn pieces_survive_reopen_and_torn_records_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = TaskFile::create(dir.path(), meta(10_000)).unwrap();
        let p0 = vec![1u8; 4096];
        t.write_piece(0, &p0, Digest::of(&p0)).unwrap();
        assert!(t.write_piece(1, &p0[..10], Digest::of(&p0)).is_err());
        assert!(t.write_piece(9, &p0, Digest::of(&p0)).is_err());
        let last = vec![2u8; 10_000 - 8192];
        t.write_piece(2, &last, Digest::of(&last)).unwrap();
        drop(t);
        // Simulate a crash in the middle of appending a record.
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        log.write_all(&[1, 0, 0, 0, 9, 9]).unwrap();
        drop(log);
        let t = TaskFile::open(dir.path()).unwrap();
        assert_eq!(t.have().iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(t.read_at(8192, 4).unwrap(), vec![2; 4]);
        assert!(t.has_range(0, 4096) && !t.has_range(0, 4097));
        let p1 = vec![3u8; 4096];
        t.write_piece(1, &p1, Digest::of(&p1)).unwrap();
        assert!(t.is_complete());
        drop(t);
        let t = TaskFile::open(dir.path()).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.digests()[1].sha256, Digest::of(&p1));
    }

    #[test]
    fn verification_survives_reopen_only_for_the_same_complete_task() {
        let dir = tempfile::tempdir().unwrap();
        let t = TaskFile::create(dir.path(), meta(4096)).unwrap();
        assert!(!t.is_verified());
        let p = vec![7u8; 4096];
        t.write_piece(0, &p, Digest::of(&p)).unwrap();
        let mut status = t.subscribe();
        t.mark_verified().unwrap();
        assert!(status.has_changed().unwrap() && status.borrow_and_update().verified);
        drop(t);
        assert!(TaskFile::open(dir.path()).unwrap().is_verified());
        // A new task in the same directory starts unverified, also after a reopen.
        let t = TaskFile::create(dir.path(), meta(4096)).unwrap();
        assert!(!t.is_verified());
        drop(t);
        assert!(!TaskFile::open(dir.path()).unwrap().is_verified());
        // A marker beside a file that lacks pieces means nothing.
        fs::write(dir.path().join(VERIFIED), b"").unwrap();
        assert!(!TaskFile::open(dir.path()).unwrap().is_verified());
    }

    #[test]
    fn corrupt_meta_or_short_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        TaskFile::create(dir.path(), meta(10_000)).unwrap();
        fs::write(dir.path().join(DATA), b"short").unwrap();
        assert!(TaskFile::open(dir.path()).is_err());
        fs::write(dir.path().join(META), b"{garbage").unwrap();
        assert!(TaskFile::open(dir.path()).is_err());
    }
}
