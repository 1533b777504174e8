//! `shoal-lazyfs`: convert images to lazyfs, inspect, check, unpack and mount them. Parses
//! arguments, wires the library together and maps errors to exit codes:
//! 0 success, 1 failure, 2 usage, 3 `check` found problems, 75 a retryable (network) failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shoal_common::ByteSize;
use shoal_lazyfs::artifact::Form;
use shoal_lazyfs::convert::{convert, ConvertOptions, Dictionary, Source};
use shoal_lazyfs::store::{open_sink, open_source};
use shoal_lazyfs::{ChunkParams, Error, ImageRef, LazyImage, RegistryOptions};

#[derive(Parser)]
#[command(
    name = "shoal-lazyfs",
    version,
    about = "Convert container images to Shoal's lazyfs format and inspect, check, unpack or mount them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct RegistryArgs {
    /// Registry host (HOST or HOST:PORT) to reach over plain http; repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Pull through the local Shoal peer's mirror endpoint (e.g. http://127.0.0.1:65001).
    #[arg(long, value_name = "URL", env = "SHOAL_PEER")]
    peer: Option<String>,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure.clone(),
            peer: self.peer.clone(),
            no_fallback: false,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Convert an image or directory to lazyfs.
    ///
    /// The result is a runnable OCI image (containerd pulls it; the lazyfs snapshotter mounts
    /// it lazily) unless --artifact.
    ///
    /// SRC: HOST/REPO:TAG, oci:DIR[:TAG] or dir:PATH. DST: HOST/REPO:TAG or oci:DIR[:TAG].
    Convert {
        src: String,
        dst: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Smallest chunk FastCDC cuts inside a file.
        #[arg(long, default_value = "64KiB", env = "SHOAL_LAZYFS_MIN_CHUNK")]
        min_chunk: ByteSize,
        /// Target average chunk size.
        #[arg(long, default_value = "256KiB", env = "SHOAL_LAZYFS_AVG_CHUNK")]
        avg_chunk: ByteSize,
        /// Largest chunk.
        #[arg(long, default_value = "1MiB", env = "SHOAL_LAZYFS_MAX_CHUNK")]
        max_chunk: ByteSize,
        /// zstd level for chunks (-7..=22).
        #[arg(
            long,
            default_value_t = 3,
            allow_negative_numbers = true,
            env = "SHOAL_LAZYFS_LEVEL"
        )]
        level: i32,
        /// An earlier lazyfs image whose chunks are referenced instead of stored again.
        #[arg(long, value_name = "REF")]
        chunk_dict: Option<String>,
        /// File listing paths (one per line) whose data goes first, for prefetching.
        #[arg(long, value_name = "FILE")]
        prefetch_list: Option<PathBuf>,
        /// Keep modification times (they make builds of equal trees differ).
        #[arg(long)]
        keep_mtime: bool,
        /// Write the original OCI artifact form (Shoal media types, lazyfs-only config),
        /// which older readers understand, instead of a runnable OCI image.
        #[arg(long)]
        artifact: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Summarize a lazyfs image.
    Inspect {
        src: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Also list every entry.
        #[arg(long)]
        tree: bool,
    },
    /// Verify index, blobs and every chunk; exit 3 naming each problem.
    Check {
        src: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Write the image's tree into OUTDIR (created; must be empty).
    Unpack {
        src: String,
        outdir: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Mount a lazyfs image read-only with FUSE; chunks are fetched on first read.
    ///
    /// Runs in the foreground until SIGTERM/SIGINT (which unmount) or an external unmount.
    Mount(MountArgs),
    /// Serve containerd's remote snapshotter (proxy plugin `shoal`) on a unix socket.
    ///
    /// Layers of lazyfs images become lazy mounts (no download); other images are unpacked
    /// as with containerd's overlayfs snapshotter.
    Snapshotter(SnapshotterArgs),
    /// Make containerd run pods through the snapshotter: edits its config.toml (a backup is
    /// kept; --restore undoes it). containerd must be restarted once afterwards.
    ContainerdConfig {
        /// containerd's configuration file.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        config: PathBuf,
        /// The snapshotter's socket.
        #[arg(
            long,
            value_name = "SOCK",
            default_value = "/run/shoal/snapshotter.sock"
        )]
        address: PathBuf,
        /// Put back the configuration as it was before.
        #[arg(long)]
        restore: bool,
    },
}

#[derive(Args)]
struct SnapshotterArgs {
    /// Unix socket for containerd (`[proxy_plugins.shoal] address`).
    #[arg(
        long,
        value_name = "SOCK",
        env = "SHOAL_SNAPSHOTTER_ADDRESS",
        default_value = "/run/shoal/snapshotter.sock"
    )]
    address: PathBuf,
    /// Snapshot directories and metadata.
    #[arg(
        long,
        value_name = "DIR",
        env = "SHOAL_SNAPSHOTTER_ROOT",
        default_value = "/var/lib/shoal/snapshotter"
    )]
    root: PathBuf,
    /// Lazy mounts: one per image, each with its own cache directory under --cache-dir.
    #[command(flatten)]
    chunks: ChunkArgs,
    /// How long a lazy mount may take to start before the pod start fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    mount_timeout: std::time::Duration,
    /// Serve Prometheus metrics (the snapshotter's and its mounts') on ADDR (/metrics).
    #[arg(long, value_name = "ADDR", env = "SHOAL_SNAPSHOTTER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Where lazy mounts read and keep chunks (`mount`, and each mount of `snapshotter`).
