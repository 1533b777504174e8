//! Smoke runs of the benchmarks, small enough for CI, so the harness cannot rot.
//!
//! They need root, iproute2, Debian's docker-registry and the shoal-peer / shoal-supernode
//! binaries beside shoal-bench (`cargo build --workspace --bins`, as `.ci/test` does). A
//! missing prerequisite fails the test with a message saying what to do: CI has them all, so
//! a silent skip would only hide breakage.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{
    assert_no_mounts_left, num, require_binaries, require_programs, require_root, run_json,
};

fn require_cluster_prerequisites() {
    require_root("the cluster smoke test (network namespaces, tc)");
    require_programs(&[
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("docker-registry", "docker-registry"),
    ]);
    require_binaries(&["shoal-peer", "shoal-supernode"]);
}

/// No namespace of the report's run (`shb-RUN-*`) is left behind.
fn assert_no_namespaces_left(report: &Value) {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let run = report["run"].as_str().unwrap_or("");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !run.is_empty() && !list.contains(&format!("shb-{run}-")),
        "leftover namespaces:\n{list}"
    );
}

#[test]
fn cluster_three_nodes() {
    require_cluster_prerequisites();
    let allowed = || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
            .expect("reading the allowed congestion controls")
    };
    let allowed_before = allowed();
    let r = run_json(&[
        "cluster",
        "--nodes",
        "3",
        "--size-mib",
        "8",
        "--rate-mbit",
        "200",
        "--no-baseline",
        "--tcp-split",
        "--timeout",
        "120",
        "--json",
    ]);
    assert_eq!(num(&r, "nodes"), 3.0);
    assert_eq!(num(&r, "p2p.completed"), 3.0, "{r:#}");
    assert_eq!(num(&r, "p2p.failed"), 0.0, "{r:#}");
    // F/u_s = 8 MiB × 8 / 200 Mbit/s.
    let bound = num(&r, "lower_bound_s");
    assert!((bound - 0.3355).abs() < 0.001, "{bound}");
    let last = num(&r, "p2p.last_s");
    assert!(last > 0.0 && last < 120.0, "{last}");
    let ratio = num(&r, "p2p.ratio_to_bound");
    assert!(ratio >= 0.95, "faster than physically possible: {ratio}");
    assert!(num(&r, "p2p.p50_s") <= last);
    let egress = num(&r, "p2p.origin_egress_ratio");
    assert!(
        (0.95..=1.5).contains(&egress),
        "origin egress ÷ blob = {egress}"
    );
    for counter in ["origin_retransmitted_segments", "origin_tcp_timeouts"] {
        assert!(r["p2p"][counter].is_u64(), "{counter} missing: {r:#}");
    }
    let nodes = r["p2p"]["node_results"].as_array().expect("node results");
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["ok"] == Value::Bool(true)), "{r:#}");
    assert!(r["baseline"].is_null());
    // The simulated hosts' TCP (host_tcp.rs), and the machine's list of allowed congestion
    // controls put back as it was.
    let sysctls: Vec<&str> = r["host_sysctls"]
        .as_array()
        .expect("host_sysctls")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        sysctls,
        [
            "net.ipv4.tcp_congestion_control=cubic",
            "net.ipv4.tcp_min_tso_segs=16"
        ],
        "{r:#}"
    );
    assert_eq!(allowed(), allowed_before);
    let tbf = r["tbf"].as_str().expect("tbf");
    // 5 ms of 200 Mbit/s: above the 96 KiB floor.
    assert!(tbf.contains("burst 125000"), "{tbf}");
    // The TCP split round moved the same bytes by plain TCP: the origin sent the blob about
    // once, and no faster than the bound allows.
    assert_eq!(num(&r, "tcp_split.completed"), 3.0, "{r:#}");
    let split = num(&r, "tcp_split.ratio_to_bound");
    assert!(
        split >= 0.95,
        "tcp split faster than physically possible: {split}"
    );
    let egress = num(&r, "tcp_split.origin_egress_ratio");
    assert!(
        (0.95..=1.2).contains(&egress),
        "tcp split egress ÷ blob = {egress}"
    );
    // The namespaces are gone.
    assert_no_namespaces_left(&r);
}

/// The other P2P client: `shoal-peer get`, which writes and hashes its own copy; and the
/// machine's own TCP settings in the simulated hosts.
#[test]
fn cluster_with_the_get_client() {
    require_cluster_prerequisites();
    let r = run_json(&[
        "cluster",
        "--nodes",
        "2",
        "--size-mib",
        "4",
        "--rate-mbit",
        "200",
        "--no-baseline",
        "--congestion-control",
        "machine",
        "--min-tso-segs",
        "0",
        "--client",
        "get",
        "--timeout",
        "120",
        "--json",
    ]);
    assert_eq!(r["client"], Value::String("get".into()), "{r:#}");
    assert_eq!(r["host_sysctls"], Value::Array(Vec::new()), "{r:#}");
    assert_eq!(num(&r, "p2p.completed"), 2.0, "{r:#}");
    assert!(num(&r, "p2p.ratio_to_bound") >= 0.95, "{r:#}");
}

