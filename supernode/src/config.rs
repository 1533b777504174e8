//! The supernode's configuration: one struct, read from a TOML file, overridden by `SHOAL_*`
//! environment variables and flags, checked by [`SupernodeConfig::validate`]. The binary does
//! the loading (`shoal_runtime::Overrides`); the struct names both the file's keys (serde)
//! and the flags (clap; `global` so they also follow `check-config`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use shoal_runtime::LogFormat;

use crate::error::Error;

/// Everything the supernode can be told. Durations are written the humantime way (`"15s"`,
/// `"10m"`); every field has a default, and unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct SupernodeConfig {
    /// Address the API, `/metrics`, `/healthz` and `/readyz` are served on.
    #[arg(
        long,
        env = "SHOAL_LISTEN",
        global = true,
        required = false,
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// A peer silent for this long is forgotten with all its pieces, assignments and leases.
    #[serde(with = "humantime_serde")]
    #[arg(long, env = "SHOAL_PEER_TTL", global = true, required = false, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub peer_ttl: Duration,
    /// How often peers are told to send a heartbeat; well below `peer_ttl`.
    #[serde(with = "humantime_serde")]
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL", global = true, required = false, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// A piece assigned to a peer (from a parent) counts as in flight for at most this long.
    #[serde(with = "humantime_serde")]
    #[arg(long, env = "SHOAL_ASSIGNMENT_TIMEOUT", global = true, required = false, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub assignment_timeout: Duration,
    /// A peer allowed to fetch a piece from the origin keeps that exclusive lease this long.
    #[serde(with = "humantime_serde")]
    #[arg(long, env = "SHOAL_ORIGIN_LEASE_TIMEOUT", global = true, required = false, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub origin_lease_timeout: Duration,
    /// At most this many live peers per task may go back to the origin (count).
    #[arg(
        long,
        env = "SHOAL_MAX_ORIGIN_PEERS_PER_TASK",
        global = true,
        required = false,
        value_name = "N"
    )]
    pub max_origin_peers_per_task: u32,
    /// Origin leases in flight per task, over all its origin peers (count). Few pieces at a
    /// time means each finishes quickly and peers can pass it on while the origin sends the
    /// next ones; many pieces at once share the origin's uplink and all finish late. Each
    /// origin peer gets an equal share of these (at least one). Keep it at about the peers'
    /// `concurrent_pieces`: origin transfers share the receivers' downlinks with their peer
    /// transfers, so fewer leases leave the origin's uplink partly idle (docs/design.md).
    #[arg(
        long,
        env = "SHOAL_MAX_ORIGIN_PIECES_IN_FLIGHT",
        global = true,
        required = false,
        value_name = "N"
    )]
    pub max_origin_pieces_in_flight: u32,
    /// Parents offered per assignment, best first (count).
    #[arg(
        long,
        env = "SHOAL_MAX_PARENTS",
        global = true,
        required = false,
        value_name = "N"
    )]
    pub max_parents: u32,
    /// Assignments in flight to one parent (per task) before it counts as saturated (count).
    #[arg(
        long,
        env = "SHOAL_MAX_UPLOADS_PER_PARENT",
        global = true,
        required = false,
        value_name = "N"
    )]
    pub max_uploads_per_parent: u32,
    /// A task with no peers for this long is forgotten.
    #[serde(with = "humantime_serde")]
    #[arg(long, env = "SHOAL_TASK_GC_AFTER", global = true, required = false, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub task_gc_after: Duration,
    /// Log filter: a level (`info`) or a `tracing` directive list (`shoal_supernode=debug`).
    /// `RUST_LOG`, when set, wins; `SHOAL_LOG_LEVEL` is the variable's older spelling.
    #[arg(
        long,
        env = "SHOAL_LOG",
        global = true,
        required = false,
        value_name = "FILTER"
    )]
    pub log_level: String,
    /// Log line format.
    #[arg(
        long,
        env = "SHOAL_LOG_FORMAT",
        global = true,
        required = false,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

impl Default for SupernodeConfig {
    fn default() -> Self {
        SupernodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8002)),
            peer_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            assignment_timeout: Duration::from_secs(30),
            origin_lease_timeout: Duration::from_secs(60),
            max_origin_peers_per_task: 16,
            max_origin_pieces_in_flight: 8,
            max_parents: 3,
            max_uploads_per_parent: 8,
            task_gc_after: Duration::from_secs(600),
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// Upper bound for the counts, to keep a typo from turning into a denial of service.
const MAX_COUNT: u32 = 1024;

impl SupernodeConfig {
    /// The config as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(format!("cannot print: {e}")))
    }

    /// Checks the values make sense together; the error names the field and the problem.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (name, d) in [
            ("peer_ttl", self.peer_ttl),
            ("heartbeat_interval", self.heartbeat_interval),
            ("assignment_timeout", self.assignment_timeout),
            ("origin_lease_timeout", self.origin_lease_timeout),
            ("task_gc_after", self.task_gc_after),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be longer than 0s"));
            }
            if d > Duration::from_secs(7 * 24 * 3600) {
                return bad(format!("{name} must be at most a week"));
            }
        }
        if self.heartbeat_interval * 2 > self.peer_ttl {
            return bad(format!(
                "heartbeat_interval ({}) must be at most half of peer_ttl ({}), or peers expire between heartbeats",
                humantime::format_duration(self.heartbeat_interval),
                humantime::format_duration(self.peer_ttl)
            ));
        }
        for (name, n) in [
            ("max_origin_peers_per_task", self.max_origin_peers_per_task),
            (
                "max_origin_pieces_in_flight",
                self.max_origin_pieces_in_flight,
            ),
            ("max_parents", self.max_parents),
            ("max_uploads_per_parent", self.max_uploads_per_parent),
        ] {
            if n == 0 || n > MAX_COUNT {
                return bad(format!("{name} must be between 1 and {MAX_COUNT}, not {n}"));
            }
        }
        if let Err(e) = shoal_runtime::logging::check_filter(&self.log_level) {
            return bad(format!("log_level: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip() {
        let c = SupernodeConfig::default();
        c.validate().unwrap();
        let text = c.to_toml().unwrap();
        assert!(text.contains("peer_ttl = \"15s\""), "{text}");
        let back: SupernodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn partial_files_and_unknown_fields() {
        let c: SupernodeConfig = toml::from_str("peer_ttl = \"1m\"\nmax_parents = 5\n").unwrap();
        assert_eq!(c.peer_ttl, Duration::from_secs(60));
        assert_eq!(c.max_parents, 5);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
        assert!(toml::from_str::<SupernodeConfig>("peer_tll = \"1m\"").is_err());
    }

    #[test]
    fn rejects_nonsense() {
        let mut c = SupernodeConfig {
            heartbeat_interval: Duration::from_secs(10),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heartbeat_interval"));
        c = SupernodeConfig {
            max_parents: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_parents"));
        c = SupernodeConfig {
            log_level: "[[[".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
