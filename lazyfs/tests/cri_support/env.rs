//! One test's world: a real `docker-registry`, a [`CountingProxy`] in front of it (images
//! are named with its address, so every byte the registry sends is counted; its gate can take
//! the registry down at an exact moment), a real
//! `shoal-peer` whose upstream is the proxy, optionally `shoal-lazyfs snapshotter`, and
//! containerd with the CRI plugin using the peer as its only mirror; a CRI client on it.
//!
//! Failure messages carry the logs' tails ([`CriEnv::diag`]); dropping the environment
//! removes pods and containers through CRI (best effort), then stops everything in order
//! and detaches every mount it made.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::client::Cri;
use super::containerd::{Containerd, ContainerdOptions};
use super::image::{BusyboxImage, OciImage};
use super::snapshotter::{Snapshotter, SnapshotterOptions};
use super::tail;
use crate::mount_support::{CountingProxy, PeerProc, Registry, RegistryAuth};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotterKind {
    /// containerd's built-in overlayfs snapshotter.
    Overlayfs,
    /// `shoal-lazyfs snapshotter` as `[proxy_plugins.shoal]`.
    Shoal,
}

impl SnapshotterKind {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotterKind::Overlayfs => "overlayfs",
            SnapshotterKind::Shoal => "shoal",
        }
    }
}

/// The repository and tag of the sandbox ("pause") image in the test registry.
pub const SANDBOX_REPO_TAG: &str = "shoal-test/pause:1";

pub struct CriEnv {
    // Dropped in this order (after `Drop::drop` removed the pods).
    pub cri: Cri,
    pub containerd: Containerd,
    pub snapshotter: Option<Snapshotter>,
    pub peer: PeerProc,
    pub proxy: CountingProxy,
    pub registry: Registry,
    /// `HOST:PORT` images are named with: the counting proxy in front of the registry.
    pub host: String,
    /// The sandbox image's reference.
    pub sandbox_image: String,
    pub tmp: tempfile::TempDir,
}

impl CriEnv {
    /// Starts registry, proxy, peer, (snapshotter), containerd; pushes the sandbox image.
    pub fn start(kind: SnapshotterKind) -> CriEnv {
        Self::start_with(kind, &SnapshotterOptions::default())
    }

    /// [`CriEnv::start`] with settings for the shoal snapshotter.
    pub fn start_with(kind: SnapshotterKind, opts: &SnapshotterOptions) -> CriEnv {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-cri-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let registry = Registry::start_in(&dir, RegistryAuth::Open);
        let proxy = CountingProxy::start(&registry.addr);
        let host = proxy.addr.clone();
        let sandbox_image = format!("{host}/{SANDBOX_REPO_TAG}");
        BusyboxImage::new(&["/bin/sleep", "3600"])
            .build(&dir, "pause")
            .push(&format!("{}/{SANDBOX_REPO_TAG}", registry.addr));
        let peer = PeerProc::start(&dir, &host);
        let snapshotter = (kind == SnapshotterKind::Shoal)
            .then(|| Snapshotter::start(&dir, &peer.mirror, &host, opts));
        let containerd = Containerd::start(
            &dir.join("containerd"),
            ContainerdOptions {
                snapshotter: kind.name().into(),
                proxy_socket: snapshotter.as_ref().map(|s| s.sock.clone()),
                sandbox_image: sandbox_image.clone(),
                registry_host: host.clone(),
                mirror: peer.mirror.clone(),
            },
        );
        let cri = match Cri::connect(&containerd.sock, Duration::from_secs(90)) {
            Ok(c) => c,
            Err(e) => panic!("{e:#}\n{}", containerd.log_tail(60)),
        };
        CriEnv {
            cri,
            containerd,
            snapshotter,
            peer,
            proxy,
            registry,
            host,
            sandbox_image,
            tmp,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    /// `HOST/REPO:TAG` as containerd pulls it (through the peer, then the proxy).
    pub fn image_ref(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }

    /// Builds `image` and pushes it straight to the registry (not counted by the proxy);
    /// returns its reference as containerd names it.
    pub fn build_and_push(&self, image: &BusyboxImage, repo_tag: &str) -> (OciImage, String) {
        let oci = image.build(self.tmp.path(), &repo_tag.replace(['/', ':'], "-"));
        oci.push(&format!("{}/{repo_tag}", self.registry.addr));
        (oci, self.image_ref(repo_tag))
    }

    /// The directory the CRI snapshotter keeps its snapshots in.
    pub fn snapshotter_root(&self) -> PathBuf {
        match &self.snapshotter {
            Some(s) => s.root.clone(),
            None => self.containerd.overlayfs_root(),
        }
    }

    /// The logs' tails: containerd, snapshotter, peer.
    pub fn diag(&self) -> String {
        let mut s = self.containerd.log_tail(40);
        if let Some(sn) = &self.snapshotter {
            s.push('\n');
            s.push_str(&sn.log_tail(40));
            s.push('\n');
            s.push_str(&sn.mount_log_tails(10));
        }
        s.push('\n');
        s.push_str(&tail(self.peer.proc_.log_path(), 20));
        s
    }

    /// The value, or a panic naming `what` with the error and the logs' tails.
    pub fn ok<T>(&self, r: Result<T>, what: &str) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e:#}\n{}", self.diag()),
        }
    }

    /// Panics with `msg` and the logs' tails unless `cond`.
    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            panic!("{}\n{}", msg(), self.diag());
        }
    }

    /// Polls `f` every 250 ms until it gives Some, for up to `limit`; panics with `what`,
    /// the last state `describe` gives and the logs otherwise.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Option<T>,
        describe: impl Fn() -> String,
    ) -> T {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{what}: not within {limit:?}; last state:\n{}\n{}",
                    describe(),
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        self.cri.remove_everything(Duration::from_secs(60));
    }
}
