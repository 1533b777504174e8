//! `docs/metrics.md` against what the daemons really expose, both ways: a running `shoal-peer`
//! (with its embedded supernode) and a running `shoal-supernode` are scraped; every `shoal_*`
//! family exposed is catalogued with the same type, and every catalogued metric is exposed (or
//! marked "after first use": labelled vectors only appear once a label value is observed).
//! Also: the Grafana dashboard is valid JSON and queries only catalogued metrics.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_testkit::Daemon;
use support::{bin, free_port, http_get, workspace_root};

struct Entry {
    kind: String,
    after_first_use: bool,
}

/// The catalogue: every table row whose first cell is a `shoal_*` name.
fn catalogue() -> BTreeMap<String, Entry> {
    let text = std::fs::read_to_string(workspace_root().join("docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let Some(name) = cells.first().map(|c| c.trim().trim_matches('`')) else {
            continue;
        };
        if !name.starts_with("shoal_") {
            continue;
        }
        assert_eq!(cells.len(), 5, "docs/metrics.md row needs 5 cells: {line}");
        let after = cells[4].trim();
        assert!(
            after == "yes" || after == "no",
            "bad 'after first use' in: {line}"
        );
        let prev = out.insert(
            name.to_owned(),
            Entry {
                kind: cells[1].trim().to_owned(),
                after_first_use: after == "yes",
            },
        );
        assert!(prev.is_none(), "{name} is catalogued twice");
    }
    assert!(out.len() > 10, "docs/metrics.md lists too few metrics");
    out
}

/// The rows of the peer and supernode. The lazyfs mount is not one of them:
/// lazyfs/tests/mount.rs checks the `shoal_lazyfs_` rows against a live mount, both ways; the
/// snapshotter has its own test below.
fn daemon_catalogue() -> BTreeMap<String, Entry> {
    catalogue()
        .into_iter()
        .filter(|(name, _)| {
            !name.starts_with("shoal_lazyfs_") && !name.starts_with("shoal_snapshotter_")
        })
        .collect()
}

#[test]
fn catalogue_matches_a_running_snapshotter() {
    let cat: BTreeMap<String, Entry> = catalogue()
        .into_iter()
        .filter(|(name, _)| name.starts_with("shoal_snapshotter_"))
        .collect();
    assert!(cat.len() >= 3, "docs/metrics.md has no snapshotter section");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin("shoal-lazyfs"));
    cmd.arg("snapshotter")
        .arg("--address")
        .arg(tmp.path().join("sock"))
        .arg("--root")
        .arg(tmp.path().join("root"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg(format!("--metrics-listen=127.0.0.1:{port}"));
    let mut snapshotter = spawn(cmd, "snapshotter", tmp.path());
    let exposed = families(&scrape(&mut snapshotter, port, "shoal-lazyfs snapshotter"));
    check_both_ways(
        &cat,
        &exposed,
        "shoal_snapshotter_",
        "shoal-lazyfs snapshotter",
    );
}

/// `# TYPE` lines of a scrape: family name → type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| n.starts_with("shoal_"))
        .map(|(n, t)| (n.to_owned(), t.trim().to_owned()))
        .collect()
}

/// Starts a daemon (quiet logs, in `log_dir`), killed when the handle drops.
fn spawn(mut cmd: Command, name: &str, log_dir: &Path) -> Daemon {
    cmd.env("RUST_LOG", "warn");
    Daemon::spawn(name, cmd, log_dir)
}

