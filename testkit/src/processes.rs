//! Child processes of a test: a wrapper that kills and reaps on drop (also when the test
//! panics, after printing the log tail), readiness waits, and the workspace's binaries.
//!
//! Readiness is probed with a raw HTTP/1.0 request over a std socket, not an HTTP client:
//! it works the same from a plain test, a thread and an async test, and pulls in no runtime.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Variables that would route a child's HTTP through a proxy.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Lines of each log printed when a test panics.
const TAIL_LINES: usize = 40;

/// Keeps the test's own environment from changing a child's behaviour behind its back: HTTP
/// proxies and Shoal's `SHOAL_*` settings are not inherited. Variables set on `cmd` itself
/// stay.
pub fn hermetic_env(cmd: &mut Command) {
    let set: Vec<std::ffi::OsString> = cmd
        .get_envs()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_os_string())
        .collect();
    let inherited = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("SHOAL_"))
        .chain(PROXY_VARS.iter().map(Into::into));
    for key in inherited {
        if !set.contains(&key) {
            cmd.env_remove(key);
        }
    }
}

/// Where the child's output goes; always appended, so a restarted process keeps one log.
enum Logs {
    /// `NAME.stdout` and `NAME.stderr`.
    Split { stdout: PathBuf, stderr: PathBuf },
    /// One file for both.
    Combined(PathBuf),
}

/// A child process killed (SIGKILL) and reaped on drop; its output goes to files whose tails
/// are printed when the test panics.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    logs: Logs,
}

impl Daemon {
    /// Starts `cmd` (with [`hermetic_env`]) with output to `log_dir/NAME.{stdout,stderr}`.
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> Daemon {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let (out, err) = (open(&stdout), open(&stderr));
        Self::start(name, cmd, out, err, Logs::Split { stdout, stderr })
    }

    /// Like [`Daemon::spawn`], with stdout and stderr together in the file `log` (appended).
    pub fn spawn_logged(name: &str, cmd: Command, log: &Path) -> Daemon {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", log.display()));
        Self::start(name, cmd, out, err, Logs::Combined(log.to_path_buf()))
    }

    fn start(name: &str, mut cmd: Command, out: File, err: File, logs: Logs) -> Daemon {
        hermetic_env(&mut cmd);
        cmd.env("NO_COLOR", "1");
        // `SHOAL_TEST_LOG=debug cargo test ...` for verbose daemon logs.
        if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
            cmd.env("SHOAL_LOG", &filter).env("RUST_LOG", filter);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child: Some(child),
            logs,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` when the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether the process is still running (false once killed).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Sends `signal` (e.g. `SIGTERM`) and waits up to `limit` for the exit; `None` if the
    /// process is still running then (or was already reaped).
    pub fn signal_and_wait(&mut self, signal: i32, limit: Duration) -> Option<ExitStatus> {
        let pid = i32::try_from(self.pid()?).ok()?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold it).
        unsafe {
            kill(pid, signal);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap, as a crash or power loss would end it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics (the log tail is printed on drop) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!("{} exited unexpectedly with {status}", self.name);
        }
    }

    /// The file holding the process's stderr (with its stdout too for
    /// [`Daemon::spawn_logged`]).
    pub fn log_path(&self) -> &Path {
        match &self.logs {
            Logs::Split { stderr, .. } => stderr,
            Logs::Combined(log) => log,
        }
    }

    /// Everything the process wrote to stderr (and, for [`Daemon::spawn_logged`], stdout).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Everything the process wrote, stdout then stderr.
    pub fn log_text(&self) -> String {
        match &self.logs {
            Logs::Split { stdout, stderr } => {
                let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
                read(stdout) + &read(stderr)
            }
            Logs::Combined(log) => std::fs::read_to_string(log).unwrap_or_default(),
        }
    }

    /// The last lines of each log, labelled.
    pub fn log_tail(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        };
        let section = |what: &str, p: &Path| {
            format!(
                "----- {} {what} (last {TAIL_LINES} lines) -----\n{}\n",
                self.name,
                tail(p)
            )
        };
        match &self.logs {
            Logs::Split { stdout, stderr } => {
                section("stdout", stdout) + &section("stderr", stderr)
            }
            Logs::Combined(log) => section("log", log),
        }
    }

    /// Polls `url` until it answers with one of `statuses`, panicking if the process exits
    /// first or `limit` passes. Blocks the calling thread: from async code use
    /// [`Daemon::wait_http_async`].
    pub fn wait_http(&mut self, url: &str, statuses: &[u16], limit: Duration) {
        self.wait_until(&format!("an answer on {url}"), limit, || {
            http_status(url).is_some_and(|s| statuses.contains(&s))
        });
    }

    /// Polls `ready` every 50 ms until it holds, panicking (with the log tail) if the process
    /// exits first or `limit` passes without it: `what` names what was awaited.
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready() {
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited with {status} before {what}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {limit:?}\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Daemon::wait_http`] for async tests: probes on the blocking pool, so servers running
    /// on the test's own runtime keep being polled.
    pub async fn wait_http_async(&mut self, url: &str, statuses: &[u16], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let probe = url.to_string();
            let status = tokio::task::spawn_blocking(move || http_status(&probe))
                .await
                .ok()
                .flatten();
            if status.is_some_and(|s| statuses.contains(&s)) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} not ready on {url} within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The directory of the workspace's binaries the running executable was built with:
/// `target/<profile>` for a test (`target/<profile>/deps/…`) or for `shoal-bench` itself.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("the executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    dir.to_owned()
}

