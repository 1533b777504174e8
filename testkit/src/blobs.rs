//! Test data: deterministic pseudo-random bytes and sha256 digests.
//!
//! Blobs are reproducible from a seed (a failing test can be rerun on the same bytes) and
//! built with a xorshift generator, fast even in debug builds. Every 8-byte word of an
//! incompressible blob differs from its neighbours, so a peer serving the wrong piece or a
//! cache returning the wrong range cannot go unnoticed.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use shoal_common::{Digest, Sha256Hasher};

/// `len` pseudo-random bytes, the same for the same seed; `compressible` repeats short runs
/// (about three words in four) so zstd and gzip have something to find.
pub fn prng_bytes(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if compressible && s & 3 != 0 {
            let b = (s >> 40) as u8 % 16 + b'a';
            out.extend_from_slice(&[b; 8]);
        } else {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// `len` incompressible pseudo-random bytes, the same for the same seed.
pub fn random_blob(seed: u64, len: usize) -> Vec<u8> {
    prng_bytes(seed, len, false)
}

/// `len` pseudo-random bytes that compress well, the same for the same seed.
pub fn compressible_blob(seed: u64, len: usize) -> Vec<u8> {
    prng_bytes(seed, len, true)
}

/// The digest of a file's content (read in 1 MiB blocks: blobs of hundreds of MiB stay out of
/// memory).
pub fn sha256_file(path: &Path) -> Digest {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return h.finish();
        }
        h.update(&buf[..n]);
    }
}

/// Asserts `path` exists and has exactly the content named by `digest`.
pub fn assert_file_digest(path: &Path, digest: &Digest) {
    assert!(path.exists(), "{} was not written", path.display());
    let got = sha256_file(path);
    assert_eq!(
        &got,
        digest,
        "{} has the wrong content ({} bytes)",
        path.display(),
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_reproducible_and_distinct() {
        assert_eq!(random_blob(7, 1000), random_blob(7, 1000));
        assert_ne!(random_blob(7, 1000), random_blob(8, 1000));
        assert_eq!(random_blob(7, 1001).len(), 1001);
        let blob = random_blob(1, 8 << 10);
        let words: std::collections::HashSet<&[u8]> = blob.chunks(8).collect();
        assert_eq!(words.len(), 1 << 10, "every word of a random blob differs");
    }

    #[test]
    fn file_digest_matches_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let data = compressible_blob(3, 3 << 20);
        let path = dir.path().join("blob");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path), Digest::of(&data));
        assert_file_digest(&path, &Digest::of(&data));
    }
}
