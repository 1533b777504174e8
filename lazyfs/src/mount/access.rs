//! `--record-access FILE`: the paths of the files read, in first-read order, written when
//! the mount ends. The output is a ready `convert --prefetch-list` for the next build.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{IoContext, Result};
use crate::index::Index;

pub struct AccessLog {
    path: PathBuf,
    index: Arc<Index>,
    seen: Mutex<(HashSet<u32>, Vec<u32>)>,
}

impl AccessLog {
    pub fn new(path: PathBuf, index: Arc<Index>) -> Self {
        AccessLog {
            path,
            index,
            seen: Mutex::new((HashSet::new(), Vec::new())),
        }
    }

    /// Note a read of file inode `inode` (only the first read of each counts).
    pub fn record(&self, inode: u32) {
        let mut seen = self.seen.lock();
        if seen.0.insert(inode) {
            seen.1.push(inode);
        }
    }

    /// Write the list (one `/path` per line; a hardlinked file under its first name).
    pub fn flush(&self) -> Result<()> {
        let order = self.seen.lock().1.clone();
        let mut out = Vec::new();
        for inode in order {
            out.extend_from_slice(self.index.inode_path(inode).as_bytes());
            out.push(b'\n');
        }
        let mut f = std::fs::File::create(&self.path)
            .ctx(|| format!("creating {}", self.path.display()))?;
        f.write_all(&out)
            .ctx(|| format!("writing {}", self.path.display()))
    }
}
