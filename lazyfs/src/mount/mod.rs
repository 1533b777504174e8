//! `shoal-lazyfs mount`: a read-only FUSE filesystem over a lazyfs image whose chunks are
//! fetched on first read, through the local Shoal peer.
//!
//! - [`fs`] — the `fuser` filesystem (metadata from the index; reads handed to tokio).
//! - [`read`] — a file range → chunks → bytes.
//! - [`fetch`] — cache lookups, single-flight range requests, verification.
//! - [`source`] — the peer mirror and registry HTTP sources.
//! - [`cache`] — memory and disk chunk caches.
//! - [`sequential`] — blob-order readahead for cold tree walks.
//! - [`prefetch`] — background prefetch at low priority.
//! - [`access`] — `--record-access`.
//! - [`metrics`] — Prometheus metrics and `/metrics`.
//!
//! [`mount`] wires them together, mounts, and returns after SIGTERM/SIGINT (unmounting) or
//! an external unmount.

pub mod access;
pub mod cache;
pub mod fetch;
pub mod fs;
pub mod metrics;
pub mod prefetch;
pub mod read;
pub mod sequential;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use serde::{Deserialize, Serialize};
use shoal_common::ByteSize;
use shoal_runtime::Switch;
use tokio_util::sync::CancellationToken;

use self::access::AccessLog;
use self::cache::{ChunkCache, DiskCache};
use self::fetch::{FetchOptions, Fetcher};
use self::metrics::Metrics;
pub use self::prefetch::PrefetchMode;
use self::read::Reader;
use self::source::HttpSource;
use crate::artifact::LazyImage;
use crate::error::{Error, Result};
use crate::reference::ImageRef;
use crate::registry::{Registry, RegistryOptions};

/// Where lazy mounts read and keep chunks: `mount`, and each mount the snapshotter starts
/// (a `[chunks]` table in either's config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkOptions {
    /// The local Shoal peer's registry mirror; manifest, index and chunks go through it
    /// (empty: the registry only) [default: http://127.0.0.1:65001].
    #[arg(long, env = "SHOAL_PEER", required = false, value_name = "URL")]
    pub peer: String,
    /// Registry host (HOST or HOST:PORT) to reach over plain http; repeatable.
    #[arg(
        long = "insecure-registry",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    #[serde(rename = "insecure_registries")]
    pub insecure: Vec<String>,
    /// Disk cache of verified chunks, kept across mounts (empty: memory only)
    /// [default: /var/cache/shoal-lazyfs].
    #[arg(
        long,
        env = "SHOAL_LAZYFS_CACHE_DIR",
        required = false,
        value_name = "DIR"
    )]
    pub cache_dir: PathBuf,
    /// Disk cache quota; least recently used chunks are evicted [default: 10GiB].
    #[arg(long, env = "SHOAL_LAZYFS_CACHE_SIZE", required = false)]
    pub cache_size: ByteSize,
    /// Background prefetch: all chunks, the image's prefetch list, or nothing [default: list].
    #[arg(
        long,
        env = "SHOAL_LAZYFS_PREFETCH",
        required = false,
        value_name = "all|list|none"
    )]
    pub prefetch: PrefetchMode,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            peer: "http://127.0.0.1:65001".into(),
            insecure: Vec::new(),
            cache_dir: "/var/cache/shoal-lazyfs".into(),
            cache_size: ByteSize(10 << 30),
            prefetch: PrefetchMode::List,
        }
    }
}

impl ChunkOptions {
    pub fn validate(&self) -> Result<()> {
        if !self.peer.is_empty()
            && !self.peer.starts_with("http://")
            && !self.peer.starts_with("https://")
        {
            return Err(Error::Invalid(format!(
                "--peer {:?} must be an http(s) URL or empty",
                self.peer
            )));
        }
        Ok(())
    }
}

