//! Real processes for the mount tests: `docker-registry`, `shoal-peer`, a byte-counting TCP
//! proxy, and `shoal-lazyfs mount` itself. Every handle kills its process (and the mount
//! handle detaches its mountpoint) on drop, also when a test panics. [`swarm`]: a supernode
//! and peers registered with it; [`http_log`]: a proxy logging each HTTP request and response.
#![allow(dead_code)]

pub mod fixture;
pub mod http_log;
pub mod swarm;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Run `f` on a thread; panic if it does not finish within `limit` (a hang fails the test).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

fn http_status(url: &str) -> Option<u16> {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?
        .get(url)
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

pub fn http_get(url: &str) -> String {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .unwrap()
}

fn wait_http_ok(url: &str, child: &mut Child, what: &str) {
    wait_http(url, child, what, &[200]);
}

/// Polls `url` until it answers with one of `statuses`.
fn wait_http(url: &str, child: &mut Child, what: &str, statuses: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_status(url).is_some_and(|s| statuses.contains(&s)) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited with {st} before answering {url}");
        }
        assert!(Instant::now() < deadline, "{what} not ready on {url}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    for (k, _) in std::env::vars() {
        if k.starts_with("SHOAL_") || k.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(k);
        }
    }
    let out = fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct RegistryProc {
    pub proc_: Proc,
    pub addr: String,
    /// The storage root (`docker/registry/v2/blobs/sha256/XX/HEX/data`).
    pub root: PathBuf,
}

impl RegistryProc {
    pub fn start(dir: &Path) -> RegistryProc {
        Self::start_with(dir, "")
    }

    /// Requires `user`/`password` (basic auth, htpasswd) for everything.
    pub fn start_with_basic_auth(dir: &Path, user: &str, password: &str) -> RegistryProc {
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(&htpasswd)
            .args([user, password])
            .output()
            .expect("htpasswd (Debian package apache2-utils)");
        assert!(out.status.success(), "htpasswd: {out:?}");
        Self::start_with(
            dir,
            &format!(
                "auth: {{htpasswd: {{realm: shoal, path: {}}}}}\n",
                htpasswd.display()
            ),
        )
    }

    /// `extra`: more top-level lines of the registry's YAML config.
    fn start_with(dir: &Path, extra: &str) -> RegistryProc {
        let addr = format!("127.0.0.1:{}", free_port());
        let root = dir.join("registry-data");
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{accesslog: {{disabled: true}}, level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}}}\n{extra}",
                root.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        let mut child = spawn_logged(cmd, &dir.join("registry.log"));
        // 401: up, and asking for credentials (an auth config).
        wait_http(
            &format!("http://{addr}/v2/"),
            &mut child,
            "docker-registry",
            &[200, 401],
        );
        RegistryProc {
            proc_: Proc {
                child,
                log: dir.join("registry.log"),
            },
            addr,
            root,
        }
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub fn peer_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_shoal-lazyfs")).with_file_name("shoal-peer");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

pub struct PeerProc {
    pub proc_: Proc,
    pub mirror: String,
    pub metrics: String,
}

impl PeerProc {
    pub fn start(dir: &Path, registry: &str) -> PeerProc {
        let (m, p2p, met) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(peer_bin());
        cmd.args(["run", "--data-dir"])
            .arg(dir.join("peer-data"))
            .args(["--cache-size", "64MiB"])
            .args(["--mirror-listen", &format!("127.0.0.1:{m}")])
            .args(["--p2p-listen", &format!("127.0.0.1:{p2p}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{met}")])
            .args(["--insecure-registry", registry]);
        let log = dir.join("peer.log");
        let mut child = spawn_logged(cmd, &log);
        let metrics = format!("http://127.0.0.1:{met}");
        wait_http_ok(&format!("{metrics}/readyz"), &mut child, "shoal-peer");
        PeerProc {
            proc_: Proc { child, log },
            mirror: format!("http://127.0.0.1:{m}"),
            metrics,
        }
    }
}

