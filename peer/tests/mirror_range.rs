//! Ranged blob requests (`Range: bytes=…`) through the mirror for blobs the peer does not hold
//! whole (issue 17): such a request joins the blob's P2P task and fetches only the pieces that
//! cover the range, from peers that hold them or else from the registry.
//!
//! - exactly the requested bytes with the right `Content-Range`, cold and warm, for every form
//!   of range (first byte, last byte, across piece boundaries, suffix, open-ended, clamped);
//! - bad ranges get a clear 4xx (416 with `Content-Range: bytes */LEN` past the end) and the
//!   peer keeps serving;
//! - a registry that misreports a blob's length never makes the peer serve wrong bytes as 206;
//! - the pieces one peer fetched for a range are shared: a second peer asking the same range
//!   costs the registry nothing but headers, and a whole-blob pull afterwards only the rest.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shoal_common::{Digest, PieceLayout};
use support::*;

/// Registry bytes one request may cost when no piece moves: its answer's headers (a HEAD, a
/// 401/404/416, a token round trip), well under a piece.
const REQUEST_BYTES: u64 = 1024;

fn mirror_opts(opts: PeerOpts, origin: &Origin) -> PeerOpts {
    opts.arg("--insecure-registry").arg(origin.host())
}

fn blob_url(peer: &Peer, origin: &Origin, repo: &str, d: &Digest) -> String {
    format!(
        "{}/v2/{repo}/blobs/{d}?ns={}",
        peer.mirror_url(),
        origin.host()
    )
}

