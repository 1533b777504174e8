//! The command tree of `shoal-lazyfs`: one module per group of subcommands, each parsing
//! its own arguments and returning the [`Exit`] of a completed command.
//!
//! - [`image`]: `convert`, `inspect`, `check`, `unpack`.
//! - [`node`]: `mount`, `snapshotter`, `containerd-config`.

mod image;
mod node;

use clap::{Parser, Subcommand};
use shoal_runtime::Exit;

#[derive(Parser)]
#[command(
    name = "shoal-lazyfs",
    version,
    about = "Convert container images to Shoal's lazyfs format and inspect, check, unpack or mount them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert an image or directory to lazyfs.
    ///
    /// The result is a runnable OCI image (containerd pulls it; the lazyfs snapshotter mounts
    /// it lazily) unless --artifact.
    ///
    /// SRC: HOST/REPO:TAG, oci:DIR[:TAG] or dir:PATH. DST: HOST/REPO:TAG or oci:DIR[:TAG].
    Convert(image::ConvertArgs),
    /// Summarize a lazyfs image.
    Inspect(image::InspectArgs),
    /// Verify index, blobs and every chunk; exit 3 naming each problem.
    Check(image::CheckArgs),
    /// Write the image's tree into OUTDIR (created; must be empty).
    Unpack(image::UnpackArgs),
    /// Mount a lazyfs image read-only with FUSE; chunks are fetched on first read.
    ///
    /// Runs in the foreground until SIGTERM/SIGINT (which unmount) or an external unmount.
    Mount(node::MountArgs),
    /// Serve containerd's remote snapshotter (proxy plugin `shoal`) on a unix socket.
    ///
    /// Layers of lazyfs images become lazy mounts (no download); other images are unpacked
    /// as with containerd's overlayfs snapshotter.
    Snapshotter(node::SnapshotterArgs),
    /// Make containerd run pods through the snapshotter: edits its config.toml (a backup is
    /// kept; --restore undoes it). containerd must be restarted once afterwards.
    ContainerdConfig(node::ContainerdConfigArgs),
}

pub fn run(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Convert(a) => image::convert_cmd(a),
        Command::Inspect(a) => image::inspect(a),
        Command::Check(a) => image::check(a),
        Command::Unpack(a) => image::unpack(a),
        Command::Mount(a) => node::mount(a),
        Command::Snapshotter(a) => node::snapshotter(a),
        Command::ContainerdConfig(a) => node::containerd_config(a),
    }
}