#[derive(Args)]
struct ChunkArgs {
    /// The local Shoal peer's registry mirror; manifest, index and chunks go through it
    /// (empty: the registry only).
    #[arg(
        long,
        value_name = "URL",
        env = "SHOAL_PEER",
        default_value = "http://127.0.0.1:65001"
    )]
    peer: String,
    /// Registry host (HOST or HOST:PORT) to reach over plain http; repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
    /// Disk cache of verified chunks, kept across mounts.
    #[arg(
        long,
        value_name = "DIR",
        env = "SHOAL_LAZYFS_CACHE_DIR",
        default_value = "/var/cache/shoal-lazyfs"
    )]
    cache_dir: PathBuf,
    /// Disk cache quota (least recently used chunks are evicted).
    #[arg(long, default_value = "10GiB", env = "SHOAL_LAZYFS_CACHE_SIZE")]
    cache_size: ByteSize,
    /// Background prefetch: all chunks, the image's prefetch list, or nothing.
    #[arg(
        long,
        default_value = "list",
        value_name = "all|list|none",
        env = "SHOAL_LAZYFS_PREFETCH"
    )]
    prefetch: shoal_lazyfs::mount::PrefetchMode,
}

#[derive(Args)]
struct MountArgs {
    /// Image reference, HOST/REPO:TAG or HOST/REPO@sha256:...
    r#ref: String,
    /// Directory to mount on.
    mountpoint: PathBuf,
    #[command(flatten)]
    chunks: ChunkArgs,
    /// Never fetch from the registry directly when the peer fails.
    #[arg(long, env = "SHOAL_LAZYFS_NO_FALLBACK")]
    no_fallback: bool,
    /// Memory cache of hot chunks.
    #[arg(long, default_value = "256MiB", env = "SHOAL_LAZYFS_MEMORY_CACHE_SIZE")]
    memory_cache_size: ByteSize,
    /// Write the paths of the files read, in first-read order, to FILE on unmount.
    #[arg(long, value_name = "FILE")]
    record_access: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (/metrics).
    #[arg(long, value_name = "ADDR", env = "SHOAL_LAZYFS_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Deadline of each range request (then retry, then the next source, then EIO).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "SHOAL_LAZYFS_TIMEOUT")]
    timeout: std::time::Duration,
    /// Retries per source after a retryable failure.
    #[arg(long, default_value_t = 2, env = "SHOAL_LAZYFS_RETRIES")]
    retries: u32,
    /// Largest merged range request.
    #[arg(long, default_value = "4MiB", env = "SHOAL_LAZYFS_MAX_REQUEST")]
    max_request: ByteSize,
    /// When a read must fetch, also fetch this much of the file after it (0: off).
    #[arg(long, default_value = "1MiB", env = "SHOAL_LAZYFS_READAHEAD")]
    readahead: ByteSize,
    /// Let other users access the mount (allow_other), e.g. for rootless containers.
    #[arg(long)]
    allow_other: bool,
    /// FUSE request threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Kernel readahead window of the mount: larger means fewer, larger read requests for
    /// sequential reads (0: keep the kernel's 128 KiB; needs a writable /sys).
    #[arg(long, default_value = "1MiB", env = "SHOAL_LAZYFS_KERNEL_READAHEAD")]
    kernel_readahead: ByteSize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                // fuser warns about every request kind a read-only filesystem leaves out.
                .unwrap_or_else(|_| "warn,fuser=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-lazyfs: {e:#}");
            let retryable = e
                .chain()
                .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_retryable));
            ExitCode::from(if retryable { 75 } else { 1 })
        }
    }
}

