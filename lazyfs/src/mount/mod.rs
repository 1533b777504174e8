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

pub struct MountOptions {
    /// `HOST/REPO:TAG` or `HOST/REPO@sha256:…` of a lazyfs image.
    pub image: String,
    pub mountpoint: PathBuf,
    /// Base URL of the local peer's mirror; `None` fetches from the registry only.
    pub peer: Option<String>,
    pub insecure: Vec<String>,
    /// Never fall back to the registry when the peer fails.
    pub no_fallback: bool,
    /// Disk cache directory; `None` keeps chunks in memory only.
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    pub memory_cache_size: u64,
    pub prefetch: PrefetchMode,
    pub record_access: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// Deadline of each range request.
    pub timeout: Duration,
    /// Retries per source after a retryable failure.
    pub retries: u32,
    /// Largest merged range request.
    pub max_request: u64,
    /// File bytes fetched along with a read that misses (0: none).
    pub readahead: u64,
    /// Let other users (and user namespaces) access the mount (`allow_other`).
    pub allow_other: bool,
    /// FUSE request threads.
    pub threads: usize,
    /// Kernel readahead of the mount in bytes (0: the kernel's default, 128 KiB).
    pub kernel_readahead: u64,
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
    let insecure = opts.insecure.iter().any(|h| h == &host);
    // Manifest and index through the peer (blocking client; before the runtime exists).
    let image = {
        let reg = Registry::new(
            &host,
            &repo,
            &reference,
            &RegistryOptions {
                insecure: opts.insecure.clone(),
                peer: opts.peer.clone(),
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
    let disk = match &opts.cache_dir {
        Some(dir) => Some(DiskCache::open(dir, opts.cache_size)?),
        None => None,
    };
    let cache = Arc::new(ChunkCache::new(
        opts.memory_cache_size,
        disk,
        metrics.clone(),
    ));
    let mut sources = Vec::new();
    if let Some(peer) = &opts.peer {
        sources.push(HttpSource::peer(peer, &host, &repo, opts.timeout)?);
    }
    if opts.peer.is_none() || !opts.no_fallback {
        sources.push(HttpSource::registry(&host, &repo, insecure, opts.timeout)?);
    }
    let fetcher = Arc::new(Fetcher::new(
        index.clone(),
        sources,
        FetchOptions {
            retries: opts.retries,
            max_run: opts.max_request,
            blob_readahead: opts.readahead,
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
        readahead: opts.readahead,
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
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate())
                .map_err(|e| Error::io("installing SIGTERM handler", e))?,
            signal(SignalKind::interrupt())
                .map_err(|e| Error::io("installing SIGINT handler", e))?,
        )
    };
    let session =
        fuser::spawn_mount(fs, &opts.mountpoint, &config).map_err(|e| mount_err("mounting", e))?;
    if opts.kernel_readahead > 0 {
        if let Err(e) = set_kernel_readahead(&opts.mountpoint, opts.kernel_readahead) {
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
        opts.prefetch,
        opts.max_request,
        metrics,
    ));

    let signalled = rt.block_on(wait_for_end(&session, signals));
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
async fn wait_for_end(
    session: &fuser::BackgroundSession,
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> bool {
    loop {
        tokio::select! {
            _ = term.recv() => return true,
            _ = int.recv() => return true,
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
