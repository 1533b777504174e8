//! The registry mirror against a real `docker-registry`: an image of several layers pushed as
//! raw blobs plus a hand-written manifest is pulled through the mirror byte for byte, a second
//! peer pulls the same blobs without registry bytes, and bad requests get OCI errors.

mod support;

use std::time::Duration;

use shoal_common::Digest;
use support::*;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

struct Image {
    repo: String,
    layers: Vec<(Digest, Vec<u8>)>,
    manifest: Vec<u8>,
    manifest_digest: Digest,
}

/// Pushes config + `sizes.len()` layers and a manifest tagged `tag`.
async fn push_image(origin: &Origin, repo: &str, tag: &str, seed: u64, sizes: &[usize]) -> Image {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = origin.registry.push(repo, config).await;
    let mut layers = vec![];
    for (i, size) in sizes.iter().enumerate() {
        let data = random_blob(seed + i as u64, *size);
        let d = origin.registry.push(repo, &data).await;
        layers.push((d, data));
    }
    let layer_json: Vec<_> = layers
        .iter()
        .map(|(d, data)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(),
                "size": data.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layer_json,
    }))
    .unwrap();
    let resp = http()
        .put(format!(
            "http://127.0.0.1:{}/v2/{repo}/manifests/{tag}",
            origin.registry.port
        ))
        .header("content-type", MANIFEST_TYPE)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "manifest push: {resp:?}");
    Image {
        repo: repo.into(),
        manifest_digest: Digest::of(&manifest),
        layers,
        manifest,
    }
}

fn mirror_opts(opts: PeerOpts, origin: &Origin) -> PeerOpts {
    opts.arg("--insecure-registry")
        .arg(format!("127.0.0.1:{}", origin.proxy.port))
}

fn ns(origin: &Origin) -> String {
    format!("ns=127.0.0.1:{}", origin.proxy.port)
}

