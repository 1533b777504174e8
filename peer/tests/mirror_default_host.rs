//! `_default` mirror: with only `_default/hosts.toml` (written by the real
//! `shoal-peer containerd-config --all-registries`), a real containerd pulls an image from a
//! registry that has no hosts directory of its own through the peer's mirror: every blob and
//! the manifest are answered 200 by the mirror, and the unpacked files are the image's.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::*;

const CONTAINERD_TOOLS: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/umoci",
    "/usr/bin/skopeo",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlisted_registry_pulls_through_the_default_mirror() {
    if !tools_present(CONTAINERD_TOOLS) {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let registry = Registry::start(RegistryAuth::Open);
        let dir = tempfile::tempdir().unwrap();
        let layers = [random_blob(510, 2 << 20), random_blob(511, 1 << 20)];
        let files = [("one.bin", &layers[0][..]), ("two.bin", &layers[1][..])];
        let image = build_image(dir.path(), &files);
        let host = registry.addr.clone();
        push_image(&image, &format!("{host}/app:t"), None);
        let peer = Peer::start(
            "peer-default",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;

        let certs = dir.path().join("certs");
        let out = Command::new(peer_bin())
            .args(["containerd-config", "--all-registries", "--mirror"])
            .arg(peer.mirror_url())
            .arg("--config-path")
            .arg(&certs)
            .output()
            .expect("run shoal-peer containerd-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            dir_entries(&certs),
            ["_default"],
            "the registry must have no hosts directory of its own"
        );

        let containerd = Arc::new(Containerd::start(&dir.path().join("containerd")).await);
        let reference = format!("{host}/app:t");
        let before = peer.metric("shoal_peer_mirror_requests_total", &[]).await;
        let pulled = {
            let (c, certs, r) = (containerd.clone(), certs.clone(), reference.clone());
            tokio::task::spawn_blocking(move || c.pull(&certs, &r))
                .await
                .unwrap()
        };
        let got = {
            let (c, r) = (containerd.clone(), reference.clone());
            tokio::task::spawn_blocking(move || c.read_files(&r, &["one.bin", "two.bin"]))
                .await
                .unwrap()
        };
        for ((name, data), got) in files.iter().zip(&got) {
            assert!(got == data, "{name} differs after the pull: {pulled}");
        }
        let after = peer.metric("shoal_peer_mirror_requests_total", &[]).await;
        let blobs = peer
            .metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "blob"), ("status", "200")],
            )
            .await;
        let manifests = peer
            .metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "manifest"), ("status", "200")],
            )
            .await;
        assert!(after > before, "the mirror saw no request: {pulled}");
        assert!(
            blobs >= files.len() as f64 + 1.0,
            "only {blobs} blobs (layers + config) came through the mirror: {pulled}"
        );
        assert!(
            manifests >= 1.0,
            "the manifest bypassed the mirror: {pulled}"
        );
    })
    .await
}
