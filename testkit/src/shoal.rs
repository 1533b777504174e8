//! Shoal's own daemons, `shoal-supernode` and `shoal-peer run`, on the kill-on-drop
//! [`Daemon`]: the handles the peer's end-to-end tests and `shoal-bench faults` share. Both
//! take the binaries from a directory: by default [`default_bin_dir`] (next to the running
//! test or benchmark executable), or one given explicitly (`shoal-bench --bin-dir`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::processes::{bin_in, default_bin_dir};
use crate::{free_port, http, metric_value, scratch, Daemon};

/// How long a daemon may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Supernode

pub struct Supernode {
    pub port: u16,
    /// Where its binary came from; its peers ([`PeerOpts::with_supernode`]) use the same.
    pub bin_dir: PathBuf,
    daemon: Daemon,
    _dir: TempDir,
}

impl Supernode {
    pub async fn start() -> Supernode {
        Self::start_on(free_port()).await
    }

    /// Starts a supernode with extra command-line arguments.
    pub async fn start_with(args: &[&str]) -> Supernode {
        Self::spawn(&default_bin_dir(), free_port(), args).await
    }

    /// Starts a supernode on a given port (to replace one that was stopped).
    pub async fn start_on(port: u16) -> Supernode {
        Self::spawn(&default_bin_dir(), port, &[]).await
    }

    /// Starts `shoal-supernode` from `bin_dir` on a free port.
    pub async fn start_from(bin_dir: &Path) -> Supernode {
        Self::spawn(bin_dir, free_port(), &[]).await
    }

