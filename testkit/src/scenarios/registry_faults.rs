//! A registry that answers 503 or resets the connection on about 10 % of requests (issue 21):
//! two fault proxies in a row in front of a real `docker-registry` (503 on a seeded share,
//! then a reset on another seeded share). Two clients go through a fresh peer: a multi-blob
//! pull through the mirror (manifest, `HEAD` and `GET` of each blob, as containerd does) and a
//! `shoal-peer get`. Both must complete with the right bytes; the figure is how often the
//! registry was asked, against the same pull without faults: each failure should cost one
//! retry, not a restarted download.

use std::path::{Path, PathBuf};

use shoal_common::Digest;

use crate::get::get;
use crate::image::{build_image, fetch, manifest_blobs, push_image, MANIFEST_ACCEPT};
use crate::origin::Push;
use crate::shoal::{Peer, PeerOpts};
use crate::{default_bin_dir, http, random_blob, scratch};
use crate::{Fault, FaultPlan, FaultProxy, Registry, RegistryAuth, Trigger};

/// The programs this scenario needs to build and push its image.
pub const TOOLS: &[&str] = &["/usr/bin/umoci", "/usr/bin/skopeo"];

#[derive(Clone, Debug)]
pub struct RegistryFaultsOpts {
    pub bin_dir: PathBuf,
    /// Share of requests answered 503 by the first proxy, and reset by the second.
    pub share: f64,
    /// Added to the fault proxies' seeds (each benchmark run may fault other requests).
    pub seed: u64,
    /// Layers of the pulled image beyond the first three (1 MiB each): a 10 % fault share
    /// of the CI image's ~25 requests is two or three faults, too few for a ratio; the
    /// benchmark adds layers until the share is measured on enough requests.
    pub extra_layers: usize,
}

impl Default for RegistryFaultsOpts {
    /// The CI test's: 5 % + 5 %, seeds 21 and 2100.
    fn default() -> Self {
        RegistryFaultsOpts {
            bin_dir: default_bin_dir(),
            share: 0.05,
            seed: 0,
            extra_layers: 0,
        }
    }
}

/// What the registry side saw for one round of both clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestCounts {
    /// Requests while the mirror pull ran (manifest, blob `HEAD`s and `GET`s).
    pub pull: u64,
    /// Requests while `shoal-peer get` ran.
    pub get: u64,
    /// Of all of them, how many were answered 503 or reset.
    pub faulted: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.pull + self.get
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RegistryFaultsOutcome {
    pub clean: RequestCounts,
    pub faulty: RequestCounts,
}

/// The image both rounds pull: its manifest, its blobs, and a further blob for the get.
struct Image {
    manifest: Vec<u8>,
    blobs: Vec<(Digest, Vec<u8>)>,
    get_blob: (Digest, Vec<u8>),
}

/// Builds and pushes the image, then pulls it through a fresh peer without faults and again
/// with them.
pub async fn registry_faults(opts: &RegistryFaultsOpts) -> RegistryFaultsOutcome {
    let registry = Registry::start(RegistryAuth::Open);
    let dir = scratch::tempdir();
    let image = push_test_image(&registry, dir.path(), opts.extra_layers).await;

    let clean = pull(opts, &registry, None, &image, "clean").await;
    let share = |seed| Trigger::Share {
        ratio: opts.share,
        seed: opts.seed + seed,
    };
    let faults = (
        FaultPlan::new(Fault::Status(503), share(21)),
        FaultPlan::new(Fault::Reset, share(2100)),
    );
    let faulty = pull(opts, &registry, Some(faults), &image, "faulty").await;
    RegistryFaultsOutcome { clean, faulty }
}

