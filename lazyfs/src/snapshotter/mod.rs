//! `shoal-lazyfs snapshotter`: containerd's remote snapshotter for Shoal lazy images.
//!
//! containerd (its CRI plugin) unpacks an image layer by layer: `Prepare` a snapshot on the
//! previous layer's, apply the layer, `Commit`. For a layer of a Shoal lazy image (the
//! converter marks each with the `containerd.io/snapshot/shoal.lazyfs.role` annotation,
//! which containerd passes on as a label) this snapshotter instead makes the committed
//! snapshot itself and answers "already exists", so containerd downloads nothing: the
//! index layer's snapshot is a lazyfs FUSE mount of the whole image (chunks through the
//! local peer), the data layers' snapshots are empty. Containers then get an overlay whose
//! lower directory is that mount. Every other image is handled as containerd's overlayfs
//! snapshotter does, so a node can use this as its only snapshotter.
//!
//! - [`labels`]: what containerd tells about a layer, and the image a lazy layer is of.
//! - [`store`]: snapshot metadata, kept across restarts.
//! - [`layout`]: directories and the mounts handed to containerd.
//! - [`remote`]: lazy mounts, each in a process that outlives the snapshotter.
//! - [`service`]: the snapshotter operations containerd calls.
//! - [`metrics`]: Prometheus metrics and `/metrics`.
//! - [`wiring`]: containerd's config for it (`shoal-lazyfs containerd-config`).

pub mod labels;
pub mod layout;
pub mod metrics;
pub mod remote;
pub mod service;
pub mod store;
pub mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

pub use self::service::Snapshotter;
use crate::error::{Error, IoContext, Result};
use crate::mount::ChunkOptions;

/// Settings of `shoal-lazyfs snapshotter`: a config file, then `SHOAL_*` variables, then
/// flags (see `shoal_runtime::config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Unix socket for containerd (`[proxy_plugins.shoal] address`)
    /// [default: /run/shoal/snapshotter.sock].
    #[arg(
        long,
        env = "SHOAL_SNAPSHOTTER_ADDRESS",
        required = false,
        value_name = "SOCK"
    )]
    pub address: PathBuf,
    /// Snapshot directories and metadata [default: /var/lib/shoal/snapshotter].
    #[arg(
        long,
        env = "SHOAL_SNAPSHOTTER_ROOT",
        required = false,
        value_name = "DIR"
    )]
    pub root: PathBuf,
    /// Lazy mounts: one per image, each with its own cache directory under `cache_dir`.
    #[command(flatten)]
    pub chunks: ChunkOptions,
    /// How long a lazy mount may take to start before the pod start fails [default: 60s].
    #[arg(long, required = false, value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub mount_timeout: Duration,
    /// Serve Prometheus metrics (the snapshotter's and its mounts') on ADDR (/metrics).
    #[arg(long, env = "SHOAL_SNAPSHOTTER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            address: "/run/shoal/snapshotter.sock".into(),
            root: "/var/lib/shoal/snapshotter".into(),
            chunks: ChunkOptions::default(),
            mount_timeout: Duration::from_secs(60),
            metrics_listen: None,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        self.chunks.validate()?;
        if !self.root.is_absolute() || !self.chunks.cache_dir.is_absolute() {
            return Err(Error::Invalid(
                "--root and --cache-dir must be absolute paths (they end up in mount options)"
                    .into(),
            ));
        }
        if self.mount_timeout.is_zero() {
            return Err(Error::Invalid("--mount-timeout must be above zero".into()));
        }
        Ok(())
    }
}

/// Serves the snapshotter on `opts.address` until `cancel` fires. Lazy mounts stay up when
/// it returns: they belong to the snapshots, not to this process.
pub async fn run(opts: Options, cancel: CancellationToken) -> Result<()> {
    opts.validate()?;
    let registry = prometheus::Registry::new();
    let exe = std::env::current_exe().ctx(|| "finding the shoal-lazyfs executable".into())?;
    let snapshotter = Arc::new(Snapshotter::open(&opts, exe, &registry)?);
    if let Some(addr) = opts.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .ctx(|| format!("binding metrics address {addr}"))?;
        tokio::spawn(metrics::serve(
            listener,
            registry,
            snapshotter.clone(),
            cancel.clone(),
        ));
    }
    let listener = bind_socket(&opts.address)?;
    tracing::info!(address = %opts.address.display(), root = %opts.root.display(), "snapshotter listening");
    containerd_snapshots::tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(snapshotter))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            cancel.cancelled(),
        )
        .await
        .map_err(|e| Error::Invalid(format!("snapshotter gRPC server: {e}")))
}

/// Binds the socket, replacing a stale one left by a previous run.
fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(format!("removing stale {}", path.display()), e))
        }
        _ => {}
    }
    UnixListener::bind(path).ctx(|| format!("binding {}", path.display()))
}
