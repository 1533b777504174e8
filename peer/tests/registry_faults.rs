//! A registry that answers 503 or resets the connection on about 10 % of requests (issue
//! 21): two fault proxies in a row in front of a real `docker-registry` (503 on a seeded ~5 %,
//! then a reset on another seeded ~5 %). A multi-blob pull through the mirror (manifest,
//! `HEAD` and `GET` of each blob, as containerd does) and a `shoal-peer get` complete and
//! verify, and the registry is asked not much more often than by the same pull without faults:
//! each failure costs one retry, not a restarted download.
//!
//! The same with a real containerd as the client (`ctr images pull`): its hosts.toml names the
//! mirror and a `server` at a closed port, so a pull that bypassed the peer (containerd falls
//! back to `server` when the mirror fails) fails instead of hiding a fault the peer let through.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_testkit::scenarios::registry_faults::{
    registry_faults, FaultyRegistry, RegistryFaultsOpts, TOOLS,
};
use shoal_testkit::Trigger;
use support::*;

/// The mirror pull and the get are [`registry_faults`], the same `shoal-bench faults`
/// measures: 5 % 503s and 5 % resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_through_503s_and_resets() {
    if !tools_present(TOOLS) {
        eprintln!("skipping: umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let outcome = registry_faults(&RegistryFaultsOpts::default()).await;
        let (clean, faulty) = (outcome.clean.total(), outcome.faulty.total());
        let faulted = outcome.faulty.faulted;
        assert_retries_bounded(clean, faulty, faulted, 3);
    })
    .await
}

/// Enough requests were faulted to prove something, and the faulty round asked the registry
/// not much more often than the clean one: each fault cost a retry, not a restarted download.
fn assert_retries_bounded(clean: u64, faulty: u64, faulted: u64, least_faulted: u64) {
    assert!(
        faulted >= least_faulted,
        "only {faulted} requests faulted: the test proves little"
    );
    assert!(
        faulty as f64 <= clean as f64 * 1.3 + 8.0,
        "{faulty} registry requests with faults against {clean} without"
    );
}

const CONTAINERD_TOOLS: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/umoci",
    "/usr/bin/skopeo",
];

/// `ctr images pull` of `app:t` from `registry` by a fresh containerd through a fresh peer,
/// the registry behind two fault proxies under `faults`; checks the unpacked files. Returns
/// the requests the registry side saw, and how many of them were faulted.
async fn containerd_pull(
    registry: &Registry,
    faults: Option<(FaultPlan, FaultPlan)>,
    files: &[(&str, &[u8])],
    dir: &Path,
    what: &str,
) -> (u64, u64) {
    let FaultyRegistry { busy, resets, peer } =
        FaultyRegistry::start(&shoal_testkit::default_bin_dir(), registry, faults, what).await;
    let host = busy.addr.clone();
    // The mirror only: `server` is a port nobody listens on.
    let certs = dir.join(format!("certs-{what}"));
    std::fs::create_dir_all(certs.join(&host)).unwrap();
    std::fs::write(
        certs.join(&host).join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            free_port(),
            peer.mirror_url()
        ),
    )
    .unwrap();
    let containerd = Arc::new(Containerd::start(&dir.join(format!("containerd-{what}"))).await);
    let reference = format!("{host}/app:t");
    let out = {
        let (c, certs, reference) = (containerd.clone(), certs.clone(), reference.clone());
        tokio::task::spawn_blocking(move || c.pull(&certs, &reference))
            .await
            .unwrap()
    };
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let got = {
        let (c, reference) = (containerd.clone(), reference.clone());
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            c.read_files(&reference, &names)
        })
        .await
        .unwrap()
    };
    for ((name, data), got) in files.iter().zip(&got) {
        assert!(
            got == data,
            "{what}: {name} differs after containerd unpacked it: {out}"
        );
    }
    let served = peer
        .metric(
            "shoal_peer_mirror_requests_total",
            &[("kind", "blob"), ("status", "200")],
        )
        .await;
    assert!(
        served >= files.len() as f64 + 1.0,
        "{what}: containerd fetched only {served} blobs through the mirror"
    );
    eprintln!(
        "{what} (containerd): {} registry requests, {} answered 503, {} reset",
        busy.requests(),
        busy.faulted(),
        resets.faulted()
    );
    (busy.requests(), busy.faulted() + resets.faulted())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_through_503s_and_resets() {
    if !tools_present(CONTAINERD_TOOLS) {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(300), async {
        let registry = Registry::start(RegistryAuth::Open);
        let dir = tempfile::tempdir().unwrap();
        let layers = [
            random_blob(410, 4 << 20),
            random_blob(411, 3 << 20),
            random_blob(412, 1 << 20),
        ];
        let files = [
            ("one.bin", &layers[0][..]),
            ("two.bin", &layers[1][..]),
            ("three.bin", &layers[2][..]),
        ];
        let image = build_image(dir.path(), &files);
        push_image(&image, &format!("{}/app:t", registry.addr), None);

        let (clean, _) = containerd_pull(&registry, None, &files, dir.path(), "clean").await;
        let share = |seed| Trigger::Share { ratio: 0.05, seed };
        let faults = (
            FaultPlan::new(Fault::Status(503), share(31)),
            FaultPlan::new(Fault::Reset, share(3100)),
        );
        let (faulty, faulted) =
            containerd_pull(&registry, Some(faults), &files, dir.path(), "faulty").await;
        assert_retries_bounded(clean, faulty, faulted, 2);
    })
    .await
}

/// A registry that rate-limits (`429` with `Retry-After: 2`) the download's length probe and
/// then one of its piece `GET`s: both are asked again once the registry's wait is over, not
/// sooner and not never; the blob arrives whole and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_waited_out_on_the_probe_and_on_pieces() {
    with_timeout(Duration::from_secs(120), async {
        let registry = Registry::start(RegistryAuth::Open);
        let data = random_blob(420, 8 << 20);
        let digest = registry.push("app", &data).await;
        // The first blob request is the probe's HEAD; the front proxy throttles it. The
        // back proxy sees the probe asked again, then throttles the first piece GET.
        let throttle = |n| FaultPlan::new(Fault::Throttle(2), Trigger::Requests(vec![n]));
        let pieces = FaultProxy::start(&registry.addr, throttle(1).on_paths("/blobs/"));
        let probe = FaultProxy::start(&pieces.addr, throttle(0).on_paths("/blobs/"));
        let peer = Peer::start(
            "peer-throttled",
            PeerOpts::embedded()
                .arg("--insecure-registry")
                .arg(&probe.addr),
        )
        .await;
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("blob");
        let started = std::time::Instant::now();
        get(
            &peer,
            &format!("{}/v2/app/blobs/{digest}", probe.url()),
            Some(&digest),
            &file,
        )
        .await
        .assert_success("a throttled download");
        let took = started.elapsed();
        assert!(
            std::fs::read(&file).unwrap() == data,
            "a throttled download wrote other bytes"
        );
        assert_eq!(
            (probe.faulted(), pieces.faulted()),
            (1, 1),
            "the probe and one piece GET were throttled"
        );
        // Two waits of 2 s, one after the other (the piece's only after the probe's).
        assert!(
            took >= Duration::from_secs(4),
            "the registry's Retry-After was not waited out: done in {took:?}"
        );
        assert!(
            took < Duration::from_secs(30),
            "a 2 s Retry-After held the download for {took:?}"
        );
    })
    .await
}
