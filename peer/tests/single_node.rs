//! The simplest setup: one `shoal-peer run` with its embedded supernode, only a data dir and
//! ports, serves `shoal-peer get` end to end, and serves repeats from its cache.

mod support;

use std::time::Duration;

use support::*;

const BLOB: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_get_and_cache_hit() {
    with_timeout(Duration::from_secs(180), async {
        let origin = Origin::start().await;
        let (digest, url) = origin.push("single/app", &random_blob(30, BLOB)).await;
        let peer = Peer::start("peer", PeerOpts::embedded()).await;
        let out = tempfile::tempdir().unwrap();

        let first = out.path().join("first");
        get(&peer, &url, Some(&digest), &first)
            .await
            .assert_success("first get");
        assert_file_digest(&first, &digest);
        let cost = origin.egress();
        assert!(
            cost >= BLOB as u64,
            "the first get took only {cost} origin bytes for a {BLOB}-byte blob"
        );

        let second = out.path().join("second");
        get(&peer, &url, Some(&digest), &second)
            .await
            .assert_success("second get");
        assert_file_digest(&second, &digest);
        let cost = origin.egress() - cost;
        assert!(
            cost <= HEADERS_ONLY,
            "the second get of a cached blob took {cost} origin bytes"
        );
        let origin_bytes = peer
            .metric("shoal_peer_download_bytes_total", &[("source", "origin")])
            .await;
        assert!(
            origin_bytes >= BLOB as f64 && origin_bytes <= (BLOB * 11 / 10) as f64,
            "shoal_peer_download_bytes_total{{source=\"origin\"}} is {origin_bytes} after \
             fetching one {BLOB}-byte blob twice"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_get_without_digest() {
    with_timeout(Duration::from_secs(180), async {
        let origin = Origin::start().await;
        let (digest, url) = origin.push("single/app", &random_blob(31, BLOB)).await;
        let peer = Peer::start("peer", PeerOpts::embedded()).await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("blob");
        get(&peer, &url, None, &file)
            .await
            .assert_success("get without --digest");
        assert_file_digest(&file, &digest);
    })
    .await
}

/// The metrics helper the end-to-end tests rely on.
#[test]
fn metric_parser_reads_prometheus_text() {
    let text = "# HELP x_total help\n# TYPE x_total counter\n\
                x_total{source=\"peer\",a=\"b, c\"} 10\n\
                x_total{source=\"origin\"} 5 1700000000\n\
                y_bytes 7\n";
    assert_eq!(metric_value(text, "x_total", &[("source", "peer")]), 10.0);
    assert_eq!(metric_value(text, "x_total", &[("source", "origin")]), 5.0);
    assert_eq!(metric_value(text, "x_total", &[]), 15.0);
    assert_eq!(metric_value(text, "x_total", &[("source", "none")]), 0.0);
    assert_eq!(metric_value(text, "y_bytes", &[]), 7.0);
    assert_eq!(metric_value(text, "x", &[]), 0.0);
}
