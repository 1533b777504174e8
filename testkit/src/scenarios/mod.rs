//! The measurements behind issue 21's fault targets, each a function returning a plain
//! result: the peer's CI tests call them and assert loose bounds, `shoal-bench faults` calls
//! the same functions and reports the figures against the targets. One code path, so the
//! benchmark measures exactly what CI checks.
//!
//! Each function builds its own world (registry, supernode, peers) on loopback from the
//! binaries in a directory, runs the fault-free baseline and the faulted run in the same call,
//! and panics when the world cannot be built or a client gets wrong bytes (test support:
//! `shoal-bench` runs each call in a task and reports a panic as a failed scenario). Every
//! wait inside has a time limit.

pub mod kill_parent;
pub mod overload;
pub mod registry_faults;
pub mod stall_parent;

use std::path::PathBuf;

use crate::default_bin_dir;

/// The shape of a timed swarm: `peers` fresh peers of one supernode fetch one `blob_len`-byte
/// blob at once, each limited to `rate` (`--download-rate`), so that the download lasts long
/// enough for a fault to land in its middle.
#[derive(Clone, Debug)]
pub struct SwarmOpts {
    pub bin_dir: PathBuf,
    pub peers: usize,
    pub blob_len: usize,
    /// `--download-rate` of every peer, e.g. `20MiB`.
    pub rate: String,
    /// Seed of the blobs' bytes (each run of a scenario may use its own).
    pub seed: u64,
}

impl Default for SwarmOpts {
    /// The CI tests' shape: 4 peers, a 64 MiB blob, 20 MiB/s each.
    fn default() -> Self {
        SwarmOpts {
            bin_dir: default_bin_dir(),
            peers: 4,
            blob_len: 64 << 20,
            rate: "20MiB".into(),
            seed: 0,
        }
    }
}

impl SwarmOpts {
    /// The `--download-rate=RATE` argument of every peer.
    pub fn rate_arg(&self) -> String {
        format!("--download-rate={}", self.rate)
    }
}
