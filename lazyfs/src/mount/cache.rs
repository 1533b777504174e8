//! The chunk cache of a mount: hot chunks in memory (`moka`, weighed by size) in front of a
//! disk cache with a byte quota and LRU eviction.
//!
//! Both tiers hold *decompressed, verified* chunk bytes keyed by the chunk's sha256, so the
//! disk cache is content-addressed: it survives remounts and is shared by images with common
//! chunks. Authenticity is settled once, by the sha256 check when a chunk is fetched; the
//! disk only has to give back what was written. Each file therefore ends in a CRC-32 of the
//! chunk, checked on every disk read at memory speed (a sha256 per read cost a third of a
//! warm read's CPU). A file that is short, long or fails its CRC is deleted and treated as a
//! miss, and files written without the trailer fail the length check, so they heal the same
//! way.
//!
//! Disk layout: `DIR/chunks/XX/HEX` (XX = first two hex digits). The LRU order survives
//! remounts through the files' modification times, which a hit refreshes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use shoal_common::Digest;

use super::metrics::{Metrics, Tier};
use crate::error::{IoContext, Result};

pub type ChunkBytes = Arc<Vec<u8>>;

pub struct ChunkCache {
    memory: moka::sync::Cache<Digest, ChunkBytes>,
    disk: Option<DiskCache>,
    metrics: Metrics,
    /// The disk tier's filesystem is full (said once, not once per chunk).
    disk_full: AtomicBool,
}

impl ChunkCache {
    pub fn new(memory_bytes: u64, disk: Option<DiskCache>, metrics: Metrics) -> Self {
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_k: &Digest, v: &ChunkBytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        if let Some(d) = &disk {
            metrics.disk_cache_bytes.set(d.bytes() as i64);
        }
        ChunkCache {
            memory,
            disk,
            metrics,
            disk_full: AtomicBool::new(false),
        }
    }

    /// Memory only: cheap enough to call on the async path.
    pub fn get_memory(&self, digest: &Digest) -> Option<ChunkBytes> {
        let hit = self.memory.get(digest);
        if hit.is_some() {
            self.metrics.hit(Tier::Memory);
        }
        hit
    }

    /// Memory lookup that is not counted as a hit (re-checks on the fetch path).
    pub fn peek_memory(&self, digest: &Digest) -> Option<ChunkBytes> {
        self.memory.get(digest)
    }

    pub fn contains_memory(&self, digest: &Digest) -> bool {
        self.memory.contains_key(digest)
    }

    /// Disk lookup (blocking file I/O: call from a blocking thread). A verified hit is
    /// promoted to memory.
    pub fn get_disk(&self, digest: &Digest, raw_len: u32) -> Option<ChunkBytes> {
        let disk = self.disk.as_ref()?;
        let data = Arc::new(disk.get(digest, raw_len, &self.metrics)?);
        self.metrics.hit(Tier::Disk);
        self.memory.insert(*digest, data.clone());
        Some(data)
    }

    pub fn insert_memory(&self, digest: Digest, data: ChunkBytes) {
        self.memory.insert(digest, data);
    }

    /// Store in the disk tier (blocking). Failures only cost a future refetch, so they are
    /// logged, not returned; a full filesystem once, until a write succeeds again.
    pub fn insert_disk(&self, digest: &Digest, data: &[u8]) {
        let Some(disk) = &self.disk else { return };
        match disk.put(digest, data, &self.metrics) {
            Ok(()) => {
                if self.disk_full.swap(false, Ordering::Relaxed) {
                    tracing::info!("the disk cache's filesystem has room again");
                }
            }
            Err(e) if e.is_out_of_space() => {
                if !self.disk_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the disk cache's filesystem is full: chunks are read from the network and not cached");
                }
            }
            Err(e) => tracing::warn!(error = %e, "writing chunk to the disk cache"),
        }
    }

    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// In memory or listed on disk (no I/O, nothing counted).
    pub fn holds(&self, digest: &Digest) -> bool {
        self.memory.contains_key(digest) || self.disk.as_ref().is_some_and(|d| d.contains(digest))
    }
}

