//! The supernode's status page in a real browser: a running `shoal-supernode` with two peers
//! and a task (set up through the HTTP API, as peers would) is loaded by headless Chromium
//! (Debian's `chromium`, which CI installs); the rendered DOM must show the peers, the task and
//! its piece progress, and a screenshot must come out as a real PNG.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shoal_testkit::Daemon;
use support::{bin, free_port};

const PEER_A: &str = "node-a.shoal-test-7f3a";
const PEER_B: &str = "node-b.shoal-test-19c2";
const TASK: &str = "sha256:5ca1ab1e00000000000000000000000000000000000000000000000000000001";
const PIECE: u64 = 4096;
const PIECES: u64 = 10;
/// A label and a url with markup in them: the page must show them as text.
const HOSTILE_ZONE: &str = "<b id=\"injected\">zone&1</b>";
const HOSTILE_URL: &str = "https://registry.example/v2/app/blobs/x?<img src=x onerror=alert(1)>";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills Chromium's whole process group (its helper processes too) when dropped.
struct ChromiumGroup(Child);

impl Drop for ChromiumGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_supernode(port: u16, log_dir: &Path) -> Daemon {
    let mut cmd = Command::new(bin("shoal-supernode"));
    cmd.arg(format!("--listen=127.0.0.1:{port}"))
        .args(["--peer-ttl", "10min"])
        .env("RUST_LOG", "warn");
    let mut sn = Daemon::spawn("shoal-supernode", cmd, log_dir);
    sn.wait_http(
        &format!("http://127.0.0.1:{port}/readyz"),
        &[200],
        Duration::from_secs(30),
    );
    sn
}

/// A JSON POST over plain HTTP/1.0; panics unless the reply is 2xx. Returns the reply's JSON.
fn post(port: u16, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the supernode");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (head, reply) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((200..300).contains(&status), "POST {path}: {head}\n{reply}");
    serde_json::from_str(reply).unwrap_or(Value::Null)
}

fn piece_digest(p: u64) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(p.to_le_bytes())))
}

fn assigned(reply: &Value) -> Vec<u64> {
    reply["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| a["piece"].as_u64().expect("piece"))
        .collect()
}

/// What peers would tell the supernode: A fetches every piece from the origin, B fetches 4 of
/// them from A. So A shows 100 %, B 40 %.
fn populate(port: u16) {
    let task = format!("/api/v1/tasks/{TASK}");
    for (id, p2p, zone) in [(PEER_A, 7101, "zone-a"), (PEER_B, 7102, HOSTILE_ZONE)] {
        let announce = json!({"peer_id": id, "addr": format!("127.0.0.1:{p2p}"),
                              "upload_capacity": 50 << 20, "labels": {"zone": zone}});
        post(port, "/api/v1/peers", &announce);
        let register = json!({"peer_id": id, "url": HOSTILE_URL,
                              "layout": {"length": PIECES * PIECE, "piece_size": PIECE}});
        post(port, &format!("{task}/peers"), &register);
    }
    let schedule = |id: &str, capacity: u64| {
        let body = json!({"peer_id": id, "capacity": capacity, "wait_ms": 0});
        assigned(&post(port, &format!("{task}/schedule"), &body))
    };
    let report = |id: &str, pieces: &[u64], from: Option<&str>| {
        let done: Vec<Value> = pieces
            .iter()
            .map(|&p| json!({"piece": p, "sha256": piece_digest(p), "from": from, "millis": 4}))
            .collect();
        let reply = post(
            port,
            &format!("{task}/reports"),
            &json!({"peer_id": id, "done": done}),
        );
        assert_eq!(reply["accepted"], pieces.len(), "{reply}");
    };
    let mut held = 0;
    while held < PIECES {
        let pieces = schedule(PEER_A, PIECES);
        assert!(!pieces.is_empty(), "nothing to fetch for {PEER_A}");
        report(PEER_A, &pieces, None);
        held += pieces.len() as u64;
    }
    let pieces = schedule(PEER_B, 4);
    assert_eq!(pieces.len(), 4, "{PEER_B} gets 4 pieces from {PEER_A}");
    report(PEER_B, &pieces, Some(PEER_A));
    post(
        port,
        &format!("/api/v1/peers/{PEER_A}/heartbeat"),
        &json!({"active_uploads": 1, "upload_rate": 3 << 20}),
    );
}

/// Debian's `chromium` (`CHROMIUM` overrides). Missing is a failure, not a skip: CI installs it.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    let fallback = Path::new("/usr/bin/chromium");
    found
        .or_else(|| fallback.is_file().then(|| fallback.to_path_buf()))
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: this test needs headless Chromium \
                 (`apt-get install --no-install-recommends chromium`, as .ci/run does), \
                 or set CHROMIUM to its path"
            )
        })
}

