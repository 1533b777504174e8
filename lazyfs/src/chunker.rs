//! Turning file contents into stored chunks: content-defined cutting, sha256, dedup (within
//! the image and against a chunk dictionary), zstd compression and writing the data blob.
//!
//! Cutting happens on the caller's thread; everything else runs on a writer thread that
//! receives batches, hashes and compresses each batch in parallel (rayon) and then writes
//! it in batch order. Which thread compresses a chunk never affects the bytes written, so
//! the output is deterministic while both cores stay busy.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use rayon::prelude::*;
use shoal_common::{Digest, Sha256Hasher};

use crate::error::{Error, IoContext, Result};
use crate::index::{BlobRef, ChunkParams, Index};

/// Bytes of raw chunk data handed to the writer thread at once.
const BATCH_BYTES: usize = 32 << 20;
/// Files up to this size are read whole and cut in memory; larger ones are streamed.
const IN_MEMORY_LIMIT: u64 = 8 << 20;

/// Chunks of an earlier image that a new image may reference instead of storing again.
#[derive(Default)]
pub struct ChunkDict {
    pub blobs: Vec<BlobRef>,
    chunks: HashMap<Digest, DictChunk>,
}

#[derive(Clone, Copy)]
struct DictChunk {
    blob: u32,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
}