fn scrape(daemon: &mut Daemon, port: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = http_get(port, "/metrics") {
            if body.contains("shoal_") {
                return body;
            }
        }
        if let Some(status) = daemon.try_exit() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what}: no /metrics on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_both_ways(
    cat: &BTreeMap<String, Entry>,
    exposed: &BTreeMap<String, String>,
    prefix: &str,
    what: &str,
) {
    for (name, kind) in exposed {
        let entry = cat.get(name).unwrap_or_else(|| {
            panic!("{what} exposes {name} ({kind}), missing in docs/metrics.md")
        });
        assert_eq!(&entry.kind, kind, "{name}: type in docs/metrics.md");
    }
    for (name, entry) in cat.iter().filter(|(n, _)| n.starts_with(prefix)) {
        assert!(
            exposed.contains_key(name) || entry.after_first_use,
            "docs/metrics.md lists {name}, but {what} does not expose it (mark it \
             'after first use: yes' if it is a labelled vector)"
        );
    }
}

#[test]
fn catalogue_matches_running_daemons() {
    let cat = daemon_catalogue();
    for name in cat.keys() {
        assert!(
            name.starts_with("shoal_peer_") || name.starts_with("shoal_supernode_"),
            "{name}: unknown daemon prefix"
        );
    }
    let tmp = tempfile::tempdir().unwrap();

    // A peer with an embedded supernode: both families on its metrics port.
    let metrics_port = free_port();
    let mirror_port = free_port();
    let mut cmd = Command::new(bin("shoal-peer"));
    cmd.arg("run")
        .arg("--data-dir")
        .arg(tmp.path().join("peer"))
        .args(["--cache-size", "64MiB"])
        .arg(format!("--mirror-listen=127.0.0.1:{mirror_port}"))
        .arg(format!("--p2p-listen=127.0.0.1:{}", free_port()))
        .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"));
    let mut peer = spawn(cmd, "peer", tmp.path());
    let peer_families = families(&scrape(&mut peer, metrics_port, "shoal-peer"));
    assert!(
        peer_families
            .keys()
            .any(|n| n.starts_with("shoal_supernode_")),
        "the embedded supernode's metrics are on the peer's /metrics"
    );
    check_both_ways(
        &cat,
        &peer_families,
        "shoal_",
        "shoal-peer (embedded supernode)",
    );

    // One small verified download from a local origin makes the labelled vectors appear.
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let origin = serve_blob(blob);
    let out = tmp.path().join("blob");
    let o = Command::new(bin("shoal-peer"))
        .arg("get")
        .arg(format!("http://127.0.0.1:{origin}/blob"))
        .arg("-o")
        .arg(&out)
        .arg("--digest")
        .arg(&digest)
        .arg("--peer")
        .arg(format!("http://127.0.0.1:{mirror_port}"))
        .arg("-q")
        .env_remove("SHOAL_PEER")
        .output()
        .expect("run shoal-peer get");
    assert!(
        o.status.success(),
        "shoal-peer get failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
        300_000,
        "the downloaded blob"
    );
    // Every labelled metric appears after a clean download, except those only failures or
    // registry-mirror traffic (containerd) produce.
    const NEED_FAILURES_OR_MIRROR: [&str; 6] = [
        "shoal_peer_pieces_rejected_total",
        "shoal_peer_piece_fetch_failures_total",
        "shoal_supernode_piece_failures_total",
        "shoal_peer_mirror_requests_total",
        "shoal_peer_upstream_requests_total",
        "shoal_peer_upstream_failures_total",
    ];
    let expected: Vec<&String> = cat
        .iter()
        .filter(|(n, e)| e.after_first_use && !NEED_FAILURES_OR_MIRROR.contains(&n.as_str()))
        .map(|(n, _)| n)
        .collect();
    // The client has its last verified byte a moment before the download's own bookkeeping
    // (whole-blob verification, counters) ends, so wait for that briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let peer_families = loop {
        let f = families(&scrape(&mut peer, metrics_port, "shoal-peer"));
        if expected.iter().all(|n| f.contains_key(*n)) || Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    check_both_ways(
        &cat,
        &peer_families,
        "shoal_",
        "shoal-peer after a download",
    );
    for name in expected {
        assert!(
            peer_families.contains_key(name),
            "docs/metrics.md lists {name}, but it does not appear after a download"
        );
    }

    // A standalone supernode: only supernode metrics.
    let sn_port = free_port();
    let mut cmd = Command::new(bin("shoal-supernode"));
    cmd.arg(format!("--listen=127.0.0.1:{sn_port}"));
    let mut sn = spawn(cmd, "supernode", tmp.path());
    let sn_families = families(&scrape(&mut sn, sn_port, "shoal-supernode"));
    assert!(
        sn_families
            .keys()
            .all(|n| n.starts_with("shoal_supernode_")),
        "{sn_families:?}"
    );
    check_both_ways(&cat, &sn_families, "shoal_supernode_", "shoal-supernode");
}

