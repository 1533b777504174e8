//! The command line of `shoal-supernode` (binary only). Every flag can also be set through a
//! `SHOAL_*` environment variable; precedence: flags > environment > config file > defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shoal_supernode::{Error, LogFormat, SupernodeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-supernode",
    version,
    about = "Shoal's scheduler: tells peers where to fetch each piece of a blob."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the configuration, then print it as TOML.
    CheckConfig,
}

#[derive(Debug, Args)]
pub struct Options {
    /// Config file (TOML); fields left out keep their defaults.
    #[arg(long, env = "SHOAL_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve the API, /metrics, /healthz and /readyz on [default: 0.0.0.0:8002].
    #[arg(long, env = "SHOAL_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Forget a peer silent for this long, e.g. "15s".
    #[arg(long, env = "SHOAL_PEER_TTL", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub peer_ttl: Option<Duration>,
    /// Heartbeat interval peers are told to use, e.g. "3s".
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Option<Duration>,
    /// How long an assignment counts as in flight, e.g. "30s".
    #[arg(long, env = "SHOAL_ASSIGNMENT_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub assignment_timeout: Option<Duration>,
    /// How long an exclusive origin lease on a piece lasts, e.g. "60s".
    #[arg(long, env = "SHOAL_ORIGIN_LEASE_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub origin_lease_timeout: Option<Duration>,
    /// Live peers per task allowed to fetch from the origin.
    #[arg(
        long,
        env = "SHOAL_MAX_ORIGIN_PEERS_PER_TASK",
        global = true,
        value_name = "N"
    )]
    pub max_origin_peers_per_task: Option<u32>,
    /// Origin leases in flight per task, over all its origin peers.
    #[arg(
        long,
        env = "SHOAL_MAX_ORIGIN_PIECES_IN_FLIGHT",
        global = true,
        value_name = "N"
    )]
    pub max_origin_pieces_in_flight: Option<u32>,
    /// Parents offered per assignment.
    #[arg(long, env = "SHOAL_MAX_PARENTS", global = true, value_name = "N")]
    pub max_parents: Option<u32>,
    /// Assignments in flight to one parent before it is saturated.
    #[arg(
        long,
        env = "SHOAL_MAX_UPLOADS_PER_PARENT",
        global = true,
        value_name = "N"
    )]
    pub max_uploads_per_parent: Option<u32>,
    /// Forget a task without peers after this long, e.g. "10m".
    #[arg(long, env = "SHOAL_TASK_GC_AFTER", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub task_gc_after: Option<Duration>,
    /// Log filter, e.g. "info" or "shoal_supernode=debug" (RUST_LOG wins when set).
    #[arg(long, env = "SHOAL_LOG_LEVEL", global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "SHOAL_LOG_FORMAT", global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Options {
    /// The config file (or defaults) with the flags and environment applied, validated.
    pub fn resolve(&self) -> Result<SupernodeConfig, Error> {
        let mut c = match &self.config {
            Some(path) => SupernodeConfig::from_file(path)?,
            None => SupernodeConfig::default(),
        };
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        set(&mut c.listen, &self.listen);
        set(&mut c.peer_ttl, &self.peer_ttl);
        set(&mut c.heartbeat_interval, &self.heartbeat_interval);
        set(&mut c.assignment_timeout, &self.assignment_timeout);
        set(&mut c.origin_lease_timeout, &self.origin_lease_timeout);
        set(
            &mut c.max_origin_peers_per_task,
            &self.max_origin_peers_per_task,
        );
        set(
            &mut c.max_origin_pieces_in_flight,
            &self.max_origin_pieces_in_flight,
        );
        set(&mut c.max_parents, &self.max_parents);
        set(&mut c.max_uploads_per_parent, &self.max_uploads_per_parent);
        set(&mut c.task_gc_after, &self.task_gc_after);
        set(&mut c.log_level, &self.log_level);
        set(&mut c.log_format, &self.log_format);
        c.validate()?;
        Ok(c)
    }
}