/// A TCP proxy counting the bytes sent from upstream to clients. It can also take the
/// upstream "down" at an exact moment ([`CountingProxy::arm_gate`]).
pub struct CountingProxy {
    pub addr: String,
    pub down_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// While set, new connections are accepted and then left unanswered.
    pub stall: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

/// Once armed with a string, the first request naming it trips the gate; from then on every
/// connection, open or new, is cut before anything more is forwarded.
#[derive(Default)]
struct Gate {
    needle: Mutex<Option<Vec<u8>>>,
    down: AtomicBool,
}

impl CountingProxy {
    pub fn start(upstream: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down_bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stall = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let (count, stop2, stall2, gate2, upstream) = (
            down_bytes.clone(),
            stop.clone(),
            stall.clone(),
            gate.clone(),
            upstream.to_string(),
        );
        std::thread::spawn(move || {
            let mut stalled = Vec::new();
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                if gate2.down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if stall2.load(Ordering::Relaxed) {
                    stalled.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (st, g) = (stall2.clone(), gate2.clone());
                std::thread::spawn(move || pipe(c2, s2, None, st, g, true));
                let (count, st, g) = (count.clone(), stall2.clone(), gate2.clone());
                std::thread::spawn(move || pipe(server, client, Some(count), st, g, false));
            }
        });
        CountingProxy {
            addr,
            down_bytes,
            stop,
            stall,
            gate,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.down_bytes.load(Ordering::SeqCst)
    }

    /// From now on, the first request naming `needle` takes the upstream down.
    pub fn arm_gate(&self, needle: &str) {
        *self.gate.needle.lock().unwrap() = Some(needle.as_bytes().to_vec());
    }

    /// Whether a request tripped the gate.
    pub fn is_down(&self) -> bool {
        self.gate.down.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copy `from` → `to`; while `stall` is set, hold whatever arrives (open connections
/// stall too, not only new ones). `watch` (client → server only): bytes naming the armed
/// gate's needle trip it; once it is down the connection is cut.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<Arc<AtomicU64>>,
    stall: Arc<AtomicBool>,
    gate: Arc<Gate>,
    watch: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what came before, so a needle split between two reads is still seen.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while stall.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let needle = if watch {
            gate.needle.lock().unwrap().clone()
        } else {
            None
        };
        if let Some(needle) = needle {
            carry.extend_from_slice(&buf[..n]);
            if carry.windows(needle.len()).any(|w| w == needle.as_slice()) {
                gate.down.store(true, Ordering::SeqCst);
            }
            let keep = carry.len().saturating_sub(needle.len());
            carry.drain(..keep);
        }
        if gate.down.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

pub fn is_mounted(mp: &Path) -> bool {
    let want = mp.to_string_lossy().into_owned();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// `umount -l`.
pub fn detach(mp: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mp)
        .stderr(Stdio::null())
        .status();
}

/// A running `shoal-lazyfs mount`.
pub struct MountProc {
    pub proc_: Proc,
    pub mp: PathBuf,
    pub metrics: String,
}

impl MountProc {
    /// Mount `image` at `mp` with the common flags plus `extra`; waits for the mount.
    pub fn start(dir: &Path, name: &str, image: &str, mp: &Path, extra: &[&str]) -> MountProc {
        Self::start_env(dir, name, image, mp, extra, &[])
    }

    /// [`MountProc::start`] with extra environment variables for the mount process.
    pub fn start_env(
        dir: &Path,
        name: &str,
        image: &str,
        mp: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> MountProc {
        fs::create_dir_all(mp).unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-lazyfs"));
        cmd.arg("mount")
            .arg(image)
            .arg(mp)
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().copied())
            .env("SHOAL_LOG", "shoal_lazyfs=info");
        let log = dir.join(format!("{name}.log"));
        let child = spawn_logged(cmd, &log);
        let mut m = MountProc {
            proc_: Proc { child, log },
            mp: mp.to_path_buf(),
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(mp) {
            if let Ok(Some(st)) = m.proc_.child.try_wait() {
                panic!("mount exited with {st}:\n{}", m.proc_.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted:\n{}",
                m.proc_.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn scrape(&self) -> String {
        http_get(&self.metrics)
    }

    /// Sum of a metric's samples whose line starts with `prefix` (name plus labels).
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_sum(&self.scrape(), prefix)
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let pid = self.proc_.child.id() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.proc_.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "mount did not exit after SIGTERM:\n{}",
                self.proc_.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if is_mounted(&self.mp) {
            detach(&self.mp);
        }
        self.proc_.kill();
        if std::thread::panicking() {
            eprintln!("--- mount log ---\n{}", self.proc_.log_text());
        }
    }
}

pub fn metric_sum(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// An overlay mount removed on drop.
pub struct Overlay(pub PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        detach(&self.0);
    }
}
