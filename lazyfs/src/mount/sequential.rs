//! Blob-order readahead. `convert` writes a directory's files next to each other in the
//! blob, so a cold tree walk (`cp -a`, an application loading its modules, an image scan)
//! misses on chunks that follow each other in the blob even though each belongs to another,
//! small file. Per-file readahead cannot help there, and one range request per small file
//! makes such a walk latency-bound (about 40 files/s at a 25 ms round trip).
//!
//! The [`Detector`] watches the misses the way the kernel watches page faults: a miss
//! starting inside the region fetched last time, or at most [`MAX_GAP`] after it, is
//! sequential and doubles the window of following blob chunks fetched along (from
//! [`MIN_WINDOW`] up to the mount's readahead); any other miss resets it to nothing. A single
//! cold read therefore still fetches only its own chunks, a walk reaches full windows after a
//! few misses, and a sparse walk (every twentieth file: a startup set) never grows a window
//! it would mostly throw away.

use parking_lot::Mutex;

use crate::index::{Chunk, Index};

/// The first window after one sequential miss.
pub const MIN_WINDOW: u64 = 128 << 10;
/// Blob bytes a miss may skip past the last region and still count as sequential.
pub const MAX_GAP: u64 = 64 << 10;

/// Chunk ids in (blob, offset) order, and each chunk's place in it.
pub struct BlobOrder {
    order: Vec<u32>,
    place: Vec<u32>,
}

impl BlobOrder {
    pub fn new(index: &Index) -> Self {
        let mut order: Vec<u32> = (0..index.chunks.len() as u32).collect();
        order.sort_by_key(|&id| {
            index
                .chunks
                .get(id as usize)
                .map_or((u32::MAX, u64::MAX), |c| (c.blob, c.offset))
        });
        let mut place = vec![0u32; order.len()];
        for (i, &id) in order.iter().enumerate() {
            if let Some(p) = place.get_mut(id as usize) {
                *p = i as u32;
            }
        }
        BlobOrder { order, place }
    }

    /// The chunks stored right after `chunk` in its blob (no gaps), up to `bytes` of blob.
    pub fn following(&self, index: &Index, chunk: u32, bytes: u64) -> Vec<u32> {
        let mut out = Vec::new();
        let (Some(&at), Some(first)) = (
            self.place.get(chunk as usize),
            index.chunks.get(chunk as usize),
        ) else {
            return out;
        };
        let (mut end, limit) = (first.end(), first.end().saturating_add(bytes));
        for &id in self.order.iter().skip(at as usize + 1) {
            match index.chunks.get(id as usize) {
                Some(c) if c.blob == first.blob && c.offset == end && c.end() <= limit => {
                    end = c.end();
                    out.push(id);
                }
                _ => break,
            }
        }
        out
    }
}

#[derive(Default)]
struct Last {
    blob: u32,
    start: u64,
    /// End of the region fetched (wanted chunks plus window).
    end: u64,
    window: u64,
}

/// Decides, per miss, how much of the blob after it to fetch along.
pub struct Detector {
    max: u64,
    last: Mutex<Option<Last>>,
}

impl Detector {
    /// `max`: the largest window (0 turns blob readahead off).
    pub fn new(max: u64) -> Self {
        Detector {
            max,
            last: Mutex::new(None),
        }
    }

    /// A read missed on chunks `first..=last` (by blob position): the window to fetch after
    /// `last`.
    pub fn on_miss(&self, first: &Chunk, last: &Chunk) -> u64 {
        if self.max == 0 {
            return 0;
        }
        let mut state = self.last.lock();
        let window = match state.as_ref() {
            // The same miss again (concurrent readers of one spot): no new evidence.
            Some(l) if l.blob == first.blob && first.offset == l.start => return l.window,
            // Inside the last region, or just past it: a walk that skipped a small file or
            // two still counts as one.
            Some(l)
                if l.blob == first.blob
                    && first.offset > l.start
                    && first.offset <= l.end.saturating_add(MAX_GAP) =>
            {
                (l.window * 2).max(MIN_WINDOW).min(self.max)
            }
            _ => 0,
        };
        *state = Some(Last {
            blob: first.blob,
            start: first.offset,
            end: last.end().saturating_add(window),
            window,
        });
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(blob: u32, offset: u64, stored_len: u32) -> Chunk {
        Chunk {
            blob,
            offset,
            stored_len,
            raw_len: stored_len,
            digest: shoal_common::Digest::of(&offset.to_le_bytes()),
        }
    }

    #[test]
    fn windows_grow_on_a_walk_and_reset_on_a_jump() {
        let d = Detector::new(1 << 20);
        let c = |off| chunk(0, off, 10_000);
        assert_eq!(
            d.on_miss(&c(0), &c(0)),
            0,
            "a lone read fetches only itself"
        );
        assert_eq!(d.on_miss(&c(0), &c(0)), 0, "the same miss is no walk");
        assert_eq!(d.on_miss(&c(10_000), &c(10_000)), MIN_WINDOW);
        let w2 = d.on_miss(&c(20_000 + MIN_WINDOW), &c(20_000 + MIN_WINDOW));
        assert_eq!(w2, 2 * MIN_WINDOW);
        let mut w = w2;
        let mut off = 30_000 + MIN_WINDOW + w2;
        for _ in 0..10 {
            w = d.on_miss(&c(off), &c(off));
            off += 10_000 + w;
        }
        assert_eq!(w, 1 << 20, "capped at the readahead");
        assert_eq!(
            d.on_miss(&c(off + 30_000), &c(off + 30_000)),
            1 << 20,
            "a small skip"
        );
        // Every twentieth 30 kB file: each miss lands 570 kB past the last one.
        let sparse = Detector::new(1 << 20);
        for i in 0..10u64 {
            let at = c(i * 600_000);
            assert_eq!(sparse.on_miss(&at, &at), 0, "sparse walk, miss {i}");
        }
        assert_eq!(d.on_miss(&c(500 << 20), &c(500 << 20)), 0, "a jump resets");
        assert_eq!(
            d.on_miss(&chunk(1, 0, 10), &chunk(1, 0, 10)),
            0,
            "so does another blob"
        );
        assert_eq!(Detector::new(0).on_miss(&c(0), &c(0)), 0);
    }
}