#[test]
fn lazyfs_tiny_tree() {
    require_cluster_prerequisites();
    require_programs(&[
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("mksquashfs", "squashfs-tools"),
        ("squashfuse", "squashfuse"),
        ("fusermount3", "fuse3"),
    ]);
    require_binaries(&["shoal-lazyfs"]);
    let r = run_json(&[
        "lazyfs",
        "--small-files",
        "300",
        "--medium-files",
        "5",
        "--large-files",
        "0",
        "--many-files",
        "2000",
        "--repeat",
        "1",
        "--skip-baseline",
        "--json",
    ]);
    assert_eq!(num(&r, "files"), 305.0, "{r:#}");
    for mode in ["direct", "peer"] {
        let t = num(&r, &format!("first_read_median_seconds.{mode}"));
        assert!(t > 0.0 && t < 30.0, "{mode}: {t}");
    }
    // Both modes read the same startup set and fetch about the same bytes: its chunks, not
    // the blob.
    let runs = r["startup_set"]["runs"].as_array().expect("startup runs");
    assert_eq!(runs.len(), 2, "{r:#}");
    let tree = num(&r, "tree_bytes");
    for run in runs {
        let link = run["link_bytes"].as_f64().unwrap_or(f64::MAX);
        assert!(
            link < tree / 4.0,
            "startup set fetched {link} of a {tree}-byte tree"
        );
    }
    // Warm reads fetch nothing: at most a few control packets cross the origin's link
    // meanwhile (an ARP reply, the FIN of an idle pooled connection; 70 bytes seen), never
    // one full-size data segment.
    let warm_link = num(&r, "warm_link_bytes");
    assert!(
        warm_link < 1500.0,
        "warm reads used the link: {warm_link} bytes"
    );
    for k in ["lazyfs_remount", "squashfuse", "native"] {
        assert!(num(&r, &format!("warm_mb_per_s.{k}")) > 0.0, "{k}");
    }
    let many = r["many_mount_seconds"][0].as_f64().unwrap_or(0.0);
    assert!(many > 0.0 && many < 30.0, "{r:#}");
    assert!(r["baseline"].is_null());
    assert_no_mounts_left("shoal-bench-lazyfs");
}

