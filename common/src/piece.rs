//! Piece math. Every peer of a task must cut it identically, so the layout is decided once (by
//! the supernode, from the length) and then only ever passed around.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

pub const MIN_PIECE_SIZE: u64 = 1 << 20;
pub const MAX_PIECE_SIZE: u64 = 16 << 20;
/// Aim for about this many pieces: enough for many peers to exchange in parallel and to
/// pipeline along chains, few enough that per-piece overhead (a request, a fsync, a report)
/// stays small.
const TARGET_PIECES: u64 = 128;
/// More pieces than this would make bitmaps and schedules unwieldy (16 MiB × 2^20 = 16 TiB).
pub const MAX_PIECES: u64 = 1 << 20;

/// Blobs that readers fetch by byte range rather than whole, and the piece size they get.
/// A lazyfs data blob is read a chunk at a time (64 KiB–1 MiB before compression, tens of KB
/// after, see lazyfs/FORMAT.md), and a read costs its chunk plus, on average, one piece of
/// rounding: with the default 1–16 MiB pieces one small file's first read would cost
/// megabytes at the node's link and at the origin. 16 KiB keeps a scattered startup set within
/// about 1.35 × its compressed chunks (0.85 × its files' bytes) at the origin, against 2.4 ×
/// with 64 KiB pieces; the price is more pieces per blob (about 40,000 for a 624 MB blob; see
/// docs/design.md, "Sparse tasks", for what that costs). A lazyfs image names its data blobs
/// by one of two media types: the artifact form's, and the runnable image form's (prefixed
/// so that containerd treats them as layers); both are read the same way.
const RANGE_READ_MEDIA_TYPES: &[(&str, u64)] = &[
    ("application/vnd.shoal.lazyfs.data.v1", 16 << 10),
    (
        "application/vnd.oci.image.layer.shoal.lazyfs.data.v1",
        16 << 10,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceLayout {
    /// Blob length in bytes.
    pub length: u64,
    /// Bytes per piece (the last piece may be shorter); a power of two.
    pub piece_size: u64,
}

impl PieceLayout {
    /// The default layout for a blob of `length` bytes: a power of two between 1 and 16 MiB.
    pub fn for_length(length: u64) -> Self {
        let ideal = length.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
        PieceLayout {
            length,
            piece_size: ideal.clamp(MIN_PIECE_SIZE, MAX_PIECE_SIZE),
        }
    }

    /// The layout for a blob of `length` bytes whose media type is `media_type`, when known:
    /// small pieces for blobs that are read by range (lazyfs data), else
    /// [`PieceLayout::for_length`]. A function of the blob alone, so that every peer cuts it
    /// the same way whatever its first request looked like (a whole `GET` or a `Range`).
    pub fn for_blob(length: u64, media_type: Option<&str>) -> Self {
        let small = media_type.and_then(|m| {
            RANGE_READ_MEDIA_TYPES
                .iter()
                .find(|(t, _)| *t == m)
                .map(|&(_, size)| size)
        });
        match small {
            // Never more than MAX_PIECES: a huge blob gets bigger pieces.
            Some(size) => PieceLayout {
                length,
                piece_size: size.max(length.div_ceil(MAX_PIECES).next_power_of_two()),
            },
            None => Self::for_length(length),
        }
    }

    /// A layout with an explicit piece size (benchmarks, tests), validated.
    pub fn new(length: u64, piece_size: u64) -> Result<Self, ParseError> {
        let layout = PieceLayout { length, piece_size };
        layout.validate()?;
        Ok(layout)
    }

    /// Layouts arrive over the network: check them before any arithmetic relies on them.
    pub fn validate(&self) -> Result<(), ParseError> {
        if !self.piece_size.is_power_of_two() || !(4096..=(1 << 30)).contains(&self.piece_size) {
            return Err(ParseError::Layout(format!(
                "piece size {} is not a power of two between 4 KiB and 1 GiB",
                self.piece_size
            )));
        }
        if self.length.div_ceil(self.piece_size) > MAX_PIECES {
            return Err(ParseError::Layout(format!(
                "{} bytes in pieces of {} is more than {MAX_PIECES} pieces",
                self.length, self.piece_size
            )));
        }
        Ok(())
    }

    pub fn piece_count(&self) -> u32 {
        // Bounded by MAX_PIECES (2^20) once validated; saturate rather than wrap otherwise.
        u32::try_from(self.length.div_ceil(self.piece_size)).unwrap_or(u32::MAX)
    }

    /// Byte range of piece `index`, or `None` past the end.
    pub fn range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.piece_count() {
            return None;
        }
        let start = u64::from(index) * self.piece_size;
        Some(start..(start + self.piece_size).min(self.length))
    }

    /// The pieces overlapping a byte range (clamped to the blob).
    pub fn pieces_for(&self, bytes: Range<u64>) -> Range<u32> {
        if bytes.start >= bytes.end || bytes.start >= self.length {
            return 0..0;
        }
        let end = bytes.end.min(self.length);
        let first = bytes.start / self.piece_size;
        let last = (end - 1) / self.piece_size;
        // Both are < piece_count ≤ u32::MAX for validated layouts.
        (first as u32)..(last as u32 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_in_bounds() {
        for len in [0, 1, 1 << 20, 64 << 20, 128 << 20, 1 << 30, 1 << 40] {
            let l = PieceLayout::for_length(len);
            assert!(l.piece_size.is_power_of_two());
            assert!((MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&l.piece_size));
            l.validate().unwrap();
        }
        assert_eq!(PieceLayout::for_length(64 << 20).piece_size, 1 << 20);
        assert_eq!(PieceLayout::for_length(1 << 30).piece_size, 8 << 20);
    }

    #[test]
    fn range_read_blobs_get_small_pieces() {
        let lazy = Some("application/vnd.shoal.lazyfs.data.v1");
        let l = PieceLayout::for_blob(624 << 20, lazy);
        assert_eq!(l.piece_size, 16 << 10);
        l.validate().unwrap();
        // The runnable image form's data layers are the same blobs under another name.
        let image_form = Some("application/vnd.oci.image.layer.shoal.lazyfs.data.v1");
        assert_eq!(PieceLayout::for_blob(624 << 20, image_form), l);
        // Its index layer is fetched whole, like any layer.
        assert_eq!(
            PieceLayout::for_blob(
                5 << 20,
                Some("application/vnd.oci.image.layer.shoal.lazyfs.index.v1+zstd")
            ),
            PieceLayout::for_length(5 << 20)
        );
        assert_eq!(
            PieceLayout::for_blob(
                624 << 20,
                Some("application/vnd.oci.image.layer.v1.tar+gzip")
            ),
            PieceLayout::for_length(624 << 20)
        );
        assert_eq!(PieceLayout::for_blob(5, None), PieceLayout::for_length(5));
        // Never more than MAX_PIECES, however long.
        let huge = PieceLayout::for_blob(1 << 40, lazy);
        huge.validate().unwrap();
        assert!(u64::from(huge.piece_count()) <= MAX_PIECES);
    }

    #[test]
    fn ranges_cover_exactly() {
        let l = PieceLayout::new(10 * 4096 + 5, 4096).unwrap();
        assert_eq!(l.piece_count(), 11);
        assert_eq!(l.range(0), Some(0..4096));
        assert_eq!(l.range(10), Some(40960..40965));
        assert_eq!(l.range(11), None);
        assert_eq!(l.pieces_for(0..1), 0..1);
        assert_eq!(l.pieces_for(4095..4097), 0..2);
        assert_eq!(l.pieces_for(40960..1 << 40), 10..11);
        assert_eq!(l.pieces_for(5..5), 0..0);
        assert_eq!(PieceLayout::for_length(0).piece_count(), 0);
    }

    #[test]
    fn rejects_bad_layouts() {
        assert!(PieceLayout::new(100, 3000).is_err());
        assert!(PieceLayout::new(100, 0).is_err());
        assert!(PieceLayout::new(u64::MAX, 4096).is_err());
    }
}
