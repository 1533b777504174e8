//! Shared helpers for the end-to-end tests: binaries, ports, a real registry behind a
//! byte-counting proxy, supernode and peer processes, blobs, `shoal-peer get`, metrics.
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
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_common::{Digest, Sha256Hasher};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
// Registry and counting proxy

/// Debian's `docker-registry` on a free port, storing in a temp dir.
pub struct Registry {
    pub port: u16,
    daemon: Daemon,
    _dir: TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: shoal-e2e-tests\n",
                dir.path().join("root").display()
            ),
        )
        .unwrap();
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "/usr/bin/docker-registry is missing: apt-get install docker-registry (.ci/run does)"
        );
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("registry", cmd, dir.path());
        let url = format!("http://127.0.0.1:{port}/v2/");
        let deadline = Instant::now() + READY_TIMEOUT;
        while status_of(&url).await != Some(200) {
            daemon.assert_running();
            assert!(Instant::now() < deadline, "registry not ready on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Registry {
            port,
            daemon,
            _dir: dir,
        }
    }

    /// Uploads `data` as a blob of `repo` (monolithic push) and returns its digest.
    pub async fn push(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let client = http();
        let base = format!("http://127.0.0.1:{}", self.port);
        let resp = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("start upload");
        assert_eq!(resp.status().as_u16(), 202, "start upload: {resp:?}");
        let location = resp
            .headers()
            .get("location")
            .expect("upload Location")
            .to_str()
            .unwrap()
            .to_string();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = client
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(resp.status().as_u16(), 201, "finish upload: {resp:?}");
        digest
    }

    pub fn stop(&mut self) {
        self.daemon.kill();
    }
}

/// A TCP proxy that counts the bytes flowing from its target to clients: the origin's egress.
pub struct CountingProxy {
    pub port: u16,
    egress: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let egress = Arc::new(AtomicU64::new(0));
        let counter = egress.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(pipe(client, target_port, counter.clone()));
            }
        });
        CountingProxy {
            port,
            egress,
            accept,
        }
    }

    /// Bytes sent by the target to clients so far.
    pub fn egress(&self) -> u64 {
        self.egress.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(client: TcpStream, target_port: u16, counter: Arc<AtomicU64>) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return; // dropping `client` closes it: the client sees the origin as down
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let to_upstream = async move {
        let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
        let _ = up_w.shutdown().await;
    };
    let to_client = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = client_w.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

/// A registry with a counting proxy in front: peers are given proxy URLs, blobs are pushed
/// straight to the registry (not counted).
pub struct Origin {
    pub registry: Registry,
    pub proxy: CountingProxy,
}

impl Origin {
    pub async fn start() -> Origin {
        let registry = Registry::start().await;
        let proxy = CountingProxy::start(registry.port).await;
        Origin { registry, proxy }
    }

    /// Pushes `data` to `repo` and returns (digest, blob URL through the proxy).
    pub async fn push(&self, repo: &str, data: &[u8]) -> (Digest, String) {
        let digest = self.registry.push(repo, data).await;
        (digest, self.blob_url(repo, &digest))
    }

    pub fn blob_url(&self, repo: &str, digest: &Digest) -> String {
        format!(
            "http://127.0.0.1:{}/v2/{repo}/blobs/{digest}",
            self.proxy.port
        )
    }

    pub fn egress(&self) -> u64 {
        self.proxy.egress()
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

    /// Starts a supernode on a given port (to replace one that was stopped).
    pub async fn start_on(port: u16) -> Supernode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(supernode_bin());
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
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

// ---------------------------------------------------------------------------------------------
// `shoal-peer get`

#[derive(Debug)]
pub struct GetOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl GetOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command's output unless it succeeded.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what}: shoal-peer get failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Panics unless it failed with a message on stderr.
    pub fn assert_failure(&self, what: &str) {
        assert!(
            !self.success(),
            "{what}: shoal-peer get succeeded but should have failed\nstderr:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "{what}: shoal-peer get failed without a message on stderr"
        );
    }
}

/// The `shoal-peer get URL -o OUT [--digest D] --peer MIRROR` command, killed if dropped.
pub fn get_command(
    mirror_url: &str,
    url: &str,
    digest: Option<&str>,
    out: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(peer_bin());
    cmd.arg("get").arg(url).arg("-o").arg(out);
    if let Some(d) = digest {
        cmd.arg("--digest").arg(d);
    }
    cmd.arg("--peer").arg(mirror_url);
    hermetic_env(cmd.as_std_mut());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `shoal-peer get` through `peer` in the background (its output is drained while it
/// runs, so several can run at once). The process is killed if the task is dropped.
pub fn spawn_get(
    peer: &Peer,
    url: &str,
    digest: Option<&Digest>,
    out: &Path,
) -> tokio::task::JoinHandle<GetOutput> {
    let (mirror, url, digest, out) = (
        peer.mirror_url(),
        url.to_string(),
        digest.map(|d| d.to_string()),
        out.to_path_buf(),
    );
    tokio::spawn(async move { get_raw(&mirror, &url, digest.as_deref(), &out).await })
}

/// Runs `shoal-peer get` through `peer` (at most 5 minutes).
pub async fn get(peer: &Peer, url: &str, digest: Option<&Digest>, out: &Path) -> GetOutput {
    let digest = digest.map(|d| d.to_string());
    get_raw(&peer.mirror_url(), url, digest.as_deref(), out).await
}

/// Runs `shoal-peer get` with a raw digest string and peer URL (at most 5 minutes).
pub async fn get_raw(mirror_url: &str, url: &str, digest: Option<&str>, out: &Path) -> GetOutput {
    let child = get_command(mirror_url, url, digest, out)
        .spawn()
        .expect("spawn shoal-peer get");
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shoal-peer get {url} did not finish within 5 minutes"))
        .expect("wait for shoal-peer get");
    GetOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Sum of the samples of `name` (Prometheus text format) whose labels include all of `labels`;
/// 0 when there are none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series_name, series_labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..i],
                    parse_labels(&line[i + 1..close]),
                    &line[close + 1..],
                )
            }
            Some(i) => (&line[..i], vec![], &line[i..]),
            None => continue,
        };
        if series_name != name {
            continue;
        }
        if !labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &body[end..];
    }
    out
}