fn open_lazy(
    src: &str,
    registry: &RegistryArgs,
) -> anyhow::Result<(Box<dyn shoal_lazyfs::BlobSource>, LazyImage)> {
    let r = ImageRef::parse(src)?;
    let source = open_source(&r, &registry.options())?;
    let image = LazyImage::open(source.as_ref()).with_context(|| format!("opening {r}"))?;
    Ok((source, image))
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Convert {
            src,
            dst,
            registry,
            min_chunk,
            avg_chunk,
            max_chunk,
            level,
            chunk_dict,
            prefetch_list,
            keep_mtime,
            artifact,
            quiet,
        } => {
            let size = |b: ByteSize, what: &str| {
                u32::try_from(b.0).with_context(|| format!("{what} too large"))
            };
            let params = ChunkParams {
                min: size(min_chunk, "--min-chunk")?,
                avg: size(avg_chunk, "--avg-chunk")?,
                max: size(max_chunk, "--max-chunk")?,
                level,
            };
            let opts = registry.options();
            let source = match ImageRef::parse(&src)? {
                ImageRef::Dir(p) => Source::Dir(p),
                r => Source::Image(open_source(&r, &opts)?),
            };
            let dst_ref = ImageRef::parse(&dst)?;
            let sink = open_sink(&dst_ref, &opts)?;
            let dict = match chunk_dict {
                Some(d) => {
                    let (source, image) =
                        open_lazy(&d, &registry).context("loading --chunk-dict")?;
                    if let Err(e) = &image.index {
                        bail!("--chunk-dict {d}: {e}");
                    }
                    Some(Dictionary { source, image })
                }
                None => None,
            };
            let prefetch = match prefetch_list {
                Some(f) => std::fs::read(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .split(|&b| b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                    .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
                    .collect(),
                None => Vec::new(),
            };
            let report = convert(
                &source,
                sink.as_ref(),
                &ConvertOptions {
                    params,
                    keep_mtime,
                    prefetch,
                    dict,
                    progress: !quiet,
                    form: if artifact {
                        Form::Artifact
                    } else {
                        Form::Image
                    },
                },
            )
            .with_context(|| format!("converting {src} to {dst}"))?;
            for p in &report.prefetch_missing {
                eprintln!("warning: prefetch path {p} is not a regular file in the image");
            }
            let s = &report.stats;
            let secs = report.total_time.as_secs_f64().max(1e-9);
            eprintln!(
                "{} entries, {} bytes of file data in {:.2}s ({:.0} MB/s); {} new chunks ({} bytes, {} compressed), {} chunks ({} bytes) from the dictionary",
                report.entries,
                s.input_bytes,
                secs,
                s.input_bytes as f64 / secs / 1e6,
                s.new_chunks,
                s.new_bytes,
                s.new_compressed_bytes,
                s.dict_chunks,
                s.dict_bytes
            );
            println!("{}", report.manifest_digest);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            src,
            registry,
            tree,
        } => {
            let (_source, image) = open_lazy(&src, &registry)?;
            let index = image.index.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{}", shoal_lazyfs::inspect::summary(&image, index));
            if tree {
                print!("{}", shoal_lazyfs::inspect::tree_listing(index));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { src, registry } => {
            let (source, image) = open_lazy(&src, &registry)?;
            let report = shoal_lazyfs::check::check(source.as_ref(), &image);
            for p in &report.problems {
                println!("BAD {p}");
            }
            println!(
                "{} blobs and {} chunks verified, {} problems",
                report.blobs_ok,
                report.chunks_ok,
                report.problems.len()
            );
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Unpack {
            src,
            outdir,
            registry,
        } => {
            let (source, image) = open_lazy(&src, &registry)?;
            let index = image.index.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = shoal_lazyfs::unpack::unpack(source.as_ref(), index, &outdir)?;
            if report.chown_failed > 0 {
                eprintln!(
                    "warning: could not set the owner of {} entries (not root?)",
                    report.chown_failed
                );
            }
            eprintln!(
                "{} entries, {} bytes written to {}",
                report.entries,
                report.bytes,
                outdir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount(m) => {
            let opts = shoal_lazyfs::mount::MountOptions {
                image: m.r#ref,
                mountpoint: m.mountpoint,
                peer: Some(m.chunks.peer).filter(|p| !p.is_empty()),
                insecure: m.chunks.insecure,
                no_fallback: m.no_fallback,
                cache_dir: Some(m.chunks.cache_dir).filter(|d| !d.as_os_str().is_empty()),
                cache_size: m.chunks.cache_size.0,
                memory_cache_size: m.memory_cache_size.0,
                prefetch: m.chunks.prefetch,
                record_access: m.record_access,
                metrics_listen: m.metrics_listen,
                timeout: m.timeout,
                retries: m.retries,
                max_request: m.max_request.0,
                readahead: m.readahead.0,
                allow_other: m.allow_other,
                threads: m.threads,
                kernel_readahead: m.kernel_readahead.0,
            };
            shoal_lazyfs::mount::mount(opts, prometheus::Registry::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ContainerdConfig {
            config,
            address,
            restore,
        } => {
            use shoal_lazyfs::snapshotter::wiring;
            if restore {
                match wiring::restore(&config)? {
                    true => println!("restored {}; restart containerd", config.display()),
                    false => println!("{}: nothing to restore", config.display()),
                }
            } else {
                wiring::install(&config, &address)?;
                println!(
                    "{}: snapshotter {} on {}; restart containerd once",
                    config.display(),
                    wiring::PLUGIN,
                    address.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshotter(a) => {
            let opts = shoal_lazyfs::snapshotter::Options {
                address: a.address,
                root: a.root,
                cache_dir: a.chunks.cache_dir,
                cache_size: a.chunks.cache_size.0,
                peer: a.chunks.peer,
                insecure: a.chunks.insecure,
                prefetch: a.chunks.prefetch,
                mount_timeout: a.mount_timeout,
                metrics_listen: a.metrics_listen,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                let cancel = tokio_util::sync::CancellationToken::new();
                let stop = cancel.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    stop.cancel();
                });
                shoal_lazyfs::snapshotter::run(opts, cancel).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SIGTERM or SIGINT. Lazy mounts stay: running containers keep their lower layers.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
