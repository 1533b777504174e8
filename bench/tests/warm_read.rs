//! Smoke run of `shoal-bench warm-read` on a tiny tree, so the harness cannot rot. Like the
//! other smoke tests (smoke.rs), it needs root, Debian's docker-registry, fuse3 and the
//! shoal-lazyfs binary beside shoal-bench (`cargo build --workspace --bins`), and fails with
//! what to do when one is missing.

mod support;

use std::path::Path;

use support::{assert_no_mounts_left, require_binaries, require_programs, require_root, run};

fn require_prerequisites() {
    require_root("the warm-read smoke test (FUSE, overlayfs, namespaces)");
    require_programs(&[
        ("docker-registry", "docker-registry"),
        ("fusermount3", "fuse3"),
    ]);
    require_binaries(&["shoal-lazyfs"]);
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
    let (_, r) = run(&["warm-read", "--tree", &tree_s, "--repeat", "2", "--json"]);

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
    assert_no_mounts_left("shoal-bench-warm-read");
}