async fn get_bytes(url: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// Asserts an OCI error body with `code` and returns the status.
async fn oci_error(resp: reqwest::Response, code: &str) -> u16 {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("OCI error body is JSON");
    assert_eq!(
        body["errors"][0]["code"].as_str(),
        Some(code),
        "status {status}, body {body}"
    );
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_pulls_image_and_second_peer_uses_p2p() {
    with_timeout(Duration::from_secs(240), async {
        let origin = Origin::start().await;
        let image = push_image(
            &origin,
            "mirror/app",
            "v1",
            40,
            &[3 << 20, 2 << 20, 1 << 20],
        )
        .await;
        let supernode = Supernode::start().await;
        let p1 = Peer::start(
            "peer1",
            mirror_opts(PeerOpts::with_supernode(&supernode), &origin),
        )
        .await;
        let p2 = Peer::start(
            "peer2",
            mirror_opts(PeerOpts::with_supernode(&supernode), &origin),
        )
        .await;
        let ns = ns(&origin);

        // Base endpoint.
        let (status, _, body) = get_bytes(&format!("{}/v2/", p1.mirror_url()), None).await;
        assert_eq!(status, 200);
        assert_eq!(body, b"{}");

        // Manifest by tag and by digest: the registry's bytes, type and digest.
        for reference in ["v1".to_owned(), image.manifest_digest.to_string()] {
            let url = format!(
                "{}/v2/{}/manifests/{reference}?{ns}",
                p1.mirror_url(),
                image.repo
            );
            let resp = http()
                .get(&url)
                .header("accept", MANIFEST_TYPE)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200, "GET {url}");
            assert_eq!(resp.headers()["content-type"], MANIFEST_TYPE);
            assert_eq!(
                resp.headers()["docker-content-digest"],
                image.manifest_digest.to_string().as_str()
            );
            assert_eq!(resp.bytes().await.unwrap().to_vec(), image.manifest);
            let head = http()
                .head(&url)
                .header("accept", MANIFEST_TYPE)
                .send()
                .await
                .unwrap();
            assert_eq!(head.status().as_u16(), 200, "HEAD {url}");
        }

        // Blobs through the first peer: equal bytes; HEAD; Range.
        for (d, data) in &image.layers {
            let url = format!("{}/v2/{}/blobs/{d}?{ns}", p1.mirror_url(), image.repo);
            let head = http().head(&url).send().await.unwrap();
            assert_eq!(head.status().as_u16(), 200);
            assert_eq!(
                head.headers()["content-length"],
                data.len().to_string().as_str()
            );
            let (status, headers, body) = get_bytes(&url, None).await;
            assert_eq!(status, 200, "GET {url}");
            assert_eq!(headers["docker-content-digest"], d.to_string().as_str());
            assert_eq!(headers["content-length"], data.len().to_string().as_str());
            assert!(body == *data, "blob {d} differs from the registry's");
            let (status, headers, body) = get_bytes(&url, Some("bytes=1000-200000")).await;
            assert_eq!(status, 206);
            assert_eq!(
                headers["content-range"],
                format!("bytes 1000-200000/{}", data.len()).as_str()
            );
            assert!(body == data[1000..=200000], "range of {d} differs");
            let (status, _, body) = get_bytes(&url, Some("bytes=-10")).await;
            assert_eq!(status, 206);
            assert_eq!(body, data[data.len() - 10..]);
        }
        assert!(
            p1.metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "blob"), ("status", "200")]
            )
            .await
                >= 3.0
        );
        assert!(
            p1.metric(
                "shoal_peer_upstream_requests_total",
                &[("kind", "manifest")]
            )
            .await
                >= 2.0
        );

        // The second peer gets the blobs from the first: no blob bytes from the registry.
        let before = origin.egress();
        for (d, data) in &image.layers {
            let url = format!("{}/v2/{}/blobs/{d}?{ns}", p2.mirror_url(), image.repo);
            let (status, _, body) = get_bytes(&url, None).await;
            assert_eq!(status, 200, "GET {url}");
            assert!(body == *data, "blob {d} via peer2 differs");
        }
        let cost = origin.egress() - before;
        assert!(
            cost <= HEADERS_ONLY,
            "the second peer's pull took {cost} registry bytes"
        );
        let from_peers = p2
            .metric("shoal_peer_download_bytes_total", &[("source", "peer")])
            .await;
        assert!(
            from_peers >= (6 << 20) as f64,
            "peer2 got {from_peers} B from peers"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_rejects_bad_requests_with_oci_errors() {
    with_timeout(Duration::from_secs(180), async {
        let origin = Origin::start().await;
        let image = push_image(&origin, "bad/app", "v1", 50, &[256 << 10]).await;
        let peer = Peer::start("peer", mirror_opts(PeerOpts::embedded(), &origin)).await;
        let base = peer.mirror_url();
        let ns = ns(&origin);
        let c = http();
        let (good, _) = &image.layers[0];

        let cases: Vec<(reqwest::Method, String, u16, &str)> = vec![
            (
                reqwest::Method::GET,
                format!("/v2/Bad_Name/manifests/v1?{ns}"),
                400,
                "NAME_INVALID",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/a//b/blobs/{good}?{ns}"),
                400,
                "NAME_INVALID",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/blobs/sha256:xyz?{ns}"),
                400,
                "DIGEST_INVALID",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/blobs/md5:abcd?{ns}"),
                400,
                "DIGEST_INVALID",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/manifests/sha256:00?{ns}"),
                400,
                "DIGEST_INVALID",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/manifests/nope?{ns}"),
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/blobs/{}?{ns}", Digest::of(b"absent")),
                404,
                "BLOB_UNKNOWN",
            ),
            (
                reqwest::Method::POST,
                format!("/v2/bad/app/blobs/uploads/?{ns}"),
                405,
                "UNSUPPORTED",
            ),
            (
                reqwest::Method::PUT,
                format!("/v2/bad/app/manifests/v1?{ns}"),
                405,
                "UNSUPPORTED",
            ),
            (
                reqwest::Method::DELETE,
                format!("/v2/bad/app/blobs/{good}?{ns}"),
                405,
                "UNSUPPORTED",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/blobs/{good}?ns=127.0.0.1:{}", free_port()),
                502,
                "UNAVAILABLE",
            ),
            (
                reqwest::Method::GET,
                format!("/v2/bad/app/manifests/v1?ns=127.0.0.1:{}", free_port()),
                502,
                "UNAVAILABLE",
            ),
        ];
        for (method, path, status, code) in cases {
            let resp = c
                .request(method.clone(), format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            let got = oci_error(resp, code).await;
            assert_eq!(got, status, "{method} {path}");
        }
        let url = format!("{base}/v2/bad/app/blobs/{good}?{ns}");
        let resp = c
            .get(&url)
            .header("range", "bytes=9999999-")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 416);
        let resp = c
            .get(&url)
            .header("range", "bytes=abc")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        peer.metric("shoal_peer_mirror_requests_total", &[]).await;
        let mut peer = peer;
        peer.assert_running();
    })
    .await
}
