//! `shoal-peer`: parse the configuration, wire the daemon or run a client command, map errors
//! to exit codes (the table in `shoal_runtime::exit`: 78 when the configuration does not load
//! or validate, 75 when a retryable peer error ends the command, 1 otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shoal_common::Digest;
use shoal_peer::daemon::{self, Listeners};
use shoal_peer::get::{self, GetOptions};
use shoal_peer::PeerConfig;
use shoal_runtime::{logging, shutdown, Exit, Overrides};
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
    /// Check that containerd reads the hosts directory (its CRI registry `config_path`);
    /// fails naming the fix, or with --patch adds it.
    ContainerdCheck(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// containerd's config file (as this process sees it).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// The hosts directory as containerd sees it.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    certs_dir: String,
    /// Add the directory to config_path when missing (original kept as
    /// config.toml.shoal-backup); containerd must then be restarted.
    #[arg(long)]
    patch: bool,
}

fn containerd_check(args: CheckArgs) -> anyhow::Result<()> {
    use shoal_peer::containerd_check::{check, CheckOptions, Verdict};
    let verdict = check(&CheckOptions {
        config: args.config.clone(),
        certs_dir: args.certs_dir,
        patch: args.patch,
    })?;
    match verdict {
        Verdict::Configured { config_path } => println!(
            "containerd reads Shoal's hosts.toml files: {} has config_path = {config_path:?}",
            args.config.display()
        ),
        Verdict::Patched { config_path } => println!(
            "set config_path = {config_path:?} in {}; containerd reads it only at start: \
             RESTART CONTAINERD on this node (until then it pulls without the mirror)",
            args.config.display()
        ),
    }
    Ok(())
}

#[derive(Args)]
struct ContainerdArgs {
    /// Registry host (or host:port) to mirror (repeatable), e.g. docker.io.
    #[arg(long = "registry", required_unless_present = "all_registries")]
    registries: Vec<String>,
    /// Also write `_default/hosts.toml`: registries not listed go through the mirror too.
    #[arg(long)]
    all_registries: bool,
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
        all_registries: args.all_registries,
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

/// `run` and `check-config`: the config file, then every `PeerConfig` setting as a `SHOAL_*`
/// variable or flag.
#[derive(Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "SHOAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Overrides<PeerConfig>,
    /// Label announced to the supernode, KEY=VALUE (repeatable; added to the file's).
    #[arg(long = "label", value_parser = parse_label, value_name = "KEY=VALUE")]
    labels: Vec<(String, String)>,
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
    /// The resolved, validated config; its errors exit `Exit::Config`.
    fn resolve(self) -> Result<PeerConfig, shoal_runtime::Error> {
        let mut c = self.settings.resolve(self.config.as_deref())?;
        c.labels.extend(self.labels);
        c.validate().map_err(shoal_runtime::Error::invalid)?;
        Ok(c)
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    logging::init(&config.log_level, config.log_format);
    let listeners = Listeners::bind(&config).await?;
    let cancel = shutdown::on_signal();
    daemon::run(config, listeners, cancel).await?;
    Ok(())
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
        Command::ContainerdCheck(a) => containerd_check(a),
    };
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("shoal-peer: error: {e:#}");
            Exit::for_error_retrying(e.as_ref(), shoal_peer::Error::is_retryable).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_settings_layer_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peer.toml");
        std::fs::write(
            &file,
            "cache_size = \"2GiB\"\nconcurrent_pieces = 4\n[labels]\nzone = \"a\"\nrack = \"1\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(
                ["shoal-peer", "check-config", "--config", f]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            let Command::CheckConfig(a) = cli.command else {
                unreachable!("parsed check-config")
            };
            a.resolve()
        };
        let c = parse(&[]).unwrap();
        assert_eq!((c.cache_size.0, c.concurrent_pieces), (2 << 30, 4));
        let c = parse(&[
            "--cache-size",
            "1GiB",
            "--label",
            "zone=b",
            "--supernode",
            "http://s:1",
        ])
        .unwrap();
        assert_eq!((c.cache_size.0, c.concurrent_pieces), (1 << 30, 4));
        assert_eq!(c.labels["zone"], "b");
        assert_eq!(c.labels["rack"], "1", "flags add labels to the file's");
        assert_eq!(c.supernodes.len(), 1);
        let e = parse(&["--concurrent-pieces", "0"]).unwrap_err();
        assert!(e.to_string().contains("concurrent_pieces"), "{e}");
        assert_eq!(Exit::for_error(&e, |_| None), Exit::Config);
    }
}
