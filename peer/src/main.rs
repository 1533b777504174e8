//! `shoal-peer`: parse the configuration, wire the daemon or run a client command, map errors
//! to exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal_common::{ByteRate, ByteSize, Digest};
use shoal_peer::daemon::{self, Listeners};
use shoal_peer::get::{self, GetOptions};
use shoal_peer::PeerConfig;
use tokio_util::sync::CancellationToken;
use url::Url;

#[derive(Parser)]
#[command(
    name = "shoal-peer",
    version,
    about = "Shoal node daemon: P2P blob distribution, registry mirror, verified cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the peer daemon.
    Run(RunArgs),
    /// Download a URL through the local peer daemon.
    Get(GetArgs),
    /// Load and validate a configuration, print it resolved.
    CheckConfig(RunArgs),
    /// Point containerd at this peer's registry mirror (writes certs.d hosts.toml files).
    ContainerdConfig(ContainerdArgs),
}

#[derive(Args)]
struct ContainerdArgs {
    /// Registry host (or host:port) to mirror (repeatable), e.g. docker.io.
    #[arg(long = "registry", required = true)]
    registries: Vec<String>,
    /// containerd's hosts directory (`config_path` of the CRI registry config).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    config_path: PathBuf,
    /// The peer's mirror URL.
    #[arg(long, default_value = "http://127.0.0.1:65001")]
    mirror: String,
    /// The registries themselves are reached over plain http.
    #[arg(long)]
    insecure: bool,
    /// Put back the files that were there before (or remove ours).
    #[arg(long)]
    restore: bool,
}

fn containerd_config(args: ContainerdArgs) -> anyhow::Result<()> {
    let opts = shoal_peer::containerd::ContainerdOptions {
        registries: args.registries,
        config_path: args.config_path,
        mirror: args.mirror,
        insecure: args.insecure,
    };
    let files = if args.restore {
        shoal_peer::containerd::restore(&opts)?
    } else {
        shoal_peer::containerd::write(&opts)?
    };
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

/// Every setting of the config file, overridable by flag or `SHOAL_*` environment variable.
#[derive(Args, Default)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Supernode URL (repeatable); none runs an embedded supernode.
    #[arg(long = "supernode", env = "SHOAL_SUPERNODE", value_delimiter = ',')]
    supernodes: Vec<Url>,
    #[arg(long, env = "SHOAL_PEER_ID")]
    peer_id: Option<String>,
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Disk quota, e.g. 20GiB.
    #[arg(long, env = "SHOAL_CACHE_SIZE")]
    cache_size: Option<ByteSize>,
    #[arg(long, env = "SHOAL_MIRROR_LISTEN")]
    mirror_listen: Option<SocketAddr>,
    #[arg(long, env = "SHOAL_P2P_LISTEN")]
    p2p_listen: Option<SocketAddr>,
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// IP (or IP:port) other peers reach this peer's piece server at.
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Upload limit, e.g. 100Mbit or 12MiB (0 = unlimited).
    #[arg(long, env = "SHOAL_UPLOAD_RATE")]
    upload_rate: Option<ByteRate>,
    /// Download limit, e.g. 100Mbit or 12MiB (0 = unlimited).
    #[arg(long, env = "SHOAL_DOWNLOAD_RATE")]
    download_rate: Option<ByteRate>,
    /// Registry reached over plain http (repeatable).
    #[arg(
        long = "insecure-registry",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Label announced to the supernode, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Pieces fetched at once per task.
    #[arg(long, env = "SHOAL_CONCURRENT_PIECES")]
    concurrent_pieces: Option<u32>,
    /// Memory for piece buffers over all downloads, e.g. 96MiB.
    #[arg(long, env = "SHOAL_PIECE_MEMORY")]
    piece_memory: Option<ByteSize>,
    /// Piece size for blobs this peer is first to download (a power of two, 256KiB-16MiB, e.g.
    /// 4MiB); 0 = automatic (about 128 pieces per blob).
    #[arg(long, env = "SHOAL_PIECE_SIZE")]
    piece_size: Option<ByteSize>,
    /// Log filter, e.g. info or shoal_peer=debug.
    #[arg(long, env = "SHOAL_LOG")]
    log_level: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} must be KEY=VALUE"))
}

#[derive(Args)]
struct GetArgs {
    /// URL of the blob.
    url: String,
    /// Output file (written only when complete and verified).
    #[arg(short, long)]
    output: PathBuf,
    /// Expected sha256 digest (sha256:HEX): enables P2P sharing by content and verification.
    #[arg(long)]
    digest: Option<Digest>,
    /// Local daemon address.
    #[arg(long, env = "SHOAL_PEER", default_value = "http://127.0.0.1:65001")]
    peer: Url,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

impl RunArgs {
    fn resolve(self) -> anyhow::Result<PeerConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                PeerConfig::from_toml(&text)
                    .with_context(|| format!("config {}", path.display()))?
            }
            None => PeerConfig::default(),
        };
        if !self.supernodes.is_empty() {
            c.supernodes = self.supernodes;
        }
        if !self.insecure_registries.is_empty() {
            c.insecure_registries = self.insecure_registries;
        }
        c.labels.extend(self.labels);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            data_dir,
            cache_size,
            mirror_listen,
            p2p_listen,
            metrics_listen,
            upload_rate,
            download_rate,
            concurrent_pieces,
            piece_memory,
            piece_size,
            log_level
        );
        if self.peer_id.is_some() {
            c.peer_id = self.peer_id;
        }
        if self.advertise_addr.is_some() {
            c.advertise_addr = self.advertise_addr;
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_tracing(&config.log_level);
    let listeners = Listeners::bind(&config).await?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        c.cancel();
    });
    daemon::run(config, listeners, cancel).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn get_cmd(args: GetArgs) -> anyhow::Result<()> {
    let summary = get::get(GetOptions {
        url: args.url,
        output: args.output.clone(),
        digest: args.digest,
        peer: args.peer,
        progress: !args.quiet,
    })
    .await?;
    if !args.quiet {
        eprintln!(
            "{}: {} bytes in {:.2}s, {}",
            args.output.display(),
            summary.bytes,
            summary.elapsed.as_secs_f64(),
            summary.digest
        );
    }
    Ok(())
}

fn check_config(args: RunArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    print!("{}", toml::to_string_pretty(&config)?);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a).await,
        Command::Get(a) => get_cmd(a).await,
        Command::CheckConfig(a) => check_config(a),
        Command::ContainerdConfig(a) => containerd_config(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
