//! One node of `shoal-bench lazy-pod` (see `lazy_pod`): in the node's network namespace a
//! `shoal-peer` (containerd's only registry mirror), for lazy runs `shoal-lazyfs
//! snapshotter`, and containerd 1.6 with its CRI plugin configured as in the CRI test kit
//! (lazyfs/tests/cri_support/containerd.rs); a pod is then started the way kubelet starts
//! it, through CRI.
//!
//! Everything runs under `nsenter --net=`, so it shares the host's mount namespace: the
//! snapshotter's lazy FUSE mounts, containerd's overlays over them and the runc shims must
//! all see the same mounts (`ip netns exec` would give each its own mount namespace).
//! Pods use the host network, which here is the node's namespace, so a container's reads
//! go through the node's mount, peer and shaped link.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::ContainerState;

use crate::cri_client::{log_text, Cri, Sandbox};
use crate::cri_config;
use crate::internal::http_text_in;
use crate::lazy_cluster::Bins;
use crate::lazyfs_env::{nsenter, wait_http, MountSweep};
use crate::netns::Host;
use crate::processes::{self, Daemon, Daemons};
use crate::stats::{prom_sum, PeerBytes};

const PEER_MIRROR: &str = "http://127.0.0.1:65001";
const PEER_METRICS: &str = "http://127.0.0.1:65003";
/// The snapshotter's `/metrics` (its own and its mounts'), on the node's loopback.
const SNAPSHOTTER_METRICS: &str = "127.0.0.1:9102";
/// containerd's fallback `server` for the registry: a closed port on the node's loopback,
/// so a pull that bypassed the peer fails instead of quietly going to the origin.
const CLOSED_SERVER: &str = "http://127.0.0.1:9";
/// Longest wait for a daemon's socket or for CRI to answer.
const START_LIMIT: Duration = Duration::from_secs(90);

/// Which snapshotter containerd's CRI plugin uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotterKind {
    /// containerd's own: layers are downloaded and unpacked.
    Overlayfs,
    /// `shoal-lazyfs snapshotter` as `[proxy_plugins.shoal]`.
    Shoal,
}

/// What a node needs to know of the run.
pub(crate) struct NodeSetup<'a> {
    pub(crate) host: &'a Host,
    pub(crate) name: &'a str,
    /// The node's directory (peer data, snapshotter, containerd, pod logs).
    pub(crate) dir: PathBuf,
    pub(crate) logs: &'a Path,
    pub(crate) bins: &'a Bins,
    /// `HOST:PORT` of the origin's registry, as images are named.
    pub(crate) registry_host: &'a str,
    pub(crate) supernode_url: &'a str,
    pub(crate) sandbox_image: &'a str,
    pub(crate) snapshotter: SnapshotterKind,
    pub(crate) peer_args: &'a [String],
    pub(crate) snapshotter_args: &'a [String],
}

/// A CRI client on a blocking thread. `Cri` runs its calls on a runtime of its own, which
/// may neither be driven nor dropped on the benchmark's async threads: each call moves it
/// to a blocking thread and back, and dropping the session removes every pod from a plain
/// thread.
pub(crate) struct CriSession(Option<Cri>);

impl CriSession {
    async fn connect(sock: PathBuf) -> Result<CriSession> {
        let cri = tokio::task::spawn_blocking(move || Cri::connect(&sock, START_LIMIT))
            .await
            .context("the CRI connect task panicked")??;
        Ok(CriSession(Some(cri)))
    }

    async fn with<R, F>(&mut self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Cri) -> Result<R> + Send + 'static,
    {
        let cri = self
            .0
            .take()
            .context("the CRI client was lost by a failed call")?;
        let (cri, r) = tokio::task::spawn_blocking(move || {
            let r = f(&cri);
            (cri, r)
        })
        .await
        .context("a CRI task panicked")?;
        self.0 = Some(cri);
        r
    }
}

impl Drop for CriSession {
    fn drop(&mut self) {
        if let Some(cri) = self.0.take() {
            // Containers and sandboxes first, so that containerd unmounts their roots and
            // removes their cgroups before it is stopped.
            let _ =
                std::thread::spawn(move || cri.remove_everything(Duration::from_secs(60))).join();
        }
    }
}

/// A pod's container from PullImage to its exit, seconds since PullImage was called.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct PodTimes {
    pub(crate) pull_s: f64,
    pub(crate) created_s: f64,
    pub(crate) started_s: f64,
    /// containerd's record of the process's exit (`finished_at`), not when a poll saw it.
    pub(crate) exited_s: f64,
}

