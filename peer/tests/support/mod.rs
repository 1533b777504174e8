//! Shared helpers for the peer's end-to-end tests, on top of `shoal-testkit` (ports, child
//! processes, the registry, proxies, metrics and blobs, and Shoal's own daemons, re-exported
//! here so that every test file names them the same): from the test kit, `origin` (the
//! registry behind a byte-counting proxy, and pushing to it), `shoal` (supernode and peer
//! processes), `get` (`shoal-peer get`), `swarm` (timed swarms for fault tests, measured
//! against a fault-free run) and bounded waits, shared with `shoal-bench faults`; here,
//! binaries and files, [`image`] (the kit's umoci/skopeo images plus Basic auth),
//! [`containerd`] (a real containerd), [`ranged`] (ranged blob requests through a mirror) and
//! [`token`] (a bearer-token issuer for a real registry).
//!
//! Every process a test starts is killed when its handle drops (also on panic, after its log
//! tail is printed), and every file lives in a temp dir owned by the test.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};

#[allow(unused_imports)]
pub use shoal_testkit::get::*;
#[allow(unused_imports)]
pub use shoal_testkit::origin::*;
#[allow(unused_imports)]
pub use shoal_testkit::shoal::*;
#[allow(unused_imports)]
pub use shoal_testkit::swarm::*;
#[allow(unused_imports)]
pub use shoal_testkit::{
    assert_file_digest, free_port, hermetic_env, http, metric_value, random_blob, sha256_file,
    wait_for, with_timeout, Daemon, Fault, FaultPlan, FaultProxy, Registry, RegistryAuth, Tmpfs,
};

pub const MIB: u64 = 1 << 20;

/// Origin traffic allowed when a download must not touch the origin: room for a HEAD or a
/// 404's headers, far less than one piece (1 MiB).
pub const HEADERS_ONLY: u64 = 16 * 1024;

mod containerd;
mod image;
mod ranged;
mod token;
// Each test file uses a different subset.
#[allow(unused_imports)]
pub use containerd::*;
#[allow(unused_imports)]
pub use image::*;
#[allow(unused_imports)]
pub use ranged::*;
#[allow(unused_imports)]
pub use token::*;

// ---------------------------------------------------------------------------------------------
// Binaries, ports, timeouts

/// A peer that lies to other peers: started with `opts`, its piece server sits behind a
/// [`FaultProxy`] that flips one byte in every 4 KiB of what it serves, and the supernode is
/// told to send other peers there. It stores (and serves to its own clients) correct bytes.
pub async fn start_liar(name: &str, opts: PeerOpts) -> (Peer, FaultProxy) {
    let p2p_port = free_port();
    let proxy = FaultProxy::start(
        &format!("127.0.0.1:{p2p_port}"),
        FaultPlan::always(Fault::Corrupt(4096)),
    );
    let opts = opts.p2p_port(p2p_port).advertise_port(proxy.port);
    (Peer::start(name, opts).await, proxy)
}

pub fn peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal-peer"))
}

pub fn supernode_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_shoal-peer")).with_file_name("shoal-supernode");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests \
         (or use .ci/test, which does)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Files

/// Names of the entries in `dir` (to check no partial or temp file is left behind).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bytes of disk the regular files under `dir` occupy: for each file the smaller of its
/// apparent length and its allocated blocks (so a sparse, preallocated file counts only what
/// it really holds, and a full file counts its length).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue; // removed while walking
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len().min(md.blocks() * 512);
            }
        }
    }
    total
}