/// Settings of `shoal-lazyfs mount`: a config file, then `SHOAL_LAZYFS_*` variables, then
/// flags (see `shoal_runtime::config`). The image and mountpoint are the command's
/// arguments, not settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct MountOptions {
    /// `HOST/REPO:TAG` or `HOST/REPO@sha256:…` of a lazyfs image.
    #[arg(skip)]
    #[serde(skip)]
    pub image: String,
    #[arg(skip)]
    #[serde(skip)]
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub chunks: ChunkOptions,
    /// Never fetch from the registry directly when the peer fails.
    #[arg(long, env = "SHOAL_LAZYFS_NO_FALLBACK", switch = true)]
    pub no_fallback: bool,
    /// Memory cache of hot chunks [default: 256MiB].
    #[arg(long, env = "SHOAL_LAZYFS_MEMORY_CACHE_SIZE", required = false)]
    pub memory_cache_size: ByteSize,
    /// Write the paths of the files read, in first-read order, to FILE on unmount.
    #[arg(long, value_name = "FILE")]
    pub record_access: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (/metrics).
    #[arg(long, env = "SHOAL_LAZYFS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Deadline of each range request (then retry, then the next source, then EIO)
    /// [default: 10s].
    #[arg(long, env = "SHOAL_LAZYFS_TIMEOUT", required = false, value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries per source after a retryable failure [default: 2].
    #[arg(long, env = "SHOAL_LAZYFS_RETRIES", required = false)]
    pub retries: u32,
    /// Largest merged range request [default: 4MiB].
    #[arg(long, env = "SHOAL_LAZYFS_MAX_REQUEST", required = false)]
    pub max_request: ByteSize,
    /// When a read must fetch, also fetch this much of the file after it (0: off)
    /// [default: 1MiB].
    #[arg(long, env = "SHOAL_LAZYFS_READAHEAD", required = false)]
    pub readahead: ByteSize,
    /// Let other users access the mount (allow_other), e.g. for rootless containers.
    #[arg(long, switch = true)]
    pub allow_other: bool,
    /// FUSE request threads [default: 2].
    #[arg(long, required = false)]
    pub threads: usize,
    /// Kernel readahead window of the mount: larger means fewer, larger read requests for
    /// sequential reads (0: keep the kernel's 128 KiB; needs a writable /sys) [default: 1MiB].
    #[arg(long, env = "SHOAL_LAZYFS_KERNEL_READAHEAD", required = false)]
    pub kernel_readahead: ByteSize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            image: String::new(),
            mountpoint: PathBuf::new(),
            chunks: ChunkOptions::default(),
            no_fallback: false,
            memory_cache_size: ByteSize(256 << 20),
            record_access: None,
            metrics_listen: None,
            timeout: Duration::from_secs(10),
            retries: 2,
            max_request: ByteSize(4 << 20),
            readahead: ByteSize(1 << 20),
            allow_other: false,
            threads: 2,
            kernel_readahead: ByteSize(1 << 20),
        }
    }
}

impl MountOptions {
    /// Checks the settings before anything is fetched or mounted; the message names the flag.
    pub fn validate(&self) -> Result<()> {
        self.chunks.validate()?;
        let bad = |m: &str| Err(Error::Invalid(m.into()));
        if self.timeout.is_zero() {
            return bad("--timeout must be above zero");
        }
        if self.max_request.0 == 0 {
            return bad("--max-request must be above zero");
        }
        if self.threads == 0 {
            return bad("--threads must be at least 1");
        }
        Ok(())
    }

    fn peer(&self) -> Option<&str> {
        Some(self.chunks.peer.as_str()).filter(|p| !p.is_empty())
    }
}

