//! An upstream registry answering garbage or cutting bodies short (a small fake registry on raw
//! TCP, so it can lie about lengths): the mirror's client gets an OCI error or a cut
//! connection, never a complete-looking wrong body, and the peer stays healthy.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_common::Digest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake registry answers a blob GET.
#[derive(Clone, Copy)]
enum BlobLie {
    /// `200 text/html` with a small page, whatever the Range.
    Html,
    /// The right status and headers, half the bytes, then close.
    Truncate,
    /// The right length and headers, other bytes.
    WrongBytes,
    /// `HEAD` claims fewer bytes than the blob has; GETs serve the real bytes.
    ShortLength,
}

struct Fake {
    blobs: HashMap<String, (Vec<u8>, BlobLie)>,
    manifest_by_digest: Digest,
}

const JSON_MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

async fn serve(listener: TcpListener, fake: Arc<Fake>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let _ = answer(conn, &fake).await;
        });
    }
}

async fn answer(mut conn: TcpStream, fake: &Fake) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .and_then(|(_, v)| v.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let head_only = method == "HEAD";
    let send = |status: &str,
                headers: Vec<(String, String)>,
                body: Vec<u8>,
                close_after: Option<usize>| {
        let mut out = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            let n = close_after.unwrap_or(body.len()).min(body.len());
            bytes.extend_from_slice(&body[..n]);
        }
        bytes
    };
    let cl = |n: usize| ("content-length".to_owned(), n.to_string());
    let ct = |t: &str| ("content-type".to_owned(), t.to_owned());
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let out = if path == "/v2/" {
        send("200 OK", vec![cl(2)], b"{}".to_vec(), None)
    } else if path.starts_with("/v2/g/notjson/manifests/") {
        let body = b"<html><body>Welcome to nginx!</body></html>".to_vec();
        send(
            "200 OK",
            vec![cl(body.len()), ct(manifest_type)],
            body,
            None,
        )
    } else if path.starts_with("/v2/g/wrongdigest/manifests/") {
        let other = Digest::of(b"something else");
        send(
            "200 OK",
            vec![
                cl(JSON_MANIFEST.len()),
                ct(manifest_type),
                ("docker-content-digest".into(), other.to_string()),
            ],
            JSON_MANIFEST.to_vec(),
            None,
        )
    } else if path.starts_with("/v2/g/short/manifests/") {
        // Content-Length promises 10x the bytes sent, then the connection closes.
        send(
            "200 OK",
            vec![cl(JSON_MANIFEST.len() * 10), ct(manifest_type)],
            JSON_MANIFEST.repeat(10),
            Some(JSON_MANIFEST.len() / 2),
        )
    } else if path == format!("/v2/g/app/manifests/{}", fake.manifest_by_digest) {
        send(
            "200 OK",
            vec![cl(JSON_MANIFEST.len()), ct(manifest_type)],
            JSON_MANIFEST.to_vec(),
            None,
        )
    } else if let Some((data, lie)) = path
        .strip_prefix("/v2/g/app/blobs/")
        .and_then(|d| fake.blobs.get(d))
    {
        let len = data.len();
        let octet = ct("application/octet-stream");
        if head_only {
            let claimed = match lie {
                BlobLie::ShortLength => len / 2,
                _ => len,
            };
            send("200 OK", vec![cl(claimed), octet], vec![], None)
        } else {
            let (a, b) = range
                .map(|(a, b)| (a, b.min(len - 1)))
                .unwrap_or((0, len - 1));
            let part = |d: &[u8]| d[a..=b].to_vec();
            let partial = |n: usize| {
                vec![
                    cl(n),
                    octet.clone(),
                    ("content-range".into(), format!("bytes {a}-{b}/{len}")),
                ]
            };
            match lie {
                BlobLie::Html => {
                    let body = b"<!doctype html><title>Login</title>".to_vec();
                    send("200 OK", vec![cl(body.len()), ct("text/html")], body, None)
                }
                BlobLie::Truncate => {
                    let body = part(data);
                    let half = body.len() / 2;
                    send("206 Partial Content", partial(body.len()), body, Some(half))
                }
                BlobLie::WrongBytes => {
                    let other = random_blob(999, len);
                    let body = part(&other);
                    send("206 Partial Content", partial(body.len()), body, None)
                }
                BlobLie::ShortLength => {
                    let body = part(data);
                    send("206 Partial Content", partial(body.len()), body, None)
                }
            }
        }
    } else {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}"#.to_vec();
        send(
            "404 Not Found",
            vec![cl(body.len()), ct("application/json")],
            body,
            None,
        )
    };
    conn.write_all(&out).await?;
    conn.shutdown().await
}

