//! Smoke run of `shoal-bench warm-read` on a tiny tree, so the harness cannot rot. Like the
//! other smoke tests (smoke.rs), it needs root, Debian's docker-registry, fuse3 and the
//! shoal-lazyfs binary beside shoal-bench (`cargo build --workspace --bins`), and fails with
//! what to do when one is missing.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_shoal-bench");

fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the warm-read smoke test needs root (FUSE, overlayfs, namespaces)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in [
        ("docker-registry", "docker-registry"),
        ("fusermount3", "fuse3"),
    ] {
        assert!(
            std::env::split_paths(&path).any(|d| d.join(program).is_file()),
            "`{program}` is not on PATH: install the Debian package {package} (.ci/run does)"
        );
    }
    let lazyfs = Path::new(BENCH)
        .parent()
        .expect("the bench binary has a directory")
        .join("shoal-lazyfs");
    assert!(
        lazyfs.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        lazyfs.display()
    );
}

/// A few files, a subdirectory, a symlink and a hard link: each kind a tar walk meets.
fn tiny_tree(root: &Path) {
    let sub = root.join("sub/deeper");
    std::fs::create_dir_all(&sub).expect("creating the tree");
    for i in 0..20u32 {
        let body: Vec<u8> = (0..(i * 997 + 1)).map(|b| (b % 251) as u8).collect();
        std::fs::write(root.join(format!("f{i}")), &body).expect("writing a file");
    }
    std::fs::write(sub.join("big"), vec![7u8; 300_000]).expect("writing a file");
    std::os::unix::fs::symlink("../f1", root.join("sub/link")).expect("a symlink");
    std::fs::hard_link(root.join("f2"), root.join("sub/f2-again")).expect("a hard link");
}

#[test]
fn warm_read_tiny_tree() {
    require_prerequisites();
    let dir = tempfile::tempdir().expect("a temp dir");
    let tree = dir.path().join("tree");
    tiny_tree(&tree);
    let tree_s = tree.display().to_string();
    let out = Command::new(BENCH)
        .args(["warm-read", "--tree", &tree_s, "--repeat", "2", "--json"])
        .output()
        .expect("running shoal-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "shoal-bench warm-read failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The table first, then the JSON on a line of its own.
    let json = stdout.find("\n{").map_or(&stdout[..], |i| &stdout[i + 1..]);
    let r: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));

    let native = r["warm"]["native"]["tar_bytes"].as_u64().unwrap_or(0);
    assert!(native > 300_000, "{r:#}");
    for v in ["lazyfs", "overlay_native", "overlay_lazyfs"] {
        let w = &r["warm"][v];
        assert_eq!(w["tar_bytes"].as_u64(), Some(native), "{v}: {r:#}");
        assert_eq!(w["seconds"].as_array().map(Vec::len), Some(2), "{v}: {r:#}");
    }
    assert_eq!(r["cold"]["tar_bytes"].as_u64(), Some(native), "{r:#}");
    for k in ["ratio_lazyfs_native", "ratio_overlay_lazyfs_native"] {
        let ratio = r[k].as_f64().unwrap_or(0.0);
        assert!(ratio > 0.0 && ratio.is_finite(), "{k}: {r:#}");
    }
    // Where tracefs lets them be counted: a warm pass opens, flushes and releases nothing
    // through the daemon (the kernel was told once for the whole connection). Only these:
    // reads and readlinks come back if memory pressure drops cached pages meanwhile.
    if let Some(counts) = r["fuse_requests"]["lazyfs"].as_object() {
        for op in ["OPEN", "FLUSH", "RELEASE", "OPENDIR", "RELEASEDIR"] {
            assert!(counts.get(op).is_none(), "{op} in a warm pass: {r:#}");
        }
    }
    // The work directory's mounts (FUSE and both overlays) are gone.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains("shoal-bench-warm-read"),
        "leftover mounts:\n{mounts}"
    );
}