/// An image of three layers (5 MiB, 3 MiB, 700 KiB) and `extra` more (1 MiB each), built
/// with umoci and pushed with skopeo as `app:t`, read back straight from the registry, plus a
/// blob pushed alone for `shoal-peer get`.
async fn push_test_image(registry: &Registry, dir: &Path, extra: usize) -> Image {
    let mut files = vec![
        ("one.bin".to_owned(), random_blob(400, 5 << 20)),
        ("two.bin".to_owned(), random_blob(401, 3 << 20)),
        ("three.bin".to_owned(), random_blob(402, 700 << 10)),
    ];
    files.extend((0..extra).map(|i| {
        (
            format!("extra{i}.bin"),
            random_blob(500 + i as u64, 1 << 20),
        )
    }));
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    let image = build_image(dir, &files);
    push_image(&image, &format!("{}/app:t", registry.addr), None);
    let m = fetch(
        &format!("{}/v2/app/manifests/t", registry.url()),
        None,
        Some(MANIFEST_ACCEPT),
    )
    .await;
    assert_eq!(m.status, 200, "manifest straight from the registry");
    let manifest = m.body.expect("manifest body");
    let mut blobs = vec![];
    for d in manifest_blobs(&manifest) {
        let b = fetch(&format!("{}/v2/app/blobs/{d}", registry.url()), None, None).await;
        assert_eq!(b.status, 200);
        blobs.push((d, b.body.expect("blob body")));
    }
    let extra = random_blob(403, 6 << 20);
    let get_blob = (registry.push("app", &extra).await, extra);
    Image {
        manifest,
        blobs,
        get_blob,
    }
}

/// A fresh peer whose registry is `registry` behind two fault proxies in a row.
pub struct FaultyRegistry {
    /// The first proxy (the peer's registry host): 503s; its request count is what the
    /// registry side saw.
    pub busy: FaultProxy,
    /// The second proxy: resets.
    pub resets: FaultProxy,
    pub peer: Peer,
}

impl FaultyRegistry {
    /// `faults` is (the 503 plan, the reset plan); `None`: both transparent. The peer, from
    /// `bin_dir`, is named `peer-WHAT`.
    pub async fn start(
        bin_dir: &Path,
        registry: &Registry,
        faults: Option<(FaultPlan, FaultPlan)>,
        what: &str,
    ) -> FaultyRegistry {
        let (first, second) = faults.unwrap_or((FaultPlan::none(), FaultPlan::none()));
        let resets = FaultProxy::start(&registry.addr, second);
        let busy = FaultProxy::start(&resets.addr, first);
        let peer = Peer::start(
            &format!("peer-{what}"),
            PeerOpts::embedded()
                .bin_dir(bin_dir)
                .arg("--insecure-registry")
                .arg(&busy.addr),
        )
        .await;
        FaultyRegistry { busy, resets, peer }
    }
}

/// The pull and the get, once, through a fresh peer whose registry is `registry` behind two
/// fault proxies under `faults` (503s, resets).
async fn pull(
    opts: &RegistryFaultsOpts,
    registry: &Registry,
    faults: Option<(FaultPlan, FaultPlan)>,
    image: &Image,
    what: &str,
) -> RequestCounts {
    let FaultyRegistry { busy, resets, peer } =
        FaultyRegistry::start(&opts.bin_dir, registry, faults, what).await;
    let host = busy.addr.clone();
    let base = format!("{}/v2/app", peer.mirror_url());
    let ns = format!("ns={host}");

    fetch(
        &format!("{base}/manifests/t?{ns}"),
        None,
        Some(MANIFEST_ACCEPT),
    )
    .await
    .assert_bytes(&image.manifest, &format!("{what}: manifest"));
    for (d, data) in &image.blobs {
        let url = format!("{base}/blobs/{d}?{ns}");
        let head = http().head(&url).send().await.expect("HEAD blob");
        assert_eq!(head.status().as_u16(), 200, "{what}: HEAD {d}");
        let length = head
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            length,
            Some(data.len().to_string()),
            "{what}: HEAD {d} length"
        );
        fetch(&url, None, None)
            .await
            .assert_bytes(data, &format!("{what}: blob {d}"));
    }
    let pull = busy.requests();

    let (digest, data) = &image.get_blob;
    let out = scratch::tempdir();
    let file = out.path().join("blob");
    let url = format!("{}/v2/app/blobs/{digest}", busy.url());
    get(&peer, &url, Some(digest), &file)
        .await
        .assert_success(&format!("{what}: shoal-peer get"));
    assert!(
        std::fs::read(&file).expect("read the get's output") == *data,
        "{what}: shoal-peer get wrote other bytes"
    );
    eprintln!(
        "{what}: {} registry requests, {} answered 503, {} reset",
        busy.requests(),
        busy.faulted(),
        resets.faulted()
    );
    RequestCounts {
        pull,
        get: busy.requests() - pull,
        faulted: busy.faulted() + resets.faulted(),
    }
}
