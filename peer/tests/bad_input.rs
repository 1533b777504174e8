//! Bad input is refused cleanly: `shoal-peer get` fails with a clear message and leaves no
//! file, the piece server and the local API answer 4xx with a JSON error and keep serving, and
//! bad settings stop `run` / `check-config` with a message naming the problem.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_common::Digest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Not a multiple of the piece size, so the last piece is short.
const BLOB: usize = (2 << 20) + 123;

/// Asserts a 4xx/5xx answer in `allowed` with a `{"code": .., "message": ..}` body.
async fn assert_json_error(resp: reqwest::Response, allowed: &[u16], what: &str) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert!(
        allowed.contains(&status),
        "{what}: status {status} (expected one of {allowed:?}), body {body:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body:?}"));
    assert!(
        json["code"].is_string() && json["message"].is_string(),
        "{what}: error body lacks code/message: {body}"
    );
}

/// A `shoal-peer get` that must fail; its message must mention one of `mentions` (if any).
struct GetCase {
    what: &'static str,
    url: String,
    digest: Option<String>,
    via: String,
    mentions: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_fails_cleanly_on_bad_input() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(20, BLOB);
        let (digest, url) = origin.push("bad/app", &blob).await;
        let other = Digest::of(b"something else");
        let missing = Digest::of(b"missing");
        let missing_url = origin.blob_url("bad/app", &missing);
        let mut peer = Peer::start("peer", PeerOpts::embedded()).await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("blob");
        let closed = free_port();

        let mirror = peer.mirror_url();
        let cases = [
            GetCase {
                what: "malformed digest",
                url: url.clone(),
                digest: Some("sha256:xyz".into()),
                via: mirror.clone(),
                mentions: vec!["digest".into()],
            },
            GetCase {
                what: "digest not matching the content",
                url: url.clone(),
                digest: Some(other.to_string()),
                via: mirror.clone(),
                mentions: vec!["digest".into()],
            },
            GetCase {
                what: "blob missing at the registry",
                url: missing_url,
                digest: Some(missing.to_string()),
                via: mirror.clone(),
                mentions: vec!["404".into(), "not found".into()],
            },
            GetCase {
                what: "unreachable origin",
                url: format!("http://127.0.0.1:{closed}/v2/bad/app/blobs/{digest}"),
                digest: Some(digest.to_string()),
                via: mirror.clone(),
                mentions: vec![],
            },
            GetCase {
                what: "unsupported URL scheme",
                url: "ftp://127.0.0.1/blob".into(),
                digest: None,
                via: mirror.clone(),
                mentions: vec!["ftp".into()],
            },
            GetCase {
                what: "unreachable peer",
                url: url.clone(),
                digest: Some(digest.to_string()),
                via: format!("http://127.0.0.1:{closed}"),
                mentions: vec![closed.to_string()],
            },
        ];
        for case in cases {
            let what = case.what;
            let o = get_raw(&case.via, &case.url, case.digest.as_deref(), &file).await;
            eprintln!("{what}: {} / {}", o.status, o.stderr.trim());
            o.assert_failure(what);
            let msg = o.stderr.to_lowercase();
            assert!(
                case.mentions.is_empty() || case.mentions.iter().any(|m| msg.contains(m.as_str())),
                "{what}: the message should mention one of {:?}: {}",
                case.mentions,
                o.stderr
            );
            assert_eq!(
                dir_entries(out.path()),
                Vec::<String>::new(),
                "{what}: files left in the output directory"
            );
            peer.assert_running();
        }