impl ChunkDict {
    pub fn from_index(index: &Index) -> Self {
        let mut chunks = HashMap::with_capacity(index.chunks.len());
        for c in &index.chunks {
            chunks.entry(c.digest).or_insert(DictChunk {
                blob: c.blob,
                offset: c.offset,
                stored_len: c.stored_len,
                raw_len: c.raw_len,
            });
        }
        ChunkDict {
            blobs: index.blobs.clone(),
            chunks,
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Where a chunk record's bytes are, before blob numbers are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// The data blob this build writes.
    New,
    /// Blob number `n` of the chunk dictionary's index.
    Dict(u32),
}

#[derive(Clone, Debug)]
pub struct ChunkRec {
    pub home: Home,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub digest: Digest,
}

#[derive(Clone, Debug, Default)]
pub struct ChunkStats {
    /// Bytes of file content fed in.
    pub input_bytes: u64,
    pub chunk_refs: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub new_compressed_bytes: u64,
    pub dict_chunks: u64,
    pub dict_bytes: u64,
}

/// The writer thread's result.
pub struct Written {
    pub chunks: Vec<ChunkRec>,
    /// Per slot (file inode), its chunk numbers in order.
    pub files: Vec<Vec<u32>>,
    pub blob: Option<BlobRef>,
    pub stats: ChunkStats,
}

type Batch = Vec<(u32, Vec<u8>)>;

/// Feeds chunks of files to the writer thread.
pub struct Chunker {
    params: ChunkParams,
    batch: Batch,
    batch_bytes: usize,
    tx: Option<SyncSender<Batch>>,
    worker: Option<JoinHandle<Result<Written>>>,
    input_bytes: u64,
}

impl Chunker {
    /// `slots` is the number of file slots (inode numbers) chunks may be attributed to;
    /// compressed chunks go to `out`.
    pub fn new(
        params: ChunkParams,
        slots: usize,
        out: File,
        dict: Option<std::sync::Arc<ChunkDict>>,
    ) -> Self {
        let (tx, rx) = sync_channel::<Batch>(1);
        let level = params.level;
        let worker = std::thread::spawn(move || {
            let mut state = WriterState {
                out: BufWriter::with_capacity(4 << 20, out),
                hasher: Sha256Hasher::new(),
                written: 0,
                seen: HashMap::new(),
                dict,
                level,
                chunks: Vec::new(),
                files: vec![Vec::new(); slots],
                stats: ChunkStats::default(),
            };
            for batch in rx {
                state.write_batch(batch)?;
            }
            state.finish()
        });
        Chunker {
            params,
            batch: Vec::new(),
            batch_bytes: 0,
            tx: Some(tx),
            worker: Some(worker),
            input_bytes: 0,
        }
    }

    /// Cut `len` bytes from `r` into chunks attributed to `slot`. Calls `progress` with the
    /// bytes consumed.
    pub fn add_file(
        &mut self,
        slot: u32,
        r: &mut dyn Read,
        len: u64,
        what: &dyn Fn() -> String,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let p = self.params;
        let mut seen = 0u64;
        if len <= IN_MEMORY_LIMIT {
            let mut buf = Vec::with_capacity(len as usize);
            r.take(len)
                .read_to_end(&mut buf)
                .ctx(|| format!("reading {}", what()))?;
            seen = buf.len() as u64;
            if seen == len {
                if buf.len() <= p.min as usize {
                    self.push(slot, buf)?;
                } else {
                    let cuts: Vec<_> = fastcdc::v2020::FastCDC::new(&buf, p.min, p.avg, p.max)
                        .map(|c| (c.offset, c.length))
                        .collect();
                    for (off, n) in cuts {
                        // FastCDC yields ranges inside `buf`.
                        let piece = buf.get(off..off + n).unwrap_or_default().to_vec();
                        self.push(slot, piece)?;
                    }
                }
            }
        } else {
            for chunk in fastcdc::v2020::StreamCDC::new(r.take(len), p.min, p.avg, p.max) {
                let chunk = chunk.map_err(|e| {
                    Error::io(
                        format!("reading {}", what()),
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                seen += chunk.data.len() as u64;
                progress(chunk.data.len() as u64);
                self.push(slot, chunk.data)?;
            }
        }
        if len <= IN_MEMORY_LIMIT {
            progress(seen);
        }
        self.input_bytes += seen;
        if seen != len {
            return Err(Error::io(
                format!("reading {}", what()),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("expected {len} bytes, got {seen} (file changed during conversion?)"),
                ),
            ));
        }
        Ok(())
    }

    fn push(&mut self, slot: u32, data: Vec<u8>) -> Result<()> {
        self.batch_bytes += data.len();
        self.batch.push((slot, data));
        if self.batch_bytes >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(batch).is_ok())
            .unwrap_or(false);
        if !sent {
            // The writer stopped early; its error explains why.
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| Error::Invalid("chunk writer stopped".into())));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<Written> {
        self.tx = None;
        match self.worker.take() {
            Some(h) => h
                .join()
                .map_err(|_| Error::Invalid("chunk writer panicked".into()))?,
            None => Err(Error::Invalid("chunk writer already finished".into())),
        }
    }

    pub fn finish(mut self) -> Result<Written> {
        if !self.batch.is_empty() {
            self.send()?;
        }
        let mut w = self.join()?;
        w.stats.input_bytes = self.input_bytes;
        Ok(w)
    }
}

struct WriterState {
    out: BufWriter<File>,
    hasher: Sha256Hasher,
    written: u64,
    seen: HashMap<Digest, u32>,
    dict: Option<std::sync::Arc<ChunkDict>>,
    level: i32,
    chunks: Vec<ChunkRec>,
    files: Vec<Vec<u32>>,
    stats: ChunkStats,
}

impl WriterState {
    fn write_batch(&mut self, batch: Batch) -> Result<()> {
        let digests: Vec<Digest> = batch.par_iter().map(|(_, d)| Digest::of(d)).collect();
        let mut fresh = Vec::new();
        let mut ids = Vec::with_capacity(batch.len());
        for ((_, data), digest) in batch.iter().zip(&digests) {
            self.stats.chunk_refs += 1;
            if let Some(&id) = self.seen.get(digest) {
                ids.push(id);
                continue;
            }
            let id = u32::try_from(self.chunks.len())
                .map_err(|_| Error::Invalid("more than 2^32 chunks".into()))?;
            let raw_len = data.len() as u32; // chunks never exceed the 16 MiB fastcdc maximum
            let from_dict = self
                .dict
                .as_ref()
                .and_then(|d| d.chunks.get(digest).copied());
            let rec = match from_dict {
                Some(dc) if dc.raw_len == raw_len => {
                    self.stats.dict_chunks += 1;
                    self.stats.dict_bytes += u64::from(raw_len);
                    ChunkRec {
                        home: Home::Dict(dc.blob),
                        offset: dc.offset,
                        stored_len: dc.stored_len,
                        raw_len,
                        digest: *digest,
                    }
                }
                _ => {
                    fresh.push((id, ids.len()));
                    ChunkRec {
                        home: Home::New,
                        offset: 0,
                        stored_len: 0,
                        raw_len,
                        digest: *digest,
                    }
                }
            };
            self.chunks.push(rec);
            self.seen.insert(*digest, id);
            ids.push(id);
        }
        let level = self.level;
        let compressed: Vec<std::io::Result<Vec<u8>>> = fresh
            .par_iter()
            .map_init(
                || zstd::bulk::Compressor::new(level),
                |c, &(_, pos)| {
                    let data = batch
                        .get(pos)
                        .map(|(_, d)| d.as_slice())
                        .unwrap_or_default();
                    match c {
                        Ok(c) => c.compress(data),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    }
                },
            )
            .collect();
        for (&(id, _), frame) in fresh.iter().zip(compressed) {
            let frame = frame.ctx(|| "compressing a chunk".to_string())?;
            self.out
                .write_all(&frame)
                .ctx(|| "writing the data blob".to_string())?;
            self.hasher.update(&frame);
            if let Some(rec) = self.chunks.get_mut(id as usize) {
                rec.offset = self.written;
                rec.stored_len = frame.len() as u32;
                self.stats.new_chunks += 1;
                self.stats.new_bytes += u64::from(rec.raw_len);
                self.stats.new_compressed_bytes += frame.len() as u64;
            }
            self.written += frame.len() as u64;
        }
        for ((slot, _), id) in batch.iter().zip(ids) {
            if let Some(list) = self.files.get_mut(*slot as usize) {
                list.push(id);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Written> {
        self.out
            .flush()
            .ctx(|| "writing the data blob".to_string())?;
        let blob = (self.written > 0).then(|| BlobRef {
            digest: self.hasher.finish(),
            size: self.written,
        });
        Ok(Written {
            chunks: self.chunks,
            files: self.files,
            blob,
            stats: self.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    /// Files above the in-memory limit are cut by the streaming chunker; both must agree
    /// or a file's chunks would depend on how it was read.
    #[test]
    fn streaming_and_in_memory_cuts_agree() {
        let mut s = 0x1234_5678_9abc_def1u64;
        let data: Vec<u8> = (0..3_000_000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let (min, avg, max) = (16 * 1024, 64 * 1024, 256 * 1024);
        let mem: Vec<(u64, usize)> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
            .map(|c| (c.offset as u64, c.length))
            .collect();
        let stream: Vec<(u64, usize)> = fastcdc::v2020::StreamCDC::new(&data[..], min, avg, max)
            .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
            .collect();
        assert_eq!(mem, stream);
        assert!(mem.len() > 10);
    }
}
