//! A Shoal cluster for the mount tests: a real `shoal-supernode` and peers registered with it
//! (each with its own ports, data dir and log), and reading the peers' metrics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, peer_bin, spawn_logged, wait_http_ok, PeerProc, Proc};

/// `shoal-supernode`, next to `shoal-peer` in the target directory.
pub fn supernode_bin() -> PathBuf {
    let p = peer_bin().with_file_name("shoal-supernode");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

pub struct SupernodeProc {
    pub proc_: Proc,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl SupernodeProc {
    /// Starts a supernode on a free port (log: `dir/supernode.log`) and waits for `/readyz`.
    pub fn start(dir: &Path) -> SupernodeProc {
        let port = free_port();
        let mut cmd = Command::new(supernode_bin());
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        let log = dir.join("supernode.log");
        let mut child = spawn_logged(cmd, &log);
        let url = format!("http://127.0.0.1:{port}");
        wait_http_ok(&format!("{url}/readyz"), &mut child, "shoal-supernode");
        SupernodeProc {
            proc_: Proc { child, log },
            url,
        }
    }
}

impl PeerProc {
    /// A peer registered with `supernode`, announcing its piece server on 127.0.0.1, reaching
    /// `registry` over plain http; data in `dir/NAME-data`, log in `dir/NAME.log`.
    pub fn start_with_supernode(
        dir: &Path,
        name: &str,
        registry: &str,
        supernode: &str,
    ) -> PeerProc {
        let (m, p2p, met) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(peer_bin());
        cmd.args(["run", "--supernode", supernode, "--data-dir"])
            .arg(dir.join(format!("{name}-data")))
            .args(["--cache-size", "1GiB"])
            .args(["--mirror-listen", &format!("127.0.0.1:{m}")])
            .args(["--p2p-listen", &format!("127.0.0.1:{p2p}")])
            .args(["--advertise-addr", &format!("127.0.0.1:{p2p}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{met}")])
            .args(["--insecure-registry", registry]);
        let log = dir.join(format!("{name}.log"));
        let mut child = spawn_logged(cmd, &log);
        let metrics = format!("http://127.0.0.1:{met}");
        wait_http_ok(&format!("{metrics}/readyz"), &mut child, name);
        PeerProc {
            proc_: Proc { child, log },
            mirror: format!("http://127.0.0.1:{m}"),
            metrics,
        }
    }

    /// The peer's `/metrics` text, fetched with `client`.
    pub fn scrape_with(&self, client: &reqwest::blocking::Client) -> String {
        let url = format!("{}/metrics", self.metrics);
        client
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Sum of the samples of metric `name` whose labels include `labels` (0 when none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_labeled(&self.scrape_with(&scrape_client()), name, labels)
    }
}

/// A blocking HTTP client for scraping (no proxy from the environment, short timeout).
pub fn scrape_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// Sum of the samples of `name` (Prometheus text format) whose labels include all of
/// `labels`; 0 when there are none. Label values must not contain `,` or `"`.
pub fn metric_labeled(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in scrape.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => match line.split_once(' ') {
                Some((s, v)) => (s, v),
                None => continue,
            },
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if !labels.iter().all(|want| have.contains(want)) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum + 0.0 // an empty sum is -0.0
}