    async fn spawn(bin_dir: &Path, port: u16, args: &[&str]) -> Supernode {
        let dir = scratch::tempdir();
        let mut cmd = Command::new(bin_in(bin_dir, "shoal-supernode"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        cmd.args(args);
        let mut daemon = Daemon::spawn("supernode", cmd, dir.path());
        let url = format!("http://127.0.0.1:{port}/readyz");
        daemon.wait_http_async(&url, &[200], READY_TIMEOUT).await;
        Supernode {
            port,
            bin_dir: bin_dir.to_owned(),
            daemon,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    /// Everything the supernode wrote to stderr (its log) so far.
    pub fn stderr_text(&self) -> String {
        self.daemon.stderr_text()
    }

    /// Sum of the series of metric `name` whose labels include `labels` (0 when none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = http()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .expect("GET /metrics of the supernode")
            .text()
            .await
            .expect("supernode metrics");
        metric_value(&text, name, labels)
    }

    /// `GET /api/v1/tasks`.
    pub async fn tasks(&self) -> serde_json::Value {
        http()
            .get(format!("{}/api/v1/tasks", self.url()))
            .send()
            .await
            .expect("GET /api/v1/tasks")
            .json()
            .await
            .expect("tasks JSON")
    }

    /// Whether the supernode lists `peer_id` on task `task_id`.
    pub async fn task_has_peer(&self, task_id: &str, peer_id: &str) -> bool {
        let tasks = self.tasks().await;
        tasks.as_array().into_iter().flatten().any(|t| {
            t.get("task_id").and_then(|v| v.as_str()) == Some(task_id)
                && t.get("peers").is_some_and(|p| json_mentions(p, peer_id))
        })
    }
}

/// Whether `needle` appears as a string anywhere inside `v`.
fn json_mentions(v: &serde_json::Value, needle: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(a) => a.iter().any(|x| json_mentions(x, needle)),
        serde_json::Value::Object(o) => o.values().any(|x| json_mentions(x, needle)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Peer

#[derive(Clone, Debug)]
pub struct PeerOpts {
    /// `None`: embedded supernode.
    pub supernode: Option<String>,
    pub cache_size: Option<String>,
    pub peer_id: Option<String>,
    /// The piece server's port (default: a free one).
    pub p2p_port: Option<u16>,
    /// The port other peers are told to fetch pieces from (default: the piece server's); a
    /// proxy in front of the piece server listens there.
    pub advertise_port: Option<u16>,
    /// Any further `shoal-peer run` arguments.
    pub extra: Vec<String>,
    /// The data directory (default: `data` in the peer's temp dir), e.g. a small tmpfs.
    pub data_dir: Option<PathBuf>,
    /// Where `shoal-peer` is (also for the `shoal-peer get` clients of this peer).
    pub bin_dir: PathBuf,
}

impl PeerOpts {
    /// A peer of the given supernode with a 1 GiB cache.
    pub fn with_supernode(sn: &Supernode) -> PeerOpts {
        PeerOpts {
            supernode: Some(sn.url()),
            cache_size: Some("1GiB".into()),
            peer_id: None,
            p2p_port: None,
            advertise_port: None,
            extra: vec![],
            data_dir: None,
            bin_dir: sn.bin_dir.clone(),
        }
    }

    /// A single-node peer (embedded supernode) with only data dir and ports.
    pub fn embedded() -> PeerOpts {
        PeerOpts {
            supernode: None,
            cache_size: None,
            peer_id: None,
            p2p_port: None,
            advertise_port: None,
            extra: vec![],
            data_dir: None,
            bin_dir: default_bin_dir(),
        }
    }

    /// Takes `shoal-peer` from `dir`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = dir.into();
        self
    }

    pub fn cache_size(mut self, size: impl Into<String>) -> Self {
        self.cache_size = Some(size.into());
        self
    }

    pub fn peer_id(mut self, id: impl Into<String>) -> Self {
        self.peer_id = Some(id.into());
        self
    }

    pub fn p2p_port(mut self, port: u16) -> Self {
        self.p2p_port = Some(port);
        self
    }

    pub fn advertise_port(mut self, port: u16) -> Self {
        self.advertise_port = Some(port);
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }
}

/// A `shoal-peer run` process with its own data dir and ports (kept across restarts).
pub struct Peer {
    pub name: String,
    pub mirror_port: u16,
    pub p2p_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    /// The `shoal-peer` binary it runs.
    pub bin: PathBuf,
    args: Vec<String>,
    daemon: Daemon,
    dir: TempDir,
}

impl Peer {
    /// Starts the peer and waits for its `/readyz`.
    pub async fn start(name: &str, opts: PeerOpts) -> Peer {
        let dir = scratch::tempdir();
        let bin = bin_in(&opts.bin_dir, "shoal-peer");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let p2p_port = opts.p2p_port.unwrap_or_else(free_port);
        let (mirror_port, metrics_port) = (free_port(), free_port());
        let mut args: Vec<String> = vec!["run".into()];
        if let Some(sn) = &opts.supernode {
            let advertise = match opts.advertise_port {
                Some(port) => format!("127.0.0.1:{port}"),
                None => "127.0.0.1".into(),
            };
            args.extend(["--supernode".into(), sn.clone()]);
            args.extend(["--advertise-addr".into(), advertise]);
        }
        args.extend(["--data-dir".into(), data_dir.display().to_string()]);
        if let Some(size) = &opts.cache_size {
            args.extend(["--cache-size".into(), size.clone()]);
        }
        args.extend([
            "--mirror-listen".into(),
            format!("127.0.0.1:{mirror_port}"),
            "--p2p-listen".into(),
            format!("127.0.0.1:{p2p_port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ]);
        if let Some(id) = &opts.peer_id {
            args.extend(["--peer-id".into(), id.clone()]);
        }
        args.extend(opts.extra.iter().cloned());
        let daemon = Self::spawn(&bin, name, &args, dir.path());
        let mut peer = Peer {
            name: name.to_string(),
            mirror_port,
            p2p_port,
            metrics_port,
            data_dir,
            bin,
            args,
            daemon,
            dir,
        };
        peer.wait_ready().await;
        peer
    }

    fn spawn(bin: &Path, name: &str, args: &[String], log_dir: &Path) -> Daemon {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Daemon::spawn(name, cmd, log_dir)
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.metrics_url());
        self.daemon
            .wait_http_async(&url, &[200], READY_TIMEOUT)
            .await;
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill9(&mut self) {
        self.daemon.kill();
    }

    /// Starts the peer again with the same arguments, data dir and ports, and waits until ready.
    pub async fn restart(&mut self) {
        self.daemon.kill();
        self.daemon = Self::spawn(&self.bin, &self.name, &self.args, self.dir.path());
        self.wait_ready().await;
    }

    pub fn assert_running(&mut self) {
        self.daemon.assert_running();
    }

    /// The process id, while it runs (for `/proc/PID/...`).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub async fn is_ready(&self) -> bool {
        let url = format!("{}/readyz", self.metrics_url());
        tokio::task::spawn_blocking(move || crate::http_status(&url))
            .await
            .ok()
            .flatten()
            == Some(200)
    }

    pub fn mirror_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.mirror_port)
    }

    pub fn p2p_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.p2p_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    pub async fn metrics(&self) -> String {
        let resp = http()
            .get(format!("{}/metrics", self.metrics_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}", self.name));
        assert_eq!(resp.status().as_u16(), 200, "/metrics of {}", self.name);
        resp.text().await.unwrap()
    }

    /// Sum of the series of metric `name` whose labels include `labels` (0 when none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Everything the peer wrote to stderr (its log) so far.
    pub fn stderr_text(&self) -> String {
        self.daemon.stderr_text()
    }

    /// `GET /api/v1/tasks/{task}/data` with `Range: bytes=START-END` (inclusive) from this
    /// peer's piece server, as another peer would: (status, body).
    pub async fn fetch_range(&self, task: &str, start: u64, end: u64) -> (u16, Vec<u8>) {
        fetch_piece_range(&self.p2p_url(), task, start, end).await
    }
}

/// `GET /api/v1/tasks/{task}/data` with `Range: bytes=START-END` (inclusive) from the piece
/// server at `base` (a peer's, or a proxy in front of it), as another peer would: (status,
/// body).
pub async fn fetch_piece_range(base: &str, task: &str, start: u64, end: u64) -> (u16, Vec<u8>) {
    let resp = http()
        .get(format!("{base}/api/v1/tasks/{task}/data"))
        .header("range", format!("bytes={start}-{end}"))
        .header(shoal_common::PEER_ID_HEADER, "test-probe")
        .send()
        .await
        .unwrap_or_else(|e| panic!("piece server at {base}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap_or_default().to_vec())
}
