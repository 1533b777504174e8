//! Where the end-to-end helpers put their files (daemon logs and data, downloaded copies):
//! temp dirs removed on drop, by default under the system temp dir. A benchmark can move them
//! (`--work-dir`) and keep them (`--keep-logs`) once, before it starts anything, without
//! threading a directory through every helper.

use std::path::PathBuf;
use std::sync::OnceLock;

use tempfile::TempDir;

struct Scratch {
    root: PathBuf,
    keep: bool,
}

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

/// Puts every later [`tempdir`] under `root` (created), kept after use when `keep`. Only the
/// first call counts; returns whether it did.
pub fn set_scratch(root: PathBuf, keep: bool) -> bool {
    SCRATCH.set(Scratch { root, keep }).is_ok()
}

/// A fresh temp dir: under the root given to [`set_scratch`] (and then kept if asked), else
/// under the system temp dir.
pub fn tempdir() -> TempDir {
    match SCRATCH.get() {
        Some(s) => {
            std::fs::create_dir_all(&s.root)
                .unwrap_or_else(|e| panic!("create {}: {e}", s.root.display()));
            tempfile::Builder::new()
                .prefix("shoal-")
                .disable_cleanup(s.keep)
                .tempdir_in(&s.root)
                .unwrap_or_else(|e| panic!("tempdir in {}: {e}", s.root.display()))
        }
        None => tempfile::tempdir().expect("tempdir"),
    }
}