/// A node's daemons. Fields drop in declaration order, which is the teardown order: pods,
/// containerd, snapshotter, peer, then every mount left under the node's directory (lazy
/// mounts outlive the snapshotter by design; detaching one ends its process).
pub(crate) struct Node {
    cri: CriSession,
    containerd: Daemons,
    snapshotter: Daemons,
    peer: Daemons,
    _sweep: MountSweep,
    sandbox: Sandbox,
    pub(crate) dir: PathBuf,
}

impl Node {
    /// Starts peer, snapshotter (lazy runs) and containerd, and runs the pod sandbox (which
    /// pulls the sandbox image), so that only the pod's own image is measured afterwards.
    pub(crate) async fn start(s: NodeSetup<'_>) -> Result<Node> {
        let ns = s.host.ns.name();
        std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
        let sweep = MountSweep(s.dir.clone());
        let log = |what: &str| s.logs.join(format!("{}-{what}.log", s.name));

        let mut peer = Daemons::default();
        let mut c = nsenter(ns, &s.bins.peer);
        c.arg("run")
            .args(["--supernode", s.supernode_url, "--data-dir"])
            .arg(s.dir.join("peer"))
            .args(["--cache-size", "8GiB", "--advertise-addr"])
            .arg(s.host.ip.to_string())
            .args(["--peer-id", &format!("shb-{}", s.name)])
            .args(["--insecure-registry", s.registry_host])
            .args(s.peer_args);
        peer.push(Daemon::spawn("shoal-peer", c, &log("peer"))?);
        wait_http(
            ns,
            &format!("{PEER_METRICS}/readyz"),
            &mut peer,
            "shoal-peer",
        )
        .await?;

        let mut snapshotter = Daemons::default();
        let proxy_socket = match s.snapshotter {
            SnapshotterKind::Overlayfs => None,
            SnapshotterKind::Shoal => {
                let sock = s.dir.join("shoal.sock");
                let mut c = nsenter(ns, &s.bins.lazyfs);
                c.arg("snapshotter")
                    .arg("--address")
                    .arg(&sock)
                    .arg("--root")
                    .arg(s.dir.join("shoal"))
                    .args(["--peer", PEER_MIRROR, "--cache-dir"])
                    .arg(s.dir.join("shoal-cache"))
                    .args(["--insecure-registry", s.registry_host])
                    .args(["--metrics-listen", SNAPSHOTTER_METRICS])
                    .args(s.snapshotter_args);
                snapshotter.push(Daemon::spawn(
                    "shoal-lazyfs snapshotter",
                    c,
                    &log("snapshotter"),
                )?);
                wait_for_path(&sock, &mut snapshotter, "the snapshotter's socket").await?;
                Some(sock)
            }
        };

        let containerd_dir = s.dir.join("containerd");
        let sock = containerd_dir.join("sock");
        let config = write_containerd_config(&containerd_dir, &sock, &s, proxy_socket.as_deref())?;
        let mut containerd = Daemons::default();
        let mut c = nsenter(ns, "containerd");
        c.arg("--config").arg(&config);
        containerd.push(Daemon::spawn("containerd", c, &log("containerd"))?);
        wait_for_path(&sock, &mut containerd, "containerd's socket").await?;
        let mut cri = CriSession::connect(sock).await?;

        let pod_dir = s.dir.join("pod");
        let name = s.name.to_owned();
        let sandbox = cri
            .with(move |c| c.run_pod_sandbox(&name, &pod_dir))
            .await
            .with_context(|| {
                format!(
                    "RunPodSandbox on {}; containerd:\n{}",
                    s.name,
                    processes::log_tail(&log("containerd"), 15)
                )
            })?;
        Ok(Node {
            cri,
            containerd,
            snapshotter,
            peer,
            _sweep: sweep,
            sandbox,
            dir: s.dir,
        })
    }