/// Three nodes mount one small image through their peers and read its startup set at once;
/// every byte is compared with the tree, so only the plumbing and the accounting are checked
/// here, not how well the peers share.
#[test]
fn lazy_cluster_three_nodes() {
    require_cluster_prerequisites();
    require_programs(&[
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
    ]);
    require_binaries(&["shoal-lazyfs"]);
    let r = run_json(&[
        "lazy-cluster",
        "--nodes",
        "3",
        "--small-files",
        "300",
        "--medium-files",
        "5",
        "--large-files",
        "0",
        "--rate-mbit",
        "200",
        "--repeat",
        "1",
        "--timeout",
        "120",
        // The machine's TCP: the cluster smoke test checks that the list of allowed
        // congestion controls is back as it was, and may run at the same time.
        "--congestion-control",
        "machine",
        "--min-tso-segs",
        "0",
        "--json",
    ]);
    assert_eq!(num(&r, "nodes"), 3.0);
    assert_eq!(num(&r, "files"), 305.0, "{r:#}");
    // Every 20th of 305 files; their chunks from the index, rounded out to whole pieces.
    assert_eq!(num(&r, "set.files"), 16.0, "{r:#}");
    let chunks = num(&r, "set.chunk_bytes");
    assert!(chunks > 0.0 && chunks < num(&r, "set.file_bytes"), "{r:#}");
    assert!(num(&r, "set.piece_bytes") >= chunks, "{r:#}");
    assert!(num(&r, "set.index_bytes") > 0.0, "{r:#}");
    let first = &r["first_reads"][0];
    let t = first["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(t > 0.0 && t < 30.0, "{r:#}");
    assert!(num(first, "node_link_bytes") > 0.0, "{r:#}");
    for (round, nodes) in [("alone", 1.0), ("together", 3.0)] {
        assert_eq!(num(&r, &format!("{round}.completed")), nodes, "{r:#}");
        assert_eq!(num(&r, &format!("{round}.failed")), 0.0, "{r:#}");
        // The origin sent the index and the set's chunks at least once.
        let egress = num(&r, &format!("{round}.origin_egress_bytes"));
        assert!(egress >= chunks, "{round}: origin sent {egress} B: {r:#}");
        for n in r[round]["node_results"].as_array().expect("node results") {
            assert!(num(n, "mounted_s") <= num(n, "read_s"), "{r:#}");
            assert!(num(n, "read_s") <= num(n, "seconds"), "{r:#}");
            assert_eq!(num(n, "mount_read_errors"), 0.0, "{r:#}");
        }
    }
    assert!(num(&r, "summary.last_over_alone") > 0.0, "{r:#}");
    assert!(num(&r, "summary.egress_over_set") > 0.0, "{r:#}");
    assert_no_mounts_left("shoal-bench-lazy-cluster");
    assert_no_namespaces_left(&r);
}

#[test]
fn supernode_two_hundred_peers() {
    require_binaries(&["shoal-supernode"]);
    let r = run_json(&["supernode", "--peers", "200", "--duration", "3", "--json"]);
    assert_eq!(num(&r, "peers"), 200.0);
    assert!(num(&r, "schedule_requests") > 0.0, "{r:#}");
    assert!(num(&r, "report_requests") > 0.0, "{r:#}");
    assert!(num(&r, "requests_per_s") > 0.0, "{r:#}");
    assert_eq!(num(&r, "errors"), 0.0, "{r:#}");
    assert!(num(&r, "pieces_accepted") > 0.0, "{r:#}");
    assert_eq!(num(&r, "pieces_rejected"), 0.0, "{r:#}");
    let l = num(&r, "schedule_latency_ms.p99");
    assert!(l > 0.0 && l <= num(&r, "schedule_latency_ms.max"), "{r:#}");
}

#[test]
fn memory_four_downloads() {
    require_programs(&[("docker-registry", "docker-registry")]);
    require_binaries(&["shoal-peer"]);
    let r = run_json(&["memory", "--downloads", "4", "--size-mib", "2", "--json"]);
    assert_eq!(num(&r, "downloads"), 4.0);
    assert_eq!(num(&r, "blobs"), 4.0);
    assert_eq!(num(&r, "size_bytes"), f64::from(2 << 20));
    let mib = f64::from(1 << 20);
    let idle = num(&r, "idle.rss_bytes");
    // A Rust daemon with tokio and a few listeners: more than 1 MiB, less than a few GiB.
    assert!(idle > mib && idle < 4096.0 * mib, "{r:#}");
    assert_eq!(
        num(&r, "idle.rss_bytes"),
        num(&r, "idle.anon_bytes") + num(&r, "idle.file_bytes") + num(&r, "idle.shmem_bytes"),
        "{r:#}"
    );
    for round in ["cold", "warm"] {
        assert_eq!(num(&r, &format!("{round}.completed")), 4.0, "{r:#}");
        assert_eq!(num(&r, &format!("{round}.failed")), 0.0, "{r:#}");
        let total = num(&r, &format!("{round}.total_s"));
        assert!(total > 0.0 && total < 600.0, "{r:#}");
        assert!(num(&r, &format!("{round}.p50_s")) <= total, "{r:#}");
        let peak = num(&r, &format!("{round}.peak_rss_bytes"));
        assert!(peak > mib && peak < 4096.0 * mib, "{r:#}");
        assert_eq!(peak, num(&r, &format!("{round}.peak.rss_bytes")), "{r:#}");
        assert!(num(&r, &format!("{round}.samples")) >= 2.0, "{r:#}");
        // VmHWM bounds every sample, up to the slack of the kernel's per-CPU RSS counters.
        assert!(
            peak <= num(&r, "hwm_bytes") * 1.02 + mib,
            "a sampled RSS well above VmHWM: {r:#}"
        );
    }
    // Cold: every blob came from the registry; warm: all from the cache.
    assert!(
        num(&r, "cold.origin_bytes") >= 4.0 * f64::from(2 << 20),
        "{r:#}"
    );
    assert_eq!(num(&r, "warm.origin_bytes"), 0.0, "{r:#}");
    assert_eq!(
        num(&r, "peak_rss_bytes"),
        num(&r, "cold.peak_rss_bytes").max(num(&r, "warm.peak_rss_bytes"))
    );
    assert_eq!(num(&r, "idle_target_bytes"), 64.0 * mib);
    assert_eq!(num(&r, "serving_target_bytes"), 256.0 * mib);
    assert_eq!(r["idle_ok"].as_bool(), Some(idle <= 64.0 * mib), "{r:#}");
    assert!(r["serving_ok"].is_boolean(), "{r:#}");
}

#[test]
fn faults_kill_parent_once() {
    require_programs(&[("docker-registry", "docker-registry")]);
    require_binaries(&["shoal-peer", "shoal-supernode"]);
    let r = run_json(&[
        "faults",
        "--runs",
        "1",
        "--scenario",
        "kill-parent",
        "--swarm-size-mib",
        "32",
        "--rate",
        "8MiB",
        "--timeout",
        "120",
        "--json",
    ]);
    assert_eq!(num(&r, "runs"), 1.0, "{r:#}");
    assert_eq!(num(&r, "failed_runs"), 0.0, "{r:#}");
    let scenario = &r["scenarios"][0];
    assert_eq!(scenario["scenario"], "kill-parent", "{r:#}");
    assert!(scenario["runs"][0]["error"].is_null(), "{r:#}");
    let ratio = num(&scenario["runs"][0]["measures"][0], "value");
    // The survivors cannot finish before a swarm that lost nobody started; a ratio near 0 or
    // in the hundreds means the timing is broken.
    assert!(ratio > 0.2 && ratio < 100.0, "{r:#}");
    let target = &scenario["targets"][0];
    assert_eq!(num(target, "limit"), 1.5, "{r:#}");
    assert_eq!(num(target, "median"), ratio, "{r:#}");
    assert_eq!(target["met"].as_bool(), Some(ratio <= 1.5), "{r:#}");
    assert_eq!(r["all_met"], target["met"], "{r:#}");
}