/// GETs `url`: the answer must be an OCI error, or a cut (or stalled: the peer retries a
/// failing upstream for a while) body, or exactly `expected`'s bytes.
async fn assert_no_wrong_body(url: &str, expected: Option<&Digest>, what: &str) -> &'static str {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return "no answer yet (peer retrying)",
        Err(_) => return "connection cut",
    };
    let status = resp.status().as_u16();
    let body = resp.bytes().await;
    if status != 200 && status != 206 {
        let body = body.unwrap_or_else(|e| panic!("{what}: error body unreadable: {e}"));
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: {status} without an OCI error body ({e})"));
        assert!(json["errors"][0]["code"].is_string(), "{what}: {json}");
        assert!(status >= 400, "{what}: status {status}");
        return "OCI error";
    }
    match body {
        Err(e) if e.is_timeout() => "headers, then no bytes (peer retrying)",
        Err(_) => "cut body",
        Ok(b) => {
            let got = Digest::of(&b);
            assert!(
                expected == Some(&got),
                "{what}: a complete {status} body with the wrong content ({} bytes, {got})",
                b.len()
            );
            "correct body"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_upstream_answers_never_pass_as_good() {
    with_timeout(Duration::from_secs(240), async {
        let mut blobs = HashMap::new();
        let mut cases = vec![];
        for (i, lie, name) in [
            (0, BlobLie::Html, "html instead of the blob"),
            (1, BlobLie::Truncate, "truncated blob body"),
            (2, BlobLie::WrongBytes, "right length, wrong bytes"),
            (3, BlobLie::ShortLength, "HEAD claims a wrong length"),
        ] {
            let data = random_blob(200 + i, (3 << 20) + 12345);
            let d = Digest::of(&data);
            blobs.insert(d.to_string(), (data, lie));
            cases.push((d, name));
        }
        let manifest_by_digest = Digest::of(b"the manifest that was asked for");
        let fake = Arc::new(Fake {
            blobs,
            manifest_by_digest,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, fake));
        let host = format!("127.0.0.1:{port}");
        let mut peer = Peer::start(
            "peer",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let base = format!("{}/v2/g", peer.mirror_url());
        let ns = format!("ns={host}");

        for (repo, reference, what) in [
            ("notjson", "v1".to_owned(), "non-JSON manifest"),
            (
                "wrongdigest",
                "v1".to_owned(),
                "manifest with a wrong Docker-Content-Digest",
            ),
            ("short", "v1".to_owned(), "manifest cut short"),
            (
                "app",
                manifest_by_digest.to_string(),
                "manifest by digest, other bytes",
            ),
        ] {
            let url = format!("{base}/{repo}/manifests/{reference}?{ns}");
            let outcome = assert_no_wrong_body(&url, None, what).await;
            eprintln!("{what}: {outcome}");
        }
        for round in 0..2 {
            for (d, what) in &cases {
                let url = format!("{base}/app/blobs/{d}?{ns}");
                let t = std::time::Instant::now();
                let outcome = assert_no_wrong_body(&url, Some(d), what).await;
                eprintln!("{what} (round {round}): {outcome} in {:?}", t.elapsed());
            }
        }
        if std::env::var("GARBAGE_DEBUG").is_ok() {
            eprintln!("{}", peer.stderr_text());
        }
        peer.assert_running();
        assert!(peer.is_ready().await, "peer not ready after garbage");
        let resp = http()
            .get(format!("{}/v2/", peer.mirror_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let failures = peer
            .metric(
                "shoal_peer_upstream_failures_total",
                &[("kind", "manifest")],
            )
            .await;
        assert!(failures >= 4.0, "manifest failures counted: {failures}");
    })
    .await
}
