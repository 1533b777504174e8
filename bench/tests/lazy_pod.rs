//! Smoke run of `shoal-bench lazy-pod` with a 32 MiB image and one run, so the harness cannot
//! rot. Like the other smoke tests (smoke.rs) it fails, saying what to do, when a
//! prerequisite is missing: root, /dev/fuse, the Debian packages containerd, runc, umoci,
//! skopeo, docker-registry, busybox-static, fuse3, iproute2, curl, and shoal-peer,
//! shoal-supernode and shoal-lazyfs beside shoal-bench (`cargo build --workspace --bins`).

mod support;

use std::path::Path;
use std::process::Command;

use support::{assert_no_mounts_left, num, require_binaries, require_programs, require_root, run};

fn require_prerequisites() {
    require_root("the lazy-pod smoke test (namespaces, containerd, FUSE)");
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
    require_programs(&[
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("docker-registry", "docker-registry"),
        ("busybox", "busybox-static"),
        ("fusermount3", "fuse3"),
        ("ip", "iproute2"),
        ("curl", "curl"),
    ]);
    require_binaries(&["shoal-peer", "shoal-supernode", "shoal-lazyfs"]);
}

#[test]
fn lazy_pod_tiny_image() {
    require_prerequisites();
    let (stdout, r) = run(&[
        "lazy-pod",
        "--size-mib",
        "32",
        "--file-kib",
        "64",
        "--runs",
        "1",
        "--timeout",
        "120",
        // The machine's TCP: the cluster smoke tests check that the list of allowed
        // congestion controls is back as it was, and may run at the same time.
        "--congestion-control",
        "machine",
        "--min-tso-segs",
        "0",
        "--json",
    ]);
    for line in [
        "lazy_cold/full = ",
        "lazy_warm/full = ",
        "median of 1 run(s)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // 512 files of 64 KiB; every 20th is read: 26 files.
    assert_eq!(num(&r, "image.files"), 512.0, "{r:#}");
    assert_eq!(num(&r, "image.set_bytes"), 26.0 * 65536.0, "{r:#}");
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{r:#}");
    let run = &runs[0];
    for pod in ["full", "lazy_cold", "lazy_warm"] {
        let t = &run[pod]["times"];
        let exited = num(t, "exited_s");
        assert!(exited > 0.0 && exited < 120.0, "{pod}: {r:#}");
        assert!(num(t, "pull_s") <= num(t, "started_s"), "{pod}: {r:#}");
    }
    // The full pull moved the whole image from the origin; the lazy pods did not.
    let full = num(run, "full.origin_egress_bytes");
    assert!(
        full >= 0.9 * num(&r, "image.full_blob_bytes"),
        "the full pull's origin egress is too small: {r:#}"
    );
    assert!(
        num(run, "lazy_cold.origin_egress_bytes") < full / 2.0,
        "{r:#}"
    );
    assert!(num(run, "lazy_cold.mount_fetch_bytes") > 0.0, "{r:#}");
    let ratio = num(&r, "lazy_cold_over_full");
    assert!(ratio > 0.0 && ratio.is_finite(), "{r:#}");

    // Nothing left behind: namespaces of the run, mounts under its work directory.
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&ns.stdout);
    let prefix = format!("shb-{}r", r["run"].as_str().unwrap_or("?"));
    assert!(!list.contains(&prefix), "leftover namespaces:\n{list}");
    assert_no_mounts_left("shoal-bench-lazy-pod");
}