/// The binary `name` in `dir`. Panics with what to do when it is not built: cargo builds only
/// the binaries of the crate under test.
pub fn bin_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests \
         (.ci/test does)",
        path.display()
    );
    path
}

/// A binary of the workspace (`target/<profile>/NAME`), found from the running test
/// executable (`target/<profile>/deps/…`).
pub fn workspace_bin(name: &str) -> PathBuf {
    bin_in(&default_bin_dir(), name)
}

/// `http://HOST:PORT/PATH` split into (`HOST:PORT`, `/PATH`).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// A `GET` over HTTP/1.0 (the server closes after the response); (status, body), or `None`
/// when nothing answers within 10 s. Never goes through a proxy.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let (head, body) = raw_get(url, Duration::from_secs(10), true)?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body))
}

/// The status `url` answers a `GET` with, or `None` when nothing answers within 2 s.
pub fn http_status(url: &str) -> Option<u16> {
    let (head, _) = raw_get(url, Duration::from_secs(2), false)?;
    head.split_whitespace().nth(1)?.parse().ok()
}

fn raw_get(url: &str, timeout: Duration, body: bool) -> Option<(String, String)> {
    let (host, path) = split_url(url)?;
    let addr = host.to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    // One write: a request in fragments may be answered and closed on before its end
    // arrives, and the close then resets the connection.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    if body {
        s.read_to_end(&mut buf).ok()?;
    } else {
        // The status line is enough.
        let mut chunk = [0u8; 1024];
        while !buf.contains(&b'\n') {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text, String::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_logs_and_dies_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exec sleep 30"]);
        let mut d = Daemon::spawn("sleeper", cmd, dir.path());
        let pid = d.pid().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log_text().contains("err") {
            assert!(Instant::now() < deadline, "no output: {}", d.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(d.log_text().contains("out"));
        assert_eq!(d.stderr_text().trim(), "err");
        assert!(d.is_running());
        drop(d);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the child is gone (killed and reaped)"
        );
    }

    #[test]
    fn environment_is_hermetic_but_explicit_settings_stay() {
        std::env::set_var("SHOAL_TESTKIT_PROBE", "inherited");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo \"[$SHOAL_TESTKIT_PROBE|$SHOAL_TESTKIT_SET|$http_proxy]\"",
        ]);
        cmd.env("SHOAL_TESTKIT_SET", "explicit")
            .env("http_proxy", "http://set.example");
        hermetic_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "[|explicit|http://set.example]"
        );
    }

    #[test]
    fn sigterm_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut d = Daemon::spawn_logged("sleeper", cmd, &dir.path().join("log"));
        let status = d.signal_and_wait(15, Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()));
        assert!(!d.is_running());
    }

    #[test]
    fn raw_http_reads_status_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in listener.incoming().take(2) {
                let mut s = s.unwrap();
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 1024]);
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 418 Teapot\r\nContent-Length: 5\r\n\r\nhello");
            }
        });
        let url = format!("http://127.0.0.1:{port}/x");
        assert_eq!(http_status(&url), Some(418));
        assert_eq!(http_get(&url), Some((418, "hello".to_string())));
        assert_eq!(http_status("http://127.0.0.1:1/"), None);
    }
}