/// Mount and serve until SIGTERM/SIGINT (then unmount) or an external unmount.
pub fn mount(opts: MountOptions, registry: prometheus::Registry) -> Result<()> {
    let ImageRef::Registry {
        host,
        repo,
        reference,
    } = ImageRef::parse(&opts.image)?
    else {
        return Err(Error::Invalid(format!(
            "{}: mount needs a registry reference (HOST/REPO:TAG)",
            opts.image
        )));
    };
    opts.validate()?;
    let insecure = opts.chunks.insecure.iter().any(|h| h == &host);
    // Manifest and index through the peer (blocking client; before the runtime exists).
    let image = {
        let reg = Registry::new(
            &host,
            &repo,
            &reference,
            &RegistryOptions {
                insecure: opts.chunks.insecure.clone(),
                peer: opts.peer().map(str::to_owned),
                no_fallback: opts.no_fallback,
            },
        )?;
        LazyImage::open(&reg)?
    };
    let index = Arc::new(image.index?);
    tracing::info!(
        image = %opts.image,
        manifest = %image.manifest_digest,
        entries = index.entries.len(),
        chunks = index.chunks.len(),
        "index loaded"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(2))
        .thread_name("lazyfs-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the I/O runtime", e))?;
    let metrics = Metrics::new(&registry)?;
    let disk = match &opts.chunks.cache_dir {
        dir if dir.as_os_str().is_empty() => None,
        dir => Some(DiskCache::open(dir, opts.chunks.cache_size.0)?),
    };
    let cache = Arc::new(ChunkCache::new(
        opts.memory_cache_size.0,
        disk,
        metrics.clone(),
    ));
    let mut sources = Vec::new();
    if let Some(peer) = opts.peer() {
        sources.push(HttpSource::peer(peer, &host, &repo, opts.timeout)?);
    }
    if opts.peer().is_none() || !opts.no_fallback {
        sources.push(HttpSource::registry(&host, &repo, insecure, opts.timeout)?);
    }
    let fetcher = Arc::new(Fetcher::new(
        index.clone(),
        sources,
        FetchOptions {
            retries: opts.retries,
            max_run: opts.max_request.0,
            blob_readahead: opts.readahead.0,
        },
        cache,
        metrics.clone(),
    ));
    let access = opts
        .record_access
        .clone()
        .map(|p| Arc::new(AccessLog::new(p, index.clone())));
    let reader = Arc::new(Reader {
        index: index.clone(),
        fetcher: fetcher.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
        readahead: opts.readahead.0,
    });
    if let Some(addr) = opts.metrics_listen {
        let bound = rt.block_on(metrics::serve(addr, registry.clone()))?;
        tracing::info!(%bound, "serving /metrics");
    }

    let fs = fs::LazyFs::new(index.clone(), reader, rt.handle().clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("shoal-lazyfs:{}", opts.image)),
        MountOption::Subtype("lazyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Exec,
        MountOption::Suid,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let mount_err = |context: &str, e| Error::Mount {
        mountpoint: opts.mountpoint.display().to_string(),
        context: context.to_string(),
        source: e,
    };
    // Signal handlers before the mount exists, so an early SIGTERM still unmounts.
    let stop = {
        let _rt = rt.enter();
        shoal_runtime::shutdown::on_signal()
    };
    let session =
        fuser::spawn_mount(fs, &opts.mountpoint, &config).map_err(|e| mount_err("mounting", e))?;
    if opts.kernel_readahead.0 > 0 {
        if let Err(e) = set_kernel_readahead(&opts.mountpoint, opts.kernel_readahead.0) {
            tracing::warn!(error = %e, "could not raise the mount's kernel readahead");
        }
    }
    eprintln!(
        "shoal-lazyfs: mounted {} at {}",
        opts.image,
        opts.mountpoint.display()
    );
    rt.spawn(prefetch::run(
        fetcher,
        index,
        opts.chunks.prefetch,
        opts.max_request.0,
        metrics,
    ));

    let signalled = rt.block_on(wait_for_end(&session, &stop));
    if signalled {
        tracing::info!("signal received: unmounting");
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(error = %e, "unmount failed (busy?): detaching lazily");
            detach(&opts.mountpoint).map_err(|e| mount_err("detaching", e))?;
        }
    } else if let Err(e) = session.join() {
        tracing::warn!(error = %e, "FUSE session ended with an error");
    }
    if let Some(a) = &access {
        a.flush()?;
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("shoal-lazyfs: unmounted {}", opts.mountpoint.display());
    Ok(())
}

/// `true` on SIGTERM/SIGINT, `false` when the session ended by itself (external unmount).
async fn wait_for_end(session: &fuser::BackgroundSession, stop: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if session.guard.is_finished() {
                    return false;
                }
            }
        }
    }
}

/// Sequential reads arrive as readahead requests of at most the mount's readahead window,
/// which the kernel starts at 128 KiB for FUSE and lets only root raise, through sysfs. A
/// larger window means fewer, larger requests (up to FUSE's 1 MiB) and fewer context
/// switches per byte.
fn set_kernel_readahead(mountpoint: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(&path, format!("{}\n", bytes.div_ceil(1024)))
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {path}: {e}")))
}

/// `umount -l`: detach now, let open files finish.
pub(crate) fn detach(mountpoint: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
