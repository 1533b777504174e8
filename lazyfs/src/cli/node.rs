//! The node commands: `mount`, `snapshotter`, `containerd-config`. Mount and snapshotter
//! settings come from an optional config file, then `SHOAL_*` variables, then flags.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_lazyfs::mount::MountOptions;
use shoal_lazyfs::snapshotter::{self, wiring};
use shoal_runtime::{shutdown, Exit, Overrides};

#[derive(Args)]
pub struct MountArgs {
    /// Image reference, HOST/REPO:TAG or HOST/REPO@sha256:...
    r#ref: String,
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Config file (TOML) with the settings below; flags and variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Overrides<MountOptions>,
}

#[derive(Args)]
pub struct SnapshotterArgs {
    /// Config file (TOML) with the settings below; flags and variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Overrides<snapshotter::Options>,
}

#[derive(Args)]
pub struct ContainerdConfigArgs {
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
}

impl MountArgs {
    /// The resolved, validated settings; their errors exit `Exit::Config`.
    fn resolve(self) -> Result<MountOptions, shoal_runtime::Error> {
        let mut opts = self.settings.resolve(self.config.as_deref())?;
        opts.image = self.r#ref;
        opts.mountpoint = self.mountpoint;
        opts.validate().map_err(shoal_runtime::Error::invalid)?;
        Ok(opts)
    }
}

pub fn mount(args: MountArgs) -> anyhow::Result<Exit> {
    let opts = args.resolve()?;
    shoal_lazyfs::mount::mount(opts, prometheus::Registry::new())?;
    Ok(Exit::Ok)
}

/// Serves until SIGTERM or SIGINT. Lazy mounts stay: running containers keep their lower
/// layers.
pub fn snapshotter(args: SnapshotterArgs) -> anyhow::Result<Exit> {
    let opts = args.settings.resolve(args.config.as_deref())?;
    opts.validate().map_err(shoal_runtime::Error::invalid)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async { snapshotter::run(opts, shutdown::on_signal()).await })?;
    Ok(Exit::Ok)
}

pub fn containerd_config(args: ContainerdConfigArgs) -> anyhow::Result<Exit> {
    let ContainerdConfigArgs {
        config,
        address,
        restore,
    } = args;
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
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use shoal_common::ByteSize;
    use shoal_lazyfs::mount::PrefetchMode;

    use super::*;
    use crate::cli::{Cli, Command};

    fn mount_opts(args: &[&str]) -> MountOptions {
        let cli = Cli::try_parse_from(["shoal-lazyfs", "mount"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Mount(m) => m.resolve().unwrap(),
            _ => unreachable!("parsed a mount command"),
        }
    }

    #[test]
    fn mount_settings_layer_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mount.toml");
        std::fs::write(
            &file,
            "no_fallback = true\nretries = 5\ntimeout = \"3s\"\n[chunks]\nprefetch = \"none\"\ncache_size = \"1GiB\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();

        let o = mount_opts(&["r.io/a:1", "/mnt", "--config", f]);
        assert!(
            o.no_fallback,
            "the file's no_fallback survives an absent flag"
        );
        assert_eq!((o.retries, o.timeout.as_secs()), (5, 3));
        assert_eq!(o.chunks.prefetch, PrefetchMode::None);
        assert_eq!(o.chunks.cache_size, ByteSize(1 << 30));
        assert_eq!(
            (o.image.as_str(), o.mountpoint.to_str()),
            ("r.io/a:1", Some("/mnt"))
        );

        let o = mount_opts(&[
            "--config",
            f,
            "--no-fallback=false",
            "--retries",
            "1",
            "r.io/a:1",
            "/m",
        ]);
        assert!(!o.no_fallback);
        assert_eq!(o.retries, 1);

        // A bare boolean flag before the arguments must not take the image as its value.
        let o = mount_opts(&[
            "--no-fallback",
            "--allow-other",
            "r.io/a:1",
            "/m",
            "--peer",
            "",
        ]);
        assert!(o.no_fallback && o.allow_other);
        assert_eq!(o.image, "r.io/a:1");
        assert_eq!(o.chunks.peer, "");

        let d = mount_opts(&["r.io/a:1", "/m"]);
        assert_eq!(
            MountOptions {
                image: String::new(),
                mountpoint: Default::default(),
                ..d
            },
            MountOptions::default()
        );
    }

    #[test]
    fn bad_mount_settings_are_config_errors() {
        let cli = Cli::try_parse_from(["shoal-lazyfs", "mount", "r/a:1", "/m", "--threads", "0"])
            .unwrap();
        let Command::Mount(m) = cli.command else {
            unreachable!("parsed a mount command")
        };
        let e = anyhow::Error::from(m.resolve().unwrap_err());
        assert!(e.to_string().contains("--threads"), "{e}");
        assert_eq!(Exit::for_error(e.as_ref(), |_| None), Exit::Config);
    }
}
