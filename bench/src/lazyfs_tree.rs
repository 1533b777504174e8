//! Deterministic source trees for the lazyfs mount benchmark: pseudo-random but partially
//! compressible file contents in a realistic size mix, plus the helpers that read a tree
//! (or a mount of it) back in a fixed order.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// xorshift64*: fast, deterministic, good enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero (xorshift's fixed point).
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (hi > lo).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// Log-uniform in `lo..hi`: many small values, a tail of large ones.
    fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((a + (b - a) * u).exp() as u64).clamp(lo, hi - 1)
    }
}

/// One file of a generated tree.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Relative to the tree's root.
    pub path: PathBuf,
    pub size: u64,
    seed: u64,
}

#[cfg(test)]
impl FileSpec {
    /// A spec for a file some other test made up (its contents are not generated).
    pub fn for_test(path: &str, size: u64) -> Self {
        FileSpec {
            path: path.into(),
            size,
            seed: 0,
        }
    }
}

/// Layout of the ≥ 1 GiB tree: `small` files of 1–64 KiB, `medium` of 64 KiB–4 MiB and
/// `large` of 50–200 MiB, spread over nested directories.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub small: u32,
    pub medium: u32,
    pub large: u32,
}

/// Every file of the big tree, in a fixed order (sorted by path).
pub fn plan_big(mix: Mix) -> Vec<FileSpec> {
    let mut rng = Rng::new(0x5EED_0001);
    let mut out = Vec::new();
    let mut push = |path: PathBuf, size: u64, seed: u64| out.push(FileSpec { path, size, seed });
    for i in 0..mix.small {
        let size = rng.log_range(1 << 10, 64 << 10);
        // 40 top directories, 10 subdirectories each.
        let path = PathBuf::from(format!(
            "usr/lib{:02}/pkg{:02}/f{:05}.dat",
            i % 40,
            (i / 40) % 10,
            i
        ));
        push(path, size, rng.next());
    }
    for i in 0..mix.medium {
        let size = rng.log_range(64 << 10, 4 << 20);
        let path = PathBuf::from(format!("opt/share{:02}/m{:04}.bin", i % 20, i));
        push(path, size, rng.next());
    }
    for i in 0..mix.large {
        let size = rng.range(50 << 20, 200 << 20);
        push(
            PathBuf::from(format!("data/large{i}.bin")),
            size,
            rng.next(),
        );
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `count` files of 16–255 bytes in a 4-level tree (for the mount-time measurement).
pub fn plan_many(count: u32) -> Vec<FileSpec> {
    let mut rng = Rng::new(0x5EED_0002);
    let mut out: Vec<FileSpec> = (0..count)
        .map(|i| FileSpec {
            path: PathBuf::from(format!(
                "a{:02}/b{:02}/c{:02}/f{:06}",
                i % 50,
                (i / 50) % 20,
                (i / 1000) % 100,
                i
            )),
            size: rng.range(16, 256),
            seed: rng.next(),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

const WORDS: &[&[u8]] = &[
    b"lorem ", b"ipsum ", b"shoal ", b"chunk ", b"layer ", b"image ", b"peer ", b"mount ",
    b"fuse\n", b"lazy ", b"cache ", b"index ", b"blob ", b"zstd ", b"tree ", b"node ",
];

/// The file's bytes, 4 KiB block by block: a quarter random, half drawn from a 16-letter
/// alphabet, a quarter text from a small word list (compresses to roughly 50 %).
fn fill(seed: u64, size: u64, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut block = vec![0u8; 4096];
    let mut left = size;
    while left > 0 {
        let n = left.min(4096) as usize;
        let b = &mut block[..n];
        match rng.next() % 4 {
            0 => {
                for c in b.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
            }
            1 | 2 => {
                for c in b.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    for (d, s) in c.iter_mut().zip(v) {
                        *d = b'a' + (s & 0x0F);
                    }
                }
            }
            _ => {
                let mut i = 0;
                while i < n {
                    let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
                    let k = w.len().min(n - i);
                    b[i..i + k].copy_from_slice(&w[..k]);
                    i += k;
                }
            }
        }
        sink(b)?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes every planned file under `root`.
pub fn write_tree(root: &Path, files: &[FileSpec]) -> Result<()> {
    for f in files {
        let path = root.join(&f.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        fill(f.seed, f.size, |b| Ok(out.write_all(b)?))?;
        out.flush()?;
    }
    Ok(())
}

/// Reads `files` under `root` in order with a 1 MiB buffer; returns bytes read and time.
pub fn read_files(root: &Path, files: &[&FileSpec]) -> Result<(u64, Duration)> {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut total = 0u64;
    for f in files {
        let path = root.join(&f.path);
        let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((total, start.elapsed()))
}

/// Compares one file under `root` with what the generator wrote.
pub fn verify_file(root: &Path, f: &FileSpec) -> Result<()> {
    let got = fs::read(root.join(&f.path))
        .with_context(|| format!("reading {}", root.join(&f.path).display()))?;
    let mut want = Vec::with_capacity(f.size as usize);
    fill(f.seed, f.size, |b| {
        want.extend_from_slice(b);
        Ok(())
    })?;
    if got != want {
        bail!(
            "{} differs from the source ({} bytes read, {} expected)",
            f.path.display(),
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// The startup set: every 20th file (≈ 5 %), which mixes all sizes.
pub fn startup_set(files: &[FileSpec]) -> Vec<&FileSpec> {
    files.iter().step_by(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_sized() {
        let mix = Mix {
            small: 100,
            medium: 5,
            large: 0,
        };
        let a = plan_big(mix);
        let b = plan_big(mix);
        assert_eq!(a.len(), 105);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.path == y.path && x.size == y.size));
        assert!(a.windows(2).all(|w| w[0].path < w[1].path));
        let many = plan_many(2000);
        let unique: std::collections::HashSet<_> = many.iter().map(|f| &f.path).collect();
        assert_eq!(unique.len(), 2000);
    }

    #[test]
    fn write_read_verify() {
        let dir = tempfile::tempdir().unwrap();
        let files = plan_big(Mix {
            small: 30,
            medium: 2,
            large: 0,
        });
        write_tree(dir.path(), &files).unwrap();
        let all: Vec<&FileSpec> = files.iter().collect();
        let (bytes, _) = read_files(dir.path(), &all).unwrap();
        assert_eq!(bytes, files.iter().map(|f| f.size).sum::<u64>());
        for f in &files {
            verify_file(dir.path(), f).unwrap();
        }
        assert_eq!(startup_set(&files).len(), 2);
    }
}
