//! Child processes: a kill-on-drop wrapper with log files, and the supernode and peer
//! daemons built on it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{
    free_port, http, metric_value, peer_bin, status_of, supernode_bin, PROXY_VARS, READY_TIMEOUT,
};

// ---------------------------------------------------------------------------------------------
// Child processes

/// Removes the variables that would change a child's behaviour behind the test's back: HTTP
/// proxies and Shoal's own `SHOAL_*` settings.
pub fn hermetic_env(cmd: &mut Command) {
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(key);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop; its stdout/stderr go to files whose
/// tails are printed when the test panics.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with output to `log_dir/NAME.{stdout,stderr}` (appended, so a restarted
    /// process keeps one log).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Daemon {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        hermetic_env(&mut cmd);
        cmd.env("NO_COLOR", "1");
        // `SHOAL_TEST_LOG=debug cargo test ...` for verbose daemon logs.
        if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
            cmd.env("SHOAL_LOG", &filter).env("RUST_LOG", filter);
        }
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Some(status)` when the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics (with the logs) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            // The log tail is printed when the handle drops.
            panic!("{} exited unexpectedly with {status}", self.name);
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "----- {} stdout (last 40 lines) -----\n{}\n----- {} stderr (last 40 lines) -----\n{}\n",
            self.name,
            tail(&self.stdout),
            self.name,
            tail(&self.stderr)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Supernode

pub struct Supernode {
    pub port: u16,
    daemon: Daemon,
    _dir: TempDir,
}

impl Supernode {
    pub async fn start() -> Supernode {
        Self::start_on(free_port()).await
    }

    /// Starts a supernode with extra command-line arguments.
    pub async fn start_with(args: &[&str]) -> Supernode {
        Self::spawn(free_port(), args).await
    }

    /// Starts a supernode on a given port (to replace one that was stopped).
    pub async fn start_on(port: u16) -> Supernode {
        Self::spawn(port, &[]).await
    }

    async fn spawn(port: u16, args: &[&str]) -> Supernode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(supernode_bin());
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        cmd.args(args);
        let mut daemon = Daemon::spawn("supernode", cmd, dir.path());
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + READY_TIMEOUT;
        while status_of(&url).await != Some(200) {
            daemon.assert_running();
            assert!(Instant::now() < deadline, "supernode not ready on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Supernode {
            port,
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
    /// Any further `shoal-peer run` arguments.
    pub extra: Vec<String>,
}

impl PeerOpts {
    /// A peer of the given supernode with a 1 GiB cache.
    pub fn with_supernode(sn: &Supernode) -> PeerOpts {
        PeerOpts {
            supernode: Some(sn.url()),
            cache_size: Some("1GiB".into()),
            peer_id: None,
            extra: vec![],
        }
    }

    /// A single-node peer (embedded supernode) with only data dir and ports.
    pub fn embedded() -> PeerOpts {
        PeerOpts {
            supernode: None,
            cache_size: None,
            peer_id: None,
            extra: vec![],
        }
    }

    pub fn cache_size(mut self, size: impl Into<String>) -> Self {
        self.cache_size = Some(size.into());
        self
    }

    pub fn peer_id(mut self, id: impl Into<String>) -> Self {
        self.peer_id = Some(id.into());
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
    args: Vec<String>,
    daemon: Daemon,
    dir: TempDir,
}

impl Peer {
    /// Starts the peer and waits for its `/readyz`.
    pub async fn start(name: &str, opts: PeerOpts) -> Peer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let (mirror_port, p2p_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut args: Vec<String> = vec!["run".into()];
        if let Some(sn) = &opts.supernode {
            args.extend(["--supernode".into(), sn.clone()]);
            args.extend(["--advertise-addr".into(), "127.0.0.1".into()]);
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
        let daemon = Self::spawn(name, &args, dir.path());
        let mut peer = Peer {
            name: name.to_string(),
            mirror_port,
            p2p_port,
            metrics_port,
            data_dir,
            args,
            daemon,
            dir,
        };
        peer.wait_ready().await;
        peer
    }

    fn spawn(name: &str, args: &[String], log_dir: &Path) -> Daemon {
        let mut cmd = Command::new(peer_bin());
        cmd.args(args);
        Daemon::spawn(name, cmd, log_dir)
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.metrics_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        while status_of(&url).await != Some(200) {
            self.daemon.assert_running();
            assert!(
                Instant::now() < deadline,
                "peer {} not ready on {url} within {READY_TIMEOUT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill9(&mut self) {
        self.daemon.kill();
    }

    /// Starts the peer again with the same arguments, data dir and ports, and waits until ready.
    pub async fn restart(&mut self) {
        self.daemon.kill();
        self.daemon = Self::spawn(&self.name, &self.args, self.dir.path());
        self.wait_ready().await;
    }

    pub fn assert_running(&mut self) {
        self.daemon.assert_running();
    }

    pub async fn is_ready(&self) -> bool {
        status_of(&format!("{}/readyz", self.metrics_url())).await == Some(200)
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
        let resp = http()
            .get(format!("{}/api/v1/tasks/{task}/data", self.p2p_url()))
            .header("range", format!("bytes={start}-{end}"))
            .header(shoal_common::PEER_ID_HEADER, "test-probe")
            .send()
            .await
            .unwrap_or_else(|e| panic!("piece server of {}: {e}", self.name));
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap_or_default().to_vec())
    }
}