struct DiskState {
    /// digest → (size, tick of last use)
    entries: HashMap<Digest, (u64, u64)>,
    /// tick → digest, oldest first
    lru: BTreeMap<u64, Digest>,
    total: u64,
    tick: u64,
}

impl DiskState {
    fn touch(&mut self, digest: &Digest) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, t)) = self.entries.get_mut(digest) {
            self.lru.remove(t);
            *t = tick;
            self.lru.insert(tick, *digest);
        }
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some((size, t)) = self.entries.remove(digest) {
            self.lru.remove(&t);
            self.total = self.total.saturating_sub(size);
        }
    }
}

pub struct DiskCache {
    dir: PathBuf,
    quota: u64,
    state: Mutex<DiskState>,
}

impl DiskCache {
    /// Open (creating) `dir` and index what an earlier mount left, oldest use first.
    pub fn open(dir: &Path, quota: u64) -> Result<Self> {
        let chunks = dir.join("chunks");
        fs::create_dir_all(&chunks).ctx(|| format!("creating {}", chunks.display()))?;
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        for sub in fs::read_dir(&chunks).ctx(|| format!("reading {}", chunks.display()))? {
            let Ok(sub) = sub else { continue };
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                let Ok(digest) = Digest::from_hex(name) else {
                    // Temporary files of an interrupted write.
                    let _ = fs::remove_file(f.path());
                    continue;
                };
                if let Ok(md) = f.metadata() {
                    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, digest, md.len()));
                }
            }
        }
        found.sort();
        let mut state = DiskState {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            total: 0,
            tick: 0,
        };
        for (_, digest, size) in found {
            state.tick += 1;
            state.entries.insert(digest, (size, state.tick));
            state.lru.insert(state.tick, digest);
            state.total += size;
        }
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            quota,
            state: Mutex::new(state),
        };
        cache.evict(0, None);
        Ok(cache)
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().total
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.state.lock().entries.contains_key(digest)
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let prefix = hex.get(..2).unwrap_or("00").to_string();
        self.dir.join("chunks").join(prefix).join(hex)
    }

    fn get(&self, digest: &Digest, raw_len: u32, metrics: &Metrics) -> Option<Vec<u8>> {
        if !self.state.lock().entries.contains_key(digest) {
            return None;
        }
        let path = self.path(digest);
        let data = fs::read(&path).ok().and_then(|d| strip_trailer(d, raw_len));
        match data {
            Some(d) => {
                self.state.lock().touch(digest);
                // Persist the LRU order for the next mount; best effort.
                if let Ok(f) = fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(d)
            }
            _ => {
                tracing::warn!(chunk = %digest, "disk cache entry missing or corrupt; dropping it");
                let _ = fs::remove_file(&path);
                let mut st = self.state.lock();
                st.remove(digest);
                metrics.disk_cache_bytes.set(st.total as i64);
                None
            }
        }
    }

    fn put(&self, digest: &Digest, data: &[u8], metrics: &Metrics) -> Result<()> {
        let size = data.len() as u64 + TRAILER as u64;
        if size > self.quota {
            return Ok(());
        }
        if self.state.lock().entries.contains_key(digest) {
            return Ok(());
        }
        self.evict(size, Some(metrics));
        match self.write(digest, data) {
            // The filesystem is full below the quota (smaller than it, or filled by others):
            // the oldest chunks make room for this one, once.
            Err(e) if e.is_out_of_space() => {
                let total = self.state.lock().total;
                self.evict_below(total.saturating_sub(size), Some(metrics));
                self.write(digest, data)?;
            }
            other => other?,
        }
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        match st.entries.insert(*digest, (size, tick)) {
            // Written twice concurrently: keep one LRU position.
            Some((_, old_tick)) => {
                st.lru.remove(&old_tick);
            }
            None => st.total += size,
        }
        st.lru.insert(tick, *digest);
        metrics.disk_cache_bytes.set(st.total as i64);
        Ok(())
    }

    /// Writes the chunk's file (with its trailer) atomically.
    fn write(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let path = self.path(digest);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent)
            .ctx(|| format!("creating a temporary file in {}", parent.display()))?;
        tmp.write_all(data)
            .and_then(|()| tmp.write_all(&crc32fast::hash(data).to_le_bytes()))
            .ctx(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .ctx(|| format!("renaming into {}", path.display()))?;
        Ok(())
    }

    /// Delete least recently used chunks until `incoming` more bytes fit the quota.
    fn evict(&self, incoming: u64, metrics: Option<&Metrics>) {
        self.evict_below(self.quota.saturating_sub(incoming), metrics);
    }

    /// Delete least recently used chunks until at most `limit` bytes are cached.
    fn evict_below(&self, limit: u64, metrics: Option<&Metrics>) {
        let mut victims = Vec::new();
        {
            let mut st = self.state.lock();
            while st.total > limit {
                let Some((&tick, &digest)) = st.lru.iter().next() else {
                    break;
                };
                st.lru.remove(&tick);
                if let Some((size, _)) = st.entries.remove(&digest) {
                    st.total = st.total.saturating_sub(size);
                }
                victims.push(digest);
            }
            if let Some(m) = metrics {
                m.disk_cache_bytes.set(st.total as i64);
                m.disk_cache_evictions.inc_by(victims.len() as u64);
            }
        }
        for d in victims {
            let _ = fs::remove_file(self.path(&d));
        }
    }
}