    /// PullImage, CreateContainer, StartContainer, then ContainerStatus until the container
    /// exited (polled every 20 ms; the exit time is containerd's own record). Fails unless it
    /// exited 0 having printed `shoal-startup-bytes EXPECT`.
    pub(crate) async fn run_pod(
        &mut self,
        image: &str,
        expect_bytes: u64,
        timeout: Duration,
    ) -> Result<PodTimes> {
        self.check_alive()?;
        let (sandbox, image) = (self.sandbox.clone(), image.to_owned());
        let r = self
            .cri
            .with(move |cri| timed_pod(cri, &sandbox, &image, expect_bytes, timeout))
            .await;
        r.map_err(|e| {
            let tail = |d: &Daemons| {
                d.0.first()
                    .map(|d| format!("{}:\n{}", d.log.display(), processes::log_tail(&d.log, 12)))
                    .unwrap_or_default()
            };
            e.context(format!(
                "{}\n{}",
                tail(&self.containerd),
                tail(&self.snapshotter)
            ))
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        self.peer.check_alive()?;
        self.snapshotter.check_alive()?;
        self.containerd.check_alive()
    }

    /// The node's peer counters (bytes from the origin, from peers, uploaded).
    pub(crate) async fn peer_bytes(&self, host: &Host) -> PeerBytes {
        http_text_in(&host.ns, &format!("{PEER_METRICS}/metrics"))
            .await
            .map(|t| PeerBytes::from_metrics(&t))
            .unwrap_or_default()
    }

    /// Compressed chunk bytes and range requests the node's lazy mounts fetched.
    pub(crate) async fn mount_fetches(&self, host: &Host) -> Option<(u64, u64)> {
        if self.snapshotter.0.is_empty() {
            return None;
        }
        let text = http_text_in(&host.ns, &format!("http://{SNAPSHOTTER_METRICS}/metrics"))
            .await
            .ok()?;
        Some((
            prom_sum(&text, "shoal_lazyfs_fetch_bytes_total", &[]) as u64,
            prom_sum(&text, "shoal_lazyfs_fetch_requests_total", &[]) as u64,
        ))
    }
}

/// The timed part of [`Node::run_pod`], on the CRI client's thread.
fn timed_pod(
    cri: &Cri,
    sandbox: &Sandbox,
    image: &str,
    expect_bytes: u64,
    timeout: Duration,
) -> Result<PodTimes> {
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    cri.pull_image(image)?;
    let pull_s = t0.elapsed().as_secs_f64();
    let id = cri.create_container(sandbox, image, "main", "main.log", None, None)?;
    let created_s = t0.elapsed().as_secs_f64();
    cri.start_container(&id)?;
    let started_s = t0.elapsed().as_secs_f64();
    let status = loop {
        let st = cri.container_status(&id)?;
        if st.state == ContainerState::ContainerExited as i32 {
            break st;
        }
        if t0.elapsed() > timeout {
            bail!("the container has not exited within {timeout:?}: {st:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let polled_s = t0.elapsed().as_secs_f64();
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let finished = Duration::from_nanos(u64::try_from(status.finished_at).unwrap_or(0));
    // Both are the machine's wall clock; the poll's time stands in for a missing or odd
    // record.
    let exited_s = finished
        .checked_sub(since_epoch(wall0))
        .map(|d| d.as_secs_f64())
        .filter(|&s| s > 0.0 && s <= polled_s + 0.01)
        .unwrap_or(polled_s);
    let log = log_text(&sandbox.log_dir.join("main.log")).unwrap_or_default();
    if status.exit_code != 0 {
        bail!(
            "the container exited with {} ({}): {log}",
            status.exit_code,
            status.reason
        );
    }
    let want = format!("shoal-startup-bytes {expect_bytes}");
    if log.trim() != want {
        bail!("the container printed {log:?}, not {want:?}");
    }
    Ok(PodTimes {
        pull_s,
        created_s,
        started_s,
        exited_s,
    })
}

/// Waits for a unix socket (or any path) to appear, failing when the daemon exits first.
async fn wait_for_path(path: &Path, daemons: &mut Daemons, what: &str) -> Result<()> {
    let path = path.to_owned();
    processes::wait_until(what, START_LIMIT, daemons, || {
        let exists = path.exists();
        async move { exists }
    })
    .await
}

/// containerd's config, the CRI test kit's (`crate::cri_config`), and the registry host's
/// `hosts.toml`: the peer as the only mirror, a closed port as the fallback.
fn write_containerd_config(
    dir: &Path,
    sock: &Path,
    s: &NodeSetup<'_>,
    proxy_socket: Option<&Path>,
) -> Result<PathBuf> {
    let certs = dir.join("certs.d");
    let host_dir = certs.join(s.registry_host);
    let runc_root = dir.join("runc");
    for p in [
        &host_dir,
        &dir.join("cni/bin"),
        &dir.join("cni/conf"),
        &runc_root,
    ] {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::write(
        host_dir.join("hosts.toml"),
        cri_config::hosts_toml(CLOSED_SERVER, PEER_MIRROR),
    )?;
    let opts = cri_config::ContainerdOptions {
        snapshotter: match s.snapshotter {
            SnapshotterKind::Overlayfs => "overlayfs",
            SnapshotterKind::Shoal => "shoal",
        }
        .to_owned(),
        proxy_socket: proxy_socket.map(Path::to_path_buf),
        sandbox_image: s.sandbox_image.to_owned(),
        registry_host: s.registry_host.to_owned(),
        mirror: PEER_MIRROR.to_owned(),
    };
    // Each node has its own network namespace: the default streaming port cannot clash.
    let text = cri_config::config_toml(dir, sock, &certs, &runc_root, 10010, &opts);
    let config = dir.join("config.toml");
    std::fs::write(&config, text)?;
    Ok(config)
}
