//! One tracing setup for every binary. The filter comes from `RUST_LOG` when set (the
//! ecosystem's convention, so library debugging works as everywhere else), otherwise from
//! `SHOAL_LOG` (or the binary's config/flag resolved from it); lines go to stderr so that
//! commands printing results on stdout (`check-config`, `convert`) stay machine-readable.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The log filter variable of every Shoal binary.
pub const ENV: &str = "SHOAL_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is not \"text\" or \"json\"")),
        }
    }
}

/// `SHOAL_LOG`, or `default` when unset.
pub fn filter_from_env(default: &str) -> String {
    std::env::var(ENV).unwrap_or_else(|_| default.to_owned())
}

/// Makes `old` an accepted spelling of `SHOAL_LOG` (when `SHOAL_LOG` itself is unset), so
/// deployments written against an older variable keep their log level. Call it first thing
/// in `main`, before any thread exists: it edits the process environment.
pub fn accept_old_variable(old: &str) {
    if std::env::var_os(ENV).is_none() {
        if let Some(v) = std::env::var_os(old) {
            std::env::set_var(ENV, v);
        }
    }
}

/// Whether `filter` is a valid filter, with the parser's complaint when not.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("log filter {filter:?}: {e}"))
}

/// Installs the global subscriber: `RUST_LOG` if set and valid, else `filter`, else `info`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_filters_are_checked() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
        assert!(check_filter("info,shoal_peer=debug").is_ok());
        assert!(check_filter("[[[").is_err());
    }
}