/// Bytes after the chunk in a disk cache file: its CRC-32, little endian.
const TRAILER: usize = 4;

/// The chunk of a disk cache file, if it has the expected length and its CRC matches.
fn strip_trailer(mut file: Vec<u8>, raw_len: u32) -> Option<Vec<u8>> {
    let len = raw_len as usize;
    if file.len() != len + TRAILER {
        return None;
    }
    let crc = u32::from_le_bytes(file.get(len..)?.try_into().ok()?);
    file.truncate(len);
    (crc32fast::hash(&file) == crc).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&prometheus::Registry::new()).expect("metrics")
    }

    #[test]
    fn disk_cache_lru_quota_and_reload() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = metrics();
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let digests: Vec<Digest> = chunks.iter().map(|c| Digest::of(c)).collect();
        const FILE: u64 = 1000 + TRAILER as u64;
        let cache = DiskCache::open(tmp.path(), 3 * FILE).expect("open");
        for (c, d) in chunks.iter().zip(&digests).take(3) {
            cache.put(d, c, &m).expect("put");
        }
        // Use chunk 0 so chunk 1 becomes the oldest.
        assert!(cache.get(&digests[0], 1000, &m).is_some());
        cache.put(&digests[3], &chunks[3], &m).expect("put");
        assert!(cache.get(&digests[1], 1000, &m).is_none());
        assert_eq!(cache.bytes(), 3 * FILE);
        drop(cache);
        let again = DiskCache::open(tmp.path(), 3 * FILE).expect("reopen");
        assert_eq!(again.bytes(), 3 * FILE);
        assert_eq!(again.get(&digests[3], 1000, &m), Some(chunks[3].clone()));
        // A flipped byte, a truncated file and one without the trailer are dropped, not
        // returned.
        let mut flipped = fs::read(again.path(&digests[2])).expect("read");
        flipped[500] ^= 1;
        fs::write(again.path(&digests[2]), flipped).expect("corrupt");
        assert!(again.get(&digests[2], 1000, &m).is_none());
        assert_eq!(again.bytes(), 2 * FILE);
        let path3 = again.path(&digests[3]);
        let whole = fs::read(&path3).expect("read");
        fs::write(&path3, &whole[..999]).expect("truncate");
        assert!(again.get(&digests[3], 1000, &m).is_none());
        fs::write(again.path(&digests[0]), &chunks[0]).expect("old format");
        assert!(again.get(&digests[0], 1000, &m).is_none());
        assert_eq!(again.bytes(), 0);
    }
}
