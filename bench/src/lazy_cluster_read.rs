//! The reader of `shoal-bench lazy-cluster`: `shoal-bench internal --gate read-set …`, one per
//! node, released by the start gate at the same moment as the node's mount. It waits until the
//! mount shows the first listed file, then reads every listed file to EOF in order (1 MiB
//! reads, one thread, as `shoal-bench lazyfs` reads its startup set) and compares each read
//! with the same bytes of the source tree, so a wrong or short read fails the node instead of
//! looking fast. Comparing against the tree on tmpfs costs a memory copy; hashing or
//! regenerating the contents would cost the 2 shared cores more while the round is timed.
//!
//! Its times go to a small JSON file (its stdout belongs to the gate); the harness times the
//! node itself from the release to this process's exit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What the reader writes to its `--result` file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ReadResult {
    /// From the release until the mount showed the first file.
    pub(crate) mounted_s: f64,
    /// From the release until the last byte was read and compared.
    pub(crate) read_s: f64,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

pub(crate) struct ReadSet {
    pub(crate) mount: PathBuf,
    pub(crate) source: PathBuf,
    /// One path per line, relative to both roots.
    pub(crate) list: PathBuf,
    pub(crate) result: PathBuf,
    pub(crate) timeout: Duration,
}

pub(crate) async fn main(job: ReadSet) -> Result<()> {
    tokio::task::spawn_blocking(move || run(&job))
        .await
        .context("the reader panicked")?
}

fn run(job: &ReadSet) -> Result<()> {
    let t0 = Instant::now();
    let list = std::fs::read_to_string(&job.list)
        .with_context(|| format!("reading {}", job.list.display()))?;
    let paths: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    let first = paths.first().context("the file list is empty")?;
    let probe = job.mount.join(first);
    while std::fs::symlink_metadata(&probe).is_err() {
        if t0.elapsed() > job.timeout {
            bail!(
                "{} did not appear within {:?}",
                probe.display(),
                job.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mounted = t0.elapsed();
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut bytes = 0;
    for p in &paths {
        bytes += compare_file(&job.mount.join(p), &job.source.join(p), &mut got, &mut want)?;
    }
    let result = ReadResult {
        mounted_s: mounted.as_secs_f64(),
        read_s: t0.elapsed().as_secs_f64(),
        files: paths.len(),
        bytes,
    };
    std::fs::write(&job.result, serde_json::to_vec(&result)?)
        .with_context(|| format!("writing {}", job.result.display()))?;
    Ok(())
}

/// Reads `path` to EOF, checking every read against `source`; returns the bytes read.
fn compare_file(path: &Path, source: &Path, got: &mut [u8], want: &mut [u8]) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut s = File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let mut offset = 0u64;
    loop {
        let n = f
            .read(got)
            .with_context(|| format!("reading {} at {offset}", path.display()))?;
        if n == 0 {
            break;
        }
        s.read_exact(&mut want[..n])
            .with_context(|| format!("{} is longer than the source", path.display()))?;
        if got[..n] != want[..n] {
            bail!(
                "{}: bytes {offset}..{} differ from the source",
                path.display(),
                offset + n as u64
            );
        }
        offset += n as u64;
    }
    if s.read(&mut want[..1])? != 0 {
        bail!(
            "{} ended after {offset} bytes, before the source",
            path.display()
        );
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_trees_pass_and_any_difference_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("d")).unwrap();
            std::fs::write(root.join("d/x"), vec![7u8; 3 << 20]).unwrap();
            std::fs::write(root.join("y"), b"hello").unwrap();
        }
        let list = dir.path().join("list");
        std::fs::write(&list, "d/x\ny\n").unwrap();
        let job = ReadSet {
            mount: a.clone(),
            source: b.clone(),
            list,
            result: dir.path().join("r.json"),
            timeout: Duration::from_secs(5),
        };
        run(&job).unwrap();
        let r: ReadResult = serde_json::from_slice(&std::fs::read(&job.result).unwrap()).unwrap();
        assert_eq!((r.files, r.bytes), (2, (3 << 20) + 5));
        assert!(r.mounted_s <= r.read_s);

        std::fs::write(a.join("y"), b"hellO").unwrap();
        assert!(run(&job).unwrap_err().to_string().contains("differ"));
        std::fs::write(a.join("y"), b"hell").unwrap();
        assert!(run(&job)
            .unwrap_err()
            .to_string()
            .contains("before the source"));
        std::fs::write(a.join("y"), b"hello!").unwrap();
        assert!(format!("{:#}", run(&job).unwrap_err()).contains("longer"));
    }
}
