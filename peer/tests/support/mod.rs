//! Shared helpers for the end-to-end tests: binaries, ports, timeouts and blobs here;
//! [`registry`] (a real registry behind a byte-counting proxy), [`process`] (supernode and peer
//! processes), [`get`] (`shoal-peer get`), [`metrics`] (reading a scrape), [`image`]
//! (umoci/skopeo images, OCI client requests), [`containerd`] (a real containerd), [`ranged`]
//! (ranged blob requests through a mirror) and [`token`] (a bearer-token issuer for a real
//! registry).
//!
//! Every process a test starts is killed when its handle drops (also on panic, after its log
//! tail is printed), and every file lives in a temp dir owned by the test.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_common::{Digest, Sha256Hasher};

pub const MIB: u64 = 1 << 20;

/// Origin traffic allowed when a download must not touch the origin: room for a HEAD or a
/// 404's headers, far less than one piece (1 MiB).
pub const HEADERS_ONLY: u64 = 16 * 1024;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Variables that would route the children's (or our) HTTP through a proxy.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

mod containerd;
mod get;
mod image;
mod metrics;
mod process;
mod ranged;
mod registry;
mod token;
// Each test file uses a different subset.
#[allow(unused_imports)]
pub use containerd::*;
#[allow(unused_imports)]
pub use get::*;
#[allow(unused_imports)]
pub use image::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use ranged::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use token::*;

// ---------------------------------------------------------------------------------------------
// Binaries, ports, timeouts

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

/// A free port on 127.0.0.1. Picked at random below the kernel's ephemeral range (where
/// outgoing connections take their ports) and checked bindable, so tests running in parallel
/// processes and the connections they make rarely collide with it.
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Default::default);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port: u16 = rng.random_range(20_000..32_000);
        let mut taken = taken.lock().unwrap();
        if taken.contains(&port) {
            continue;
        }
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    // Fall back to the kernel's choice.
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Runs `fut`, panicking if it takes longer than `limit` (a hang fails the test instead of
/// blocking CI).
pub async fn with_timeout<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client that never uses a proxy from the environment.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

async fn status_of(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// Blobs and files

/// `len` pseudo-random bytes, the same for the same seed (splitmix64: fast even in debug
/// builds). Every piece differs from every other, so a peer serving the wrong piece cannot go
/// unnoticed.
pub fn random_blob(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    for chunk in data.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    data
}

pub fn sha256_file(path: &Path) -> Digest {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
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
