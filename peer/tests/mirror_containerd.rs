//! A real containerd pulls an umoci-built, skopeo-pushed image through the mirror with
//! `ctr images pull --hosts-dir <dir written by shoal-peer containerd-config>`, and the unpacked
//! image holds the right files; with two nodes (two peers, two containerd, one supernode) the
//! second node's pull takes no blob bytes from the registry. With only `_default/hosts.toml`
//! (`containerd-config --all-registries`), a registry that has no hosts directory of its own
//! is pulled through the mirror too.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const TOOLS: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/umoci",
    "/usr/bin/skopeo",
];

/// Writes `certs`/HOST/hosts.toml pointing containerd at `peer`'s mirror.
fn containerd_config(peer: &Peer, host: &str, certs: &Path) {
    write_hosts(peer, &["--registry", host, "--insecure"], certs);
}

/// `shoal-peer containerd-config ARGS` into `certs`, for `peer`'s mirror.
fn write_hosts(peer: &Peer, args: &[&str], certs: &Path) {
    run(Command::new(peer_bin())
        .arg("containerd-config")
        .args(args)
        .arg("--config-path")
        .arg(certs)
        .args(["--mirror", &peer.mirror_url()]));
}

/// Pulls `reference` with `containerd` off the async threads.
async fn pull(containerd: &std::sync::Arc<Containerd>, certs: &Path, reference: &str) -> String {
    let (c, certs, reference) = (
        containerd.clone(),
        certs.to_path_buf(),
        reference.to_owned(),
    );
    tokio::task::spawn_blocking(move || c.pull(&certs, &reference))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_the_mirror() {
    if !tools_present(TOOLS) {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let one = random_blob(80, 3 << 20);
        let two = random_blob(81, 2 << 20);
        let image = build_image(d, &[("one.bin", &one), ("two.bin", &two)]);
        let origin = Origin::start().await;
        push_image(
            &image,
            &format!("127.0.0.1:{}/ctr/app:t", origin.registry.port),
            None,
        );

        let host = origin.host();
        let peer = Peer::start(
            "peer",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let certs = d.join("certs.d");
        containerd_config(&peer, &host, &certs);
        let containerd = std::sync::Arc::new(Containerd::start(&d.join("containerd")).await);
        let reference = format!("{host}/ctr/app:t");
        let before = origin.egress();
        let out = pull(&containerd, &certs, &reference).await;
        eprintln!("{out}");
        let pulled = origin.egress() - before;
        let served = peer
            .metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "blob"), ("status", "200")],
            )
            .await;
        assert!(
            served >= 3.0,
            "containerd did not fetch the config and layers through the mirror ({served} blob \
             requests); pull output: {out}"
        );
        assert!(pulled >= (5 << 20), "registry sent only {pulled} bytes");

        let got = containerd.read_files(&reference, &["one.bin", "two.bin"]);
        assert!(got[0] == one, "one.bin differs after unpack");
        assert!(got[1] == two, "two.bin differs after unpack");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_node_pulls_from_the_first_not_the_registry() {
    if !tools_present(TOOLS) {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let one = random_blob(90, 4 << 20);
        let two = random_blob(91, 3 << 20);
        let three = random_blob(92, 1 << 20);
        let image = build_image(
            d,
            &[("one.bin", &one), ("two.bin", &two), ("three.bin", &three)],
        );
        let origin = Origin::start().await;
        push_image(
            &image,
            &format!("127.0.0.1:{}/two/app:t", origin.registry.port),
            None,
        );
        let host = origin.host();
        let supernode = Supernode::start().await;
        let mut nodes = vec![];
        for i in 1..=2 {
            let peer = Peer::start(
                &format!("peer{i}"),
                PeerOpts::with_supernode(&supernode)
                    .arg("--insecure-registry")
                    .arg(&host),
            )
            .await;
            let certs = d.join(format!("certs{i}"));
            containerd_config(&peer, &host, &certs);
            let containerd =
                std::sync::Arc::new(Containerd::start(&d.join(format!("containerd{i}"))).await);
            nodes.push((peer, certs, containerd));
        }
        let reference = format!("{host}/two/app:t");

        let before = origin.egress();
        let (p1, certs1, c1) = &nodes[0];
        eprintln!("{}", pull(c1, certs1, &reference).await);
        let first = origin.egress() - before;

        let before = origin.egress();
        let (p2, certs2, c2) = &nodes[1];
        eprintln!("{}", pull(c2, certs2, &reference).await);
        let second = origin.egress() - before;
        let from_origin = p2
            .metric("shoal_peer_download_bytes_total", &[("source", "origin")])
            .await;
        let from_peers = p2
            .metric("shoal_peer_download_bytes_total", &[("source", "peer")])
            .await;
        let served = p2
            .metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "blob"), ("status", "200")],
            )
            .await;
        eprintln!(
            "registry egress: node 1 pull {first} B, node 2 pull {second} B; node 2 peer: \
             {from_peers} B from peers, {from_origin} B from the registry, {served} blob \
             requests served"
        );
        assert!(first >= 8 << 20, "node 1 took only {first} registry bytes");
        assert!(
            served >= 4.0,
            "node 2's containerd did not fetch config and layers through its mirror ({served})"
        );
        assert_eq!(
            from_origin, 0.0,
            "node 2's peer downloaded blob bytes upstream"
        );
        assert!(
            from_peers >= (8 << 20) as f64,
            "node 2 got {from_peers} B from peers"
        );
        // Manifests and HEADs only: far less than one blob piece.
        assert!(
            second <= HEADERS_ONLY,
            "node 2's pull took {second} bytes from the registry"
        );
        assert!(p1.metric("shoal_peer_upload_bytes_total", &[]).await >= (8 << 20) as f64);

        let got = c2.read_files(&reference, &["one.bin", "two.bin", "three.bin"]);
        assert!(got[0] == one, "one.bin differs after unpack on node 2");
        assert!(got[1] == two, "two.bin differs after unpack on node 2");
        assert!(got[2] == three, "three.bin differs after unpack on node 2");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_registry_pulls_through_the_default_mirror() {
    if !tools_present(TOOLS) {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(240), async {
        let registry = Registry::start(RegistryAuth::Open);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (one, two) = (random_blob(510, 2 << 20), random_blob(511, 1 << 20));
        let image = build_image(d, &[("one.bin", &one), ("two.bin", &two)]);
        let host = registry.addr.clone();
        push_image(&image, &format!("{host}/app:t"), None);
        let peer = Peer::start(
            "peer-default",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let certs = d.join("certs.d");
        write_hosts(&peer, &["--all-registries"], &certs);
        assert_eq!(
            dir_entries(&certs),
            ["_default"],
            "the registry must have no hosts directory of its own"
        );

        let containerd = std::sync::Arc::new(Containerd::start(&d.join("containerd")).await);
        let reference = format!("{host}/app:t");
        let out = pull(&containerd, &certs, &reference).await;
        let got = {
            let (c, r) = (containerd.clone(), reference.clone());
            tokio::task::spawn_blocking(move || c.read_files(&r, &["one.bin", "two.bin"]))
                .await
                .unwrap()
        };
        assert!(
            got[0] == one && got[1] == two,
            "wrong files after the pull: {out}"
        );
        let mut served = Vec::new();
        for kind in ["blob", "manifest"] {
            let labels = [("kind", kind), ("status", "200")];
            served.push(
                peer.metric("shoal_peer_mirror_requests_total", &labels)
                    .await,
            );
        }
        let (blobs, manifests) = (served[0], served[1]);
        // Two layers and the config: containerd falls back to the registry itself when the
        // mirror fails or is not configured, so a bypass shows as fewer.
        assert!(
            blobs >= 3.0,
            "only {blobs} blobs came through the mirror: {out}"
        );
        assert!(manifests >= 1.0, "the manifest bypassed the mirror: {out}");
    })
    .await
}