/// Runs headless Chromium on `url` with `extra` flags in a fresh profile, killing it (and its
/// helper processes) after [`CHROMIUM_TIMEOUT`]. Returns its stdout.
fn run_chromium(work: &Path, name: &str, url: &str, extra: &[&str]) -> String {
    use std::os::unix::process::CommandExt;

    let profile = work.join(format!("profile-{name}"));
    std::fs::create_dir_all(&profile).unwrap();
    let out_path = work.join(format!("{name}.stdout"));
    let err_path = work.join(format!("{name}.stderr"));
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .env("HOME", work)
    .stdin(Stdio::null())
    .stdout(File::create(&out_path).unwrap())
    .stderr(File::create(&err_path).unwrap())
    .process_group(0);
    let mut proc = ChromiumGroup(cmd.spawn().expect("spawn chromium"));
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            drop(proc);
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!("chromium ({name}) still running after {CHROMIUM_TIMEOUT:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(proc); // helpers left in its process group
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium ({name}) failed: {status}\n{stderr}"
    );
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn status_page_in_headless_chromium() {
    let chromium = chromium(); // fail first, clearly, when it is missing
    assert!(chromium.is_file(), "{} is not a file", chromium.display());
    let port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let _sn = start_supernode(port, logs.path());
    populate(port);
    let work = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/ui");

    let dom = run_chromium(work.path(), "dom", &url, &["--dump-dom"]);
    let show = |what: &str| {
        assert!(
            dom.contains(what),
            "the rendered page does not show {what:?}; DOM:\n{dom}"
        )
    };
    show("Shoal supernode");
    show(PEER_A);
    show(PEER_B);
    show(TASK);
    show("127.0.0.1:7101");
    show("zone-a");
    show("Last updated");
    // Piece progress: A holds every piece, B 4 of 10.
    show("aria-valuenow=\"100\"");
    show("aria-valuenow=\"40\"");
    show("40% · 4 / 10");
    show("100% · 10 / 10");
    // Bytes by source: 40 KiB from the origin, 16 KiB from peers.
    show("From origin</div><div class=\"value\">40.0 KiB</div>");
    show("From peers</div><div class=\"value\">16.0 KiB</div>");
    // Client-supplied strings are text, not markup.
    show("&lt;b id=\"injected\"&gt;zone&amp;1&lt;/b&gt;");
    show("&lt;img src=x onerror=alert(1)&gt;");
    assert!(
        !dom.contains("id=\"injected\">"),
        "markup from a label was rendered"
    );
    assert!(!dom.contains("<img"), "markup from a url was rendered");
    // The error banner is there, and empty: polling worked.
    let banner = dom
        .find("<div id=\"error\"")
        .expect("the error banner element");
    let inner = &dom[banner..];
    let inner = &inner[inner.find('>').map_or(0, |i| i + 1)..];
    assert!(
        inner.starts_with("</div>"),
        "error banner shown: {}",
        &inner[..inner.find('<').unwrap_or(inner.len())]
    );

    let png = work.path().join("ui.png");
    run_chromium(
        work.path(),
        "screenshot",
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,800",
            "--hide-scrollbars",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 8 * 1024,
        "screenshot is only {} bytes: a blank page?",
        bytes.len()
    );
    // The IHDR chunk: the window size asked for.
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!((be32(16), be32(20)), (1280, 800), "screenshot size");
    if let Some(dir) = std::env::var_os("SHOAL_UI_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&png, Path::new(&dir).join("ui.png"));
    }
}
