//! A Shoal cluster for the mount tests: a real `shoal-supernode` and peers registered with it
//! (each with its own ports, data dir and log), and reading the peers' metrics.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use shoal_testkit::metric_value;
use shoal_testkit::workspace_bin;

use super::{free_port, PeerProc, Proc, READY};

pub struct SupernodeProc {
    pub proc_: Proc,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl SupernodeProc {
    /// Starts a supernode on a free port (log: `dir/supernode.log`) and waits for `/readyz`.
    pub fn start(dir: &Path) -> SupernodeProc {
        let port = free_port();
        let mut cmd = Command::new(workspace_bin("shoal-supernode"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        let mut proc_ = Proc::spawn_logged("shoal-supernode", cmd, &dir.join("supernode.log"));
        let url = format!("http://127.0.0.1:{port}");
        proc_.wait_http(&format!("{url}/readyz"), &[200], READY);
        SupernodeProc { proc_, url }
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
        Self::launch(
            dir,
            name,
            registry,
            "1GiB",
            &["--supernode", supernode, "--advertise-addr", "127.0.0.1"],
        )
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
        metric_value(&self.scrape_with(&scrape_client()), name, labels)
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