/// The `Content-Length` header as sent (reqwest's `content_length()` is the body's size, 0 for a
/// `HEAD`).
fn header_len(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Asserts the peer is alive, ready and never logged a panic.
async fn assert_healthy(peer: &mut Peer, what: &str) {
    peer.assert_running();
    assert!(
        peer.is_ready().await,
        "{what}: peer {} is not ready",
        peer.name
    );
    let log = peer.stderr_text();
    assert!(
        !log.contains("panicked"),
        "{what}: peer {} logged a panic:\n{}",
        peer.name,
        peer.log_tail()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad ranges on a cold blob

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_bad_ranges_get_clear_errors() {
    with_timeout(Duration::from_secs(180), async {
        const LEN: usize = (2 << 20) + 123;
        let origin = Origin::start().await;
        let blob = random_blob(600, LEN);
        let repo = "range/bad";
        let (digest, _) = origin.push(repo, &blob).await;
        let mut peer = Peer::start("peer", mirror_opts(PeerOpts::embedded(), &origin)).await;
        let url = blob_url(&peer, &origin, repo, &digest);
        let len = LEN as u64;
        let star = format!("bytes */{len}");

        // Past the end: 416 naming the length.
        let past_end = [
            format!("bytes={len}-"),
            format!("bytes={len}-{}", len + 10),
            format!("bytes={}-{}", len + 10, len + 20),
            "bytes=99999999999-".to_string(),
        ];
        let egress_before = origin.egress();
        let mut requests = 0u64;
        for range in &past_end {
            let what = format!("cold blob of {len} bytes, Range {range}");
            let r = fetch_range(&url, None, range).await;
            r.assert_oci_error(&[416], Some("RANGE_INVALID"), &what);
            assert_eq!(
                r.content_range.as_deref(),
                Some(star.as_str()),
                "{what}: a 416 must carry Content-Range {star}"
            );
            requests += 1;
        }

        // Inverted, several ranges, garbage: 400 (416 accepted), never a body.
        let long = format!("bytes=0-{}", "1".repeat(200));
        let malformed: Vec<(&str, Vec<u8>)> = vec![
            ("inverted", b"bytes=10-5".to_vec()),
            (
                "inverted at the end",
                format!("bytes={}-5", len - 1).into_bytes(),
            ),
            ("two ranges", b"bytes=0-1,5-6".to_vec()),
            (
                "two ranges, one past the end",
                format!("bytes=0-1,{len}-").into_bytes(),
            ),
            ("letters", b"bytes=abc".to_vec()),
            ("another unit", b"items=0-1".to_vec()),
            ("no unit", b"0-1".to_vec()),
            ("empty spec", b"bytes=".to_vec()),
            ("a lone dash", b"bytes=-".to_vec()),
            ("three parts", b"bytes=1-2-3".to_vec()),
            ("double dash", b"bytes=--5".to_vec()),
            ("negative start", b"bytes=-5-10".to_vec()),
            (
                "overflowing number",
                b"bytes=99999999999999999999999-".to_vec(),
            ),
            (
                "overflowing end",
                b"bytes=0-99999999999999999999999".to_vec(),
            ),
            ("200-character header", long.into_bytes()),
            ("not UTF-8", b"bytes=\xff\xfe-1".to_vec()),
            ("empty header", b"".to_vec()),
        ];
        for (what, range) in &malformed {
            let what = format!(
                "cold blob, {what} (Range {:?})",
                String::from_utf8_lossy(range)
            );
            let r = fetch_range_bytes(&url, None, range).await;
            r.assert_oci_error(&[400, 416], Some("RANGE_INVALID"), &what);
            requests += 1;
        }
        let egress = origin.egress() - egress_before;
        assert!(
            egress <= requests * REQUEST_BYTES,
            "{requests} refused ranges made the registry send {egress} bytes (at most \
             {REQUEST_BYTES} of headers each expected, no piece)"
        );
        let fetched = peer.metric("shoal_peer_download_bytes_total", &[]).await;
        assert_eq!(
            fetched, 0.0,
            "the peer downloaded {fetched} bytes for {requests} requests with bad ranges"
        );

        // Still healthy and serving, ranged and whole.
        assert_healthy(&mut peer, "after the bad ranges").await;
        fetch_range(&url, None, "bytes=1048570-1048585")
            .await
            .assert_range(
                &blob,
                1_048_570,
                1_048_585,
                "a good range after the bad ones",
            );
        fetch(&url, None, None)
            .await
            .assert_bytes(&blob, "the whole blob after the bad ranges");
        // And once held whole, the same answers.
        for range in &past_end {
            let r = fetch_range(&url, None, range).await;
            let what = format!("held blob, Range {range}");
            r.assert_oci_error(&[416], Some("RANGE_INVALID"), &what);
            assert_eq!(r.content_range.as_deref(), Some(star.as_str()), "{what}");
        }
        assert_healthy(&mut peer, "at the end").await;
    })
    .await
}

/// `bytes=-0` (the last zero bytes) is unsatisfiable (RFC 9110 §14.1.2); docker-registry answers
/// it with a 206 of no bytes and `Content-Range: bytes LEN-(LEN-1)/LEN`, which must not be
/// passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_empty_suffix_range_is_unsatisfiable() {
    with_timeout(Duration::from_secs(120), async {
        const LEN: usize = (1 << 20) + 5;
        let origin = Origin::start().await;
        let blob = random_blob(601, LEN);
        let (digest, _) = origin.push("range/suffix", &blob).await;
        let mut peer = Peer::start("peer", mirror_opts(PeerOpts::embedded(), &origin)).await;
        let url = blob_url(&peer, &origin, "range/suffix", &digest);
        let r = fetch_range(&url, None, "bytes=-0").await;
        r.assert_oci_error(
            &[416],
            Some("RANGE_INVALID"),
            "cold blob, Range bytes=-0 (an empty suffix)",
        );
        assert_eq!(
            r.content_range,
            Some(format!("bytes */{LEN}")),
            "a 416 for bytes=-0 names the length"
        );
        assert_healthy(&mut peer, "after bytes=-0").await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Good ranges: exactly the bytes asked for

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_ranges_return_exact_bytes() {
    with_timeout(Duration::from_secs(240), async {
        // 4 pieces of 1 MiB, the last one 4321 bytes.
        const LEN: usize = (3 << 20) + 4321;
        let len = LEN as u64;
        let piece = PieceLayout::for_length(len).piece_size;
        assert_eq!(piece, 1 << 20, "piece size of a {len}-byte blob");
        let origin = Origin::start().await;
        let repo = "range/good";
        // (what, Range, first byte, last byte): each asked of its own cold blob first.
        let cases: Vec<(&str, String, u64, u64)> = vec![
            ("first byte", "bytes=0-0".into(), 0, 0),
            (
                "last byte",
                format!("bytes={}-{}", len - 1, len - 1),
                len - 1,
                len - 1,
            ),
            (
                "across two piece boundaries",
                format!("bytes={}-{}", piece - 576, 2 * piece + 348),
                piece - 576,
                2 * piece + 348,
            ),
            (
                "exactly piece 1",
                format!("bytes={piece}-{}", 2 * piece - 1),
                piece,
                2 * piece - 1,
            ),
            (
                "suffix of 100 bytes",
                "bytes=-100".into(),
                len - 100,
                len - 1,
            ),
            (
                "suffix longer than the blob",
                format!("bytes=-{}", len + 5),
                0,
                len - 1,
            ),
            (
                "open-ended",
                format!("bytes={}-", 2 * piece + 5),
                2 * piece + 5,
                len - 1,
            ),
            (
                "end past the end (clamped)",
                format!("bytes={}-{}", len - 10, len + 1000),
                len - 10,
                len - 1,
            ),
            (
                "inside the short last piece",
                format!("bytes={}-{}", 3 * piece + 100, 3 * piece + 200),
                3 * piece + 100,
                3 * piece + 200,
            ),
            ("the whole blob as a range", "bytes=0-".into(), 0, len - 1),
        ];
        let mut blobs = vec![];
        for (i, _) in cases.iter().enumerate() {
            let data = random_blob(610 + i as u64, LEN);
            let (d, _) = origin.push(repo, &data).await;
            blobs.push((d, data));
        }
        let mut peer = Peer::start("peer", mirror_opts(PeerOpts::embedded(), &origin)).await;

        for ((what, range, first, last), (d, data)) in cases.iter().zip(&blobs) {
            let url = blob_url(&peer, &origin, repo, d);
            fetch_range(&url, None, range).await.assert_range(
                data,
                *first,
                *last,
                &format!("cold: {what} ({range})"),
            );
        }
        // Again, now that the peer holds those pieces; then ranges reaching into pieces it
        // does not hold yet.
        for ((what, range, first, last), (d, data)) in cases.iter().zip(&blobs) {
            let url = blob_url(&peer, &origin, repo, d);
            fetch_range(&url, None, range).await.assert_range(
                data,
                *first,
                *last,
                &format!("warm: {what} ({range})"),
            );
            let (a, b) = (500_000, 2 * piece + 600_000);
            fetch_range(&url, None, &format!("bytes={a}-{b}"))
                .await
                .assert_range(data, a, b, &format!("after {what}: bytes={a}-{b}"));
        }
        // HEAD and whole-blob GETs of partly held blobs: the full length, every byte.
        for ((what, _, _, _), (d, data)) in cases.iter().zip(&blobs) {
            let url = blob_url(&peer, &origin, repo, d);
            let head = http().head(&url).send().await.unwrap();
            assert_eq!(
                (head.status().as_u16(), header_len(&head)),
                (200, Some(len)),
                "HEAD after {what}: status and Content-Length (the blob has {len} bytes)"
            );
            fetch(&url, None, None)
                .await
                .assert_bytes(data, &format!("whole blob after {what}"));
        }
        assert_healthy(&mut peer, "after the ranges").await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A registry that misreports a blob's length

/// A registry whose `HEAD` of a blob claims `claimed` bytes; its `GET`s are honest (the real
/// bytes, `Content-Range: bytes A-B/REAL`, 416 past the real end).
#[derive(Clone)]
struct Misreporting {
    /// (repository, digest, the real bytes, the length its `HEAD` claims).
    blobs: Arc<Vec<LyingBlob>>,
}

type LyingBlob = (String, Digest, Vec<u8>, u64);

async fn misreporting_v2(
    State(m): State<Misreporting>,
    method: Method,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((_, digest, blob, claimed)) = m
        .blobs
        .iter()
        .find(|(repo, d, _, _)| rest == format!("{repo}/blobs/{d}"))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = blob.len() as u64;
    let digest = digest.to_string();
    if method == Method::HEAD {
        return (
            StatusCode::OK,
            [
                ("content-length", claimed.to_string()),
                ("docker-content-digest", digest),
                ("content-type", "application/octet-stream".into()),
            ],
        )
            .into_response();
    }
    let Some(range) = headers.get("range") else {
        return (
            StatusCode::OK,
            [("docker-content-digest", digest)],
            blob.clone(),
        )
            .into_response();
    };
    let parsed = range
        .to_str()
        .ok()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(
            |(a, b)| match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
                (Some(a), Some(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
                (Some(a), None) if b.is_empty() => Some((a, len.saturating_sub(1))),
                (None, Some(n)) if a.is_empty() && n > 0 => Some((len.saturating_sub(n), len - 1)),
                _ => None,
            },
        );
    match parsed {
        Some((a, b)) if a < len => (
            StatusCode::PARTIAL_CONTENT,
            [("content-range", format!("bytes {a}-{b}/{len}"))],
            blob[a as usize..=b as usize].to_vec(),
        )
            .into_response(),
        _ => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [("content-range", format!("bytes */{len}"))],
        )
            .into_response(),
    }
}

/// `fetch_range`, failing the test if the peer does not answer within 60 s.
async fn fetch_range_bounded(url: &str, range: &str, what: &str) -> Ranged {
    match tokio::time::timeout(Duration::from_secs(60), fetch_range(url, None, range)).await {
        Ok(r) => r,
        Err(_) => panic!("{what}: no answer to Range {range} within 60 s"),
    }
}

/// The answer to a range of a blob whose registry misreports its length: a clear error, or a
/// 206 with exactly the registry's real bytes (`blob[start..=last]`, the end clamped to the
/// real length) under a `Content-Range` naming the real length. `real_bytes_exist = false`:
/// nothing of the range exists, so only an error will do.
fn assert_error_or_true_bytes(r: &Ranged, blob: &[u8], start: u64, last: u64, what: &str) {
    let real = blob.len() as u64;
    if start >= real || r.status != 206 {
        let message = r.assert_oci_error(&[400, 404, 416, 500, 502, 503, 504], None, what);
        eprintln!("{what}: {} {message}", r.status);
        return;
    }
    r.assert_range(blob, start, last.min(real - 1), what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_misreporting_length_never_yields_wrong_bytes() {
    with_timeout(Duration::from_secs(240), async {
        const REAL: usize = (3 << 20) + 999;
        let real = REAL as u64;
        // Claims 2 MiB more than it has: the pieces past the real end do not exist.
        let long = random_blob(620, REAL);
        let long_claim = real + (2 << 20) + 17;
        // Claims 1 MiB less than it has.
        let short = random_blob(621, REAL);
        let short_claim = real - (1 << 20) - 1;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let (long_d, short_d) = (Digest::of(&long), Digest::of(&short));
        let m = Misreporting {
            blobs: Arc::new(vec![
                ("lie/long".into(), long_d, long.clone(), long_claim),
                ("lie/short".into(), short_d, short.clone(), short_claim),
            ]),
        };
        let app = Router::new()
            .route("/v2/", get(|| async { "{}" }))
            .route("/v2/{*rest}", get(misreporting_v2).head(misreporting_v2))
            .with_state(m);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let direct = http()
            .head(format!("http://{host}/v2/lie/long/blobs/{long_d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header_len(&direct),
            Some(long_claim),
            "the test registry's HEAD must claim {long_claim} bytes, or this tests nothing"
        );

        let mut peer = Peer::start(
            "peer",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let url =
            |repo: &str, d: &Digest| format!("{}/v2/{repo}/blobs/{d}?ns={host}", peer.mirror_url());

        // HEAD claims REAL + 2 MiB.
        let long_url = url("lie/long", &long_d);
        for (what, start, last) in [
            (
                "beyond the real end, inside the claimed length",
                real + 100,
                real + 199,
            ),
            ("the claimed last byte", long_claim - 1, long_claim - 1),
            ("across the real end", real - 50, real + 49),
            ("the first 100 bytes", 0, 99),
            ("the real last piece", 3 << 20, real - 1),
        ] {
            let what =
                format!("registry claims {long_claim} bytes, has {real}: {what} ({start}-{last})");
            let r = fetch_range_bounded(&long_url, &format!("bytes={start}-{last}"), &what).await;
            assert_error_or_true_bytes(&r, &long, start, last, &what);
        }
        // HEAD claims REAL - 1 MiB - 1.
        let short_url = url("lie/short", &short_d);
        for (what, start, last) in [
            (
                "the claimed last 100 bytes",
                short_claim - 100,
                short_claim - 1,
            ),
            (
                "beyond the claimed end, inside the real blob",
                short_claim + 10,
                short_claim + 20,
            ),
            ("the first 100 bytes", 0, 99),
            ("across the claimed end", short_claim - 10, short_claim + 10),
        ] {
            let what =
                format!("registry claims {short_claim} bytes, has {real}: {what} ({start}-{last})");
            let r = fetch_range_bounded(&short_url, &format!("bytes={start}-{last}"), &what).await;
            assert_error_or_true_bytes(&r, &short, start, last, &what);
        }
        // Whole-blob GETs: never a complete-looking 200 with the wrong bytes.
        for (what, u, data) in [
            ("claims more", &long_url, &long),
            ("claims less", &short_url, &short),
        ] {
            let f = tokio::time::timeout(Duration::from_secs(60), fetch(u, None, None))
                .await
                .unwrap_or_else(|_| panic!("whole blob, registry {what}: no answer within 60 s"));
            if let (200, Ok(body)) = (f.status, &f.body) {
                assert!(
                    body == data,
                    "whole blob, registry {what}: a complete 200 of {} bytes that are not the \
                     blob's {} bytes",
                    body.len(),
                    data.len()
                );
            }
            eprintln!(
                "whole blob, registry {what}: status {}, body {}",
                f.status,
                match &f.body {
                    Ok(b) => format!("{} bytes", b.len()),
                    Err(e) => format!("cut ({e})"),
                }
            );
        }
        assert_healthy(&mut peer, "after the misreporting registry").await;
        server.abort();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Sparse pieces are shared

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_pieces_are_shared_between_peers() {
    with_timeout(Duration::from_secs(240), async {
        const LEN: usize = 16 << 20;
        let len = LEN as u64;
        let piece = PieceLayout::for_length(len).piece_size;
        assert_eq!(piece, 1 << 20, "piece size of a 16 MiB blob");
        let origin = Origin::start().await;
        let repo = "range/shared";
        let blob = random_blob(630, LEN);
        let (digest, _) = origin.push(repo, &blob).await;
        let supernode = Supernode::start().await;
        let opts =
            |id: &str| mirror_opts(PeerOpts::with_supernode(&supernode).peer_id(id), &origin);
        let mut a = Peer::start("peer-a", opts("peer-a")).await;
        let mut b = Peer::start("peer-b", opts("peer-b")).await;

        // Pieces 5, 6 and 7.
        let (start, last) = (5 * piece + 1000, 7 * piece + 500);
        let range = format!("bytes={start}-{last}");
        let range_len = last - start + 1;
        let covered = 3 * piece;

        // Peer A, cold: about the range, rounded up to pieces, from the registry.
        let before = origin.egress();
        fetch_range(&blob_url(&a, &origin, repo, &digest), None, &range)
            .await
            .assert_range(&blob, start, last, "peer A, cold range");
        let cost = origin.egress() - before;
        let bound = range_len + 2 * piece + HEADERS_ONLY;
        assert!(
            cost <= bound,
            "peer A's range of {range_len} bytes made the registry send {cost} bytes (at most \
             {bound}: the range rounded up to pieces, plus headers; the blob has {len})"
        );
        let from_origin = a
            .metric("shoal_peer_download_bytes_total", &[("source", "origin")])
            .await;
        assert!(
            from_origin >= covered as f64 && from_origin <= (range_len + 2 * piece) as f64,
            "peer A downloaded {from_origin} bytes from the origin for a range of {range_len} \
             bytes in 3 pieces of {piece} ({covered} bytes expected): the range is not going \
             through the P2P engine, or it fetched more than the pieces it needs"
        );
        assert!(
            supernode.task_has_peer(&digest.to_string(), "peer-a").await,
            "peer A is not listed on task {digest} after its range: {}",
            supernode.tasks().await
        );

        // Peer A again: the pieces are held.
        let before = origin.egress();
        fetch_range(&blob_url(&a, &origin, repo, &digest), None, &range)
            .await
            .assert_range(&blob, start, last, "peer A, the same range again");
        let cost = origin.egress() - before;
        assert!(
            cost <= HEADERS_ONLY,
            "peer A's second request of a range it holds made the registry send {cost} bytes \
             (at most {HEADERS_ONLY} of headers expected)"
        );

        // Peer B, the same range: from peer A.
        let before = origin.egress();
        fetch_range(&blob_url(&b, &origin, repo, &digest), None, &range)
            .await
            .assert_range(&blob, start, last, "peer B, the range peer A holds");
        let cost = origin.egress() - before;
        assert!(
            cost <= HEADERS_ONLY,
            "peer B's range, held by peer A, made the registry send {cost} bytes (at most \
             {HEADERS_ONLY} of headers expected)"
        );
        let from_peers = b
            .metric("shoal_peer_download_bytes_total", &[("source", "peer")])
            .await;
        assert!(
            from_peers > 0.0,
            "peer B got {from_peers} bytes from peers for a range peer A holds"
        );

        // Peer B, the whole blob: the registry sends at most what neither peer holds.
        let before = origin.egress();
        let f = fetch(&blob_url(&b, &origin, repo, &digest), None, None).await;
        assert_eq!(f.status, 200, "peer B, whole blob: {}", f.status);
        let body = f.body.as_ref().expect("peer B, whole blob body");
        assert_eq!(
            Digest::of(body),
            digest,
            "peer B, whole blob: {} bytes with the wrong digest",
            body.len()
        );
        let cost = origin.egress() - before;
        let rest = len - covered;
        assert!(
            cost <= rest + HEADERS_ONLY,
            "peer B's whole blob after the range made the registry send {cost} bytes (at most \
             the {rest} bytes of the pieces no peer held, plus {HEADERS_ONLY} of headers)"
        );
        assert_healthy(&mut a, "peer A at the end").await;
        assert_healthy(&mut b, "peer B at the end").await;
    })
    .await
}