        // The peer still works.
        get(&peer, &url, Some(&digest), &file)
            .await
            .assert_success("get after the failures");
        assert_file_digest(&file, &digest);
        assert_eq!(dir_entries(out.path()), vec!["blob".to_string()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_reject_bad_requests_and_keep_serving() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let blob = random_blob(21, BLOB);
        let (digest, url) = origin.push("bad/app", &blob).await;
        let mut peer = Peer::start("peer", PeerOpts::embedded()).await;
        let out = tempfile::tempdir().unwrap();
        get(&peer, &url, Some(&digest), &out.path().join("blob"))
            .await
            .assert_success("get");
        let task = digest.to_string();
        let len = BLOB as u64;
        let client = http();

        // Sanity: held ranges are served, so the refusals below are not a broken server.
        let (status, bytes) = peer.fetch_range(&task, 0, 99).await;
        assert_eq!((status, &bytes[..]), (206, &blob[..100]), "bytes 0-99");
        let (status, bytes) = peer.fetch_range(&task, len - 10, len - 1).await;
        assert_eq!(
            (status, &bytes[..]),
            (206, &blob[BLOB - 10..]),
            "last 10 bytes"
        );

        // Piece server.
        let data = |task: &str| format!("{}/api/v1/tasks/{task}/data", peer.p2p_url());
        let unknown = Digest::of(b"never fetched").to_string();
        let huge_range = format!("bytes={}", "0-1,".repeat(25_000));
        let p2p_cases: Vec<(&str, String, String, &[u16])> = vec![
            (
                "malformed task id",
                data("not-a-task"),
                "bytes=0-9".into(),
                &[400, 404],
            ),
            (
                "path traversal",
                data("..%2F..%2Fetc%2Fpasswd"),
                "bytes=0-9".into(),
                &[400, 404],
            ),
            ("unknown task", data(&unknown), "bytes=0-9".into(), &[404]),
            (
                "range past the end",
                data(&task),
                format!("bytes={len}-{}", len + 10),
                &[404, 416],
            ),
            (
                "reversed range",
                data(&task),
                "bytes=10-5".into(),
                &[400, 416],
            ),
            (
                "garbage range",
                data(&task),
                "bytes=abc".into(),
                &[400, 416],
            ),
            ("100 KB range header", data(&task), huge_range, &[400, 416]),
        ];
        for (what, url, range, allowed) in p2p_cases {
            let resp = client
                .get(&url)
                .header("range", range)
                .header(shoal_common::PEER_ID_HEADER, "test-probe")
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_json_error(resp, allowed, &format!("piece server, {what}")).await;
        }

        // Headers too large for any server: refused (431) or the connection is closed.
        let resp = client
            .get(data(&task))
            .header("range", "bytes=0-9")
            .header("x-junk", "j".repeat(1 << 20))
            .send()
            .await;
        if let Ok(resp) = resp {
            let status = resp.status().as_u16();
            assert!(
                (400..500).contains(&status),
                "1 MiB header: status {status}"
            );
        }
        // Not HTTP at all.
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", peer.p2p_port))
            .await
            .unwrap();
        conn.write_all(b"\x00\x01\x02 garbage \xff\r\n\r\n")
            .await
            .unwrap();
        let mut reply = vec![];
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "garbage request answered with {reply:?}"
        );

        // Local API.
        let download = format!("{}/api/v1/download", peer.mirror_url());
        let missing_digest = Digest::of(b"missing").to_string();
        let missing = origin.blob_url("bad/app", &Digest::of(b"missing"));
        type Query<'a> = Vec<(&'a str, &'a str)>;
        let api_cases: Vec<(&str, Query, &[u16])> = vec![
            ("no url", vec![], &[400]),
            ("ftp url", vec![("url", "ftp://127.0.0.1/x")], &[400]),
            ("not a url", vec![("url", "not a url")], &[400]),
            (
                "malformed digest",
                vec![("url", &url), ("digest", "sha256:xyz")],
                &[400],
            ),
            (
                "blob missing at the registry",
                vec![("url", &missing), ("digest", &missing_digest)],
                &[404, 502],
            ),
        ];
        for (what, query, allowed) in api_cases {
            let resp = client
                .get(&download)
                .query(&query)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_json_error(resp, allowed, &format!("local API, {what}")).await;
        }
        let resp = client
            .get(&download)
            .query(&[("url", url.as_str()), ("digest", task.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "local API download");
        assert_eq!(resp.content_length(), Some(len), "local API Content-Length");
        assert!(
            resp.bytes().await.unwrap()[..] == blob[..],
            "local API body"
        );

        // Still alive and serving.
        peer.assert_running();
        assert!(
            peer.is_ready().await,
            "peer not ready after the bad requests"
        );
        let (status, bytes) = peer.fetch_range(&task, 0, 99).await;
        assert_eq!(
            (status, &bytes[..]),
            (206, &blob[..100]),
            "bytes 0-99 at the end"
        );
    })
    .await
}

/// Runs `shoal-peer ARGS`, which must exit non-zero within 20 s; returns its stderr.
async fn expect_exit_failure(args: &[String], what: &str) -> String {
    let (status, stderr) = run_briefly(args, what).await;
    assert!(
        !status.success(),
        "{what}: shoal-peer {args:?} exited successfully"
    );
    eprintln!("{what}: {}", stderr.trim());
    stderr
}

/// Runs `shoal-peer ARGS`, which must exit within 20 s: (status, stderr).
async fn run_briefly(args: &[String], what: &str) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(peer_bin());
    hermetic_env(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal-peer");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: shoal-peer {args:?} did not exit within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn assert_mentions(stderr: &str, word: &str, what: &str) {
    assert!(
        stderr.to_lowercase().contains(word),
        "{what}: the message should mention {word:?}: {stderr}"
    );
}

fn run_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--mirror-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--p2p-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--metrics-listen".into(),
        format!("127.0.0.1:{}", free_port()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused() {
    with_timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let unknown_key = write("unknown.toml", "bogus_key = 1\n");
        let bad_value = write("bad.toml", "cache_size = \"lots\"\n");
        let empty = write("empty.toml", "");
        let absent = dir.path().join("absent.toml").display().to_string();

        let what = "run --cache-size garbage";
        let e =
            expect_exit_failure(&run_args(dir.path(), &["--cache-size", "garbage"]), what).await;
        assert_mentions(&e, "cache", what);

        for (what, config, word) in [
            ("config with an unknown key", &unknown_key, "bogus_key"),
            ("config with a bad value", &bad_value, "cache"),
            ("missing config file", &absent, "absent.toml"),
        ] {
            let run = run_args(dir.path(), &["--config", config]);
            let e = expect_exit_failure(&run, &format!("run: {what}")).await;
            assert_mentions(&e, word, what);
            let check = ["check-config", "--config", config].map(String::from);
            let e = expect_exit_failure(&check, &format!("check-config: {what}")).await;
            assert_mentions(&e, word, what);
        }

        let check = ["check-config", "--config", &empty].map(String::from);
        let (status, stderr) = run_briefly(&check, "check-config of an empty config").await;
        assert!(
            status.success(),
            "check-config rejected an empty config: {stderr}"
        );
    })
    .await
}