#[test]
fn dashboard_queries_only_catalogued_metrics() {
    let cat = catalogue();
    let path = workspace_root().join("helm/shoal/dashboards/shoal.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("dashboard is valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 8, "dashboard has too few queries");
    let mut used = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| cat.contains_key(*b)))
                .unwrap_or(&name);
            assert!(
                cat.contains_key(base),
                "dashboard queries {name}, not in docs/metrics.md: {expr}"
            );
            used += 1;
        }
    }
    assert!(used >= exprs.len(), "every query names a metric");
    // The dashboard covers what the issue asks for.
    let all = exprs.join("\n");
    for want in [
        "shoal_peer_download_bytes_total",
        "shoal_peer_piece_duration_seconds_bucket",
        "shoal_peer_cache_bytes",
        "shoal_peer_pieces_rejected_total",
        "shoal_lazyfs_read_duration_seconds_bucket",
        "shoal_lazyfs_fetch_bytes_total",
    ] {
        assert!(all.contains(want), "dashboard does not show {want}");
    }
}

/// Every `shoal_[a-z_]+` word of a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("shoal_") {
        let start = i + pos;
        let prev_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        if prev_ok {
            out.push(expr[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// A minimal origin on 127.0.0.1 serving `blob` at any path: HEAD, GET and single byte ranges.
/// Returns the port; the server thread lives until the test process ends.
fn serve_blob(blob: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(r) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                    let start: usize = a.parse().unwrap_or(0);
                    let end: usize = b.parse().unwrap_or(blob.len() - 1).min(blob.len() - 1);
                    range = Some((start, end));
                }
            }
            let mut stream = reader.into_inner();
            let head = request.starts_with("HEAD");
            let (status, body, extra) = match range {
                Some((a, b)) if a <= b => (
                    "206 Partial Content",
                    &blob[a..=b],
                    format!("Content-Range: bytes {a}-{b}/{}\r\n", blob.len()),
                ),
                _ => ("200 OK", &blob[..], String::new()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            );
            if !head {
                let _ = stream.write_all(body);
            }
        }
    });
    port
}

/// The metric names registered in the sources (`"shoal_peer_…"` literals in
/// peer/src/metrics.rs, `name("…")` with the `shoal_supernode_` prefix in
/// supernode/src/metrics.rs) are exactly the catalogue: this also covers labelled metrics a
/// clean run never shows.
#[test]
fn catalogue_matches_metric_sources() {
    let root = workspace_root();
    let mut names = std::collections::BTreeSet::new();
    let peer = std::fs::read_to_string(root.join("peer/src/metrics.rs")).unwrap();
    for part in peer.split('"').skip(1).step_by(2) {
        if part.starts_with("shoal_") && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            names.insert(part.to_owned());
        }
    }
    let sn = std::fs::read_to_string(root.join("supernode/src/metrics.rs")).unwrap();
    for part in sn.split("name(\"").skip(1) {
        let n = part.split('"').next().unwrap();
        names.insert(format!("shoal_supernode_{n}"));
    }
    let cat: std::collections::BTreeSet<String> = daemon_catalogue().into_keys().collect();
    assert_eq!(
        names, cat,
        "metric names in peer/src/metrics.rs + supernode/src/metrics.rs (left) vs docs/metrics.md (right)"
    );
}
