//! The command line of `shoal-supernode` (binary only): the config file, then every
//! [`SupernodeConfig`] setting as a `SHOAL_*` variable or flag (flags win; see
//! `shoal_runtime::config`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shoal_runtime::Overrides;
use shoal_supernode::SupernodeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-supernode",
    version,
    about = "Shoal's scheduler: tells peers where to fetch each piece of a blob."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (TOML); fields left out keep their defaults.
    #[arg(long, env = "SHOAL_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Overrides<SupernodeConfig>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the configuration, then print it as TOML.
    CheckConfig,
}

impl Cli {
    /// The config file (or defaults) with the environment and flags applied, validated.
    pub fn resolve(&self) -> Result<SupernodeConfig, shoal_runtime::Error> {
        let config = self.settings.resolve(self.config.as_deref())?;
        config.validate().map_err(shoal_runtime::Error::invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn flags_follow_the_subcommand_and_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sn.toml");
        std::fs::write(&file, "max_parents = 5\npeer_ttl = \"1m\"\n").unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::try_parse_from([
            "shoal-supernode",
            "check-config",
            "--config",
            f,
            "--max-parents",
            "7",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::CheckConfig)));
        let c = cli.resolve().unwrap();
        assert_eq!((c.max_parents, c.peer_ttl), (7, Duration::from_secs(60)));
        let cli =
            Cli::try_parse_from(["shoal-supernode", "--config", f, "--peer-ttl", "2s"]).unwrap();
        let e = cli.resolve().unwrap_err().to_string();
        assert!(e.contains("heartbeat_interval"), "{e}");
    }
}
