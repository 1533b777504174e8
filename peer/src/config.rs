//! The peer's configuration: one struct, read from a TOML file, then overridden by `SHOAL_*`
//! environment variables and flags, then validated once and used as is. The struct is
//! written once: serde names the file's keys, clap (`shoal_runtime::Overrides`) the flags
//! and variables; settings only a file can express are `#[arg(skip)]`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_common::{ByteRate, ByteSize};
use url::Url;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Supernode base URLs. Empty: run an embedded supernode (single node).
    #[arg(
        long = "supernode",
        env = "SHOAL_SUPERNODE",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub supernodes: Vec<Url>,
    /// Stable name of this peer; default: `<hostname>-<random>`, persisted in `data_dir`.
    #[arg(long, env = "SHOAL_PEER_ID")]
    pub peer_id: Option<String>,
    /// Where cached blobs live.
    #[arg(long, env = "SHOAL_DATA_DIR", required = false)]
    pub data_dir: PathBuf,
    /// Disk quota for cached blobs (bytes; `10GiB` style accepted).
    #[arg(long, env = "SHOAL_CACHE_SIZE", required = false)]
    pub cache_size: ByteSize,
    /// Registry mirror and local API (`shoal-peer get`). Local only by default: it serves what
    /// it holds to whoever asks.
    #[arg(long, env = "SHOAL_MIRROR_LISTEN", required = false)]
    pub mirror_listen: SocketAddr,
    /// Piece server for other peers.
    #[arg(long, env = "SHOAL_P2P_LISTEN", required = false)]
    pub p2p_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "SHOAL_METRICS_LISTEN", required = false)]
    pub metrics_listen: SocketAddr,
    /// Address announced to the supernode for the piece server: an IP (port taken from
    /// `p2p_listen`) or IP:port. Default: the local address used to reach the supernode.
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Labels announced to the supernode (e.g. `zone = "a"`): nearby parents are preferred.
    #[arg(skip)]
    pub labels: BTreeMap<String, String>,
    /// Upload limit for serving other peers (bytes per second; `100Mbit` style; 0 = unlimited).
    #[arg(long, env = "SHOAL_UPLOAD_RATE", required = false)]
    pub upload_rate: ByteRate,
    /// Download limit for fetching pieces (bytes per second; 0 = unlimited).
    #[arg(long, env = "SHOAL_DOWNLOAD_RATE", required = false)]
    pub download_rate: ByteRate,
    /// Registries reached over plain http instead of https (`host` or `host:port`).
    #[arg(
        long = "insecure-registry",
        env = "SHOAL_INSECURE_REGISTRY",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub insecure_registries: Vec<String>,
    /// Registry mirror: upstream registry host (`host` or `host:port`) for requests without
    /// `?ns=HOST` (containerd always sends it; other clients may not). None: such requests
    /// are refused.
    #[arg(long, env = "SHOAL_DEFAULT_UPSTREAM", value_name = "HOST")]
    pub default_upstream: Option<String>,
    /// Registry mirror: per-registry settings keyed by host (or host:port): the node's
    /// credentials (`username`/`password` or `token`), used when a client sends none, and
    /// `insecure`.
    #[arg(skip)]
    pub registries: BTreeMap<String, crate::credentials::RegistrySettings>,
    /// Registry mirror: before serving a cached blob, confirm upstream (a `HEAD` with the
    /// client's credentials, else the node's) that the client may read it.
    #[arg(skip)]
    pub verify_blob_access: bool,
    /// How long a positive access answer is remembered (per credential, repository and blob).
    #[serde(with = "humantime_serde")]
    #[arg(skip)]
    pub blob_access_ttl: Duration,
    /// Pieces fetched at once per task.
    #[arg(long, env = "SHOAL_CONCURRENT_PIECES", required = false)]
    pub concurrent_pieces: u32,
    /// Memory for piece buffers over all downloads together (bytes, e.g. "96MiB"): a piece is
    /// held whole until its sha256 is checked, so this bounds the peer's memory however many
    /// downloads run at once. At least the largest piece size (16 MiB).
    #[arg(long, env = "SHOAL_PIECE_MEMORY", required = false)]
    pub piece_memory: ByteSize,
    /// Memory for chunks read from the cache on their way to clients and peers, all
    /// connections together (bytes, e.g. "64MiB"): each reader holds at most one 256 KiB
    /// chunk until its socket takes it, and readers beyond this wait their turn (a thousand
    /// clients of one blob are queued, not refused, and do not each fill a write buffer).
    /// At least 256 KiB.
    #[arg(long, env = "SHOAL_SEND_MEMORY", required = false)]
    pub send_memory: ByteSize,
    /// Piece size for blobs this peer is the first to download (bytes, a power of two from
    /// 256 KiB to 16 MiB); 0 picks it from the blob length (about 128 pieces, at least 1 MiB). Peers that join a
    /// task later use the layout the supernode already has.
    #[arg(long, env = "SHOAL_PIECE_SIZE", required = false)]
    pub piece_size: ByteSize,
    /// Give up on one piece transfer from one source after this long.
    #[serde(with = "humantime_serde")]
    #[arg(skip)]
    pub piece_timeout: Duration,
    /// Connecting to the origin (a registry) times out after this long.
    #[serde(with = "humantime_serde")]
    #[arg(skip)]
    pub connect_timeout: Duration,
    /// Connecting to a parent peer times out after this long (a duration, e.g. "2s"). Peers
    /// are near each other: a parent that takes longer is treated as gone, its piece fetched
    /// elsewhere.
    #[serde(with = "humantime_serde")]
    #[arg(skip)]
    pub parent_connect_timeout: Duration,
    /// A parent that sends nothing for this long (no response head, or no body bytes in the
    /// middle of a piece) is abandoned: the piece is fetched elsewhere at once, the supernode
    /// is told, and this download avoids the parent for 30 s (a duration, e.g. "1s"; twice
    /// that for a parent relaying a piece still arriving). Piece servers send in 64 KiB
    /// slices, so a parent sending at `parent_min_rate` or more pauses at most 0.64 s.
    #[serde(with = "humantime_serde")]
    #[arg(skip)]
    pub parent_stall_timeout: Duration,
    /// A piece transfer from a parent averaging less than this (bytes per second, over the
    /// time spent waiting for it, judged once that reaches `parent_stall_timeout`) is
    /// abandoned like a stalled one; 0 = no floor. Low on purpose: a busy parent shares its
    /// uplink among many children, and slow parents are overtaken by the endgame instead.
    #[arg(skip)]
    pub parent_min_rate: ByteRate,
    /// Settings of the embedded supernode (used only when `supernodes` is empty).
    #[arg(skip)]
    pub embedded_supernode: shoal_supernode::SupernodeConfig,
    /// Log filter (`info`, `shoal_peer=debug`, ...).
    #[arg(long, env = "SHOAL_LOG", required = false, value_name = "FILTER")]
    pub log_level: String,
    /// Log line format: text or json.
    #[arg(
        long,
        env = "SHOAL_LOG_FORMAT",
        required = false,
        value_name = "FORMAT"
    )]
    pub log_format: shoal_runtime::LogFormat,
}

/// Smallest `piece_size` accepted: below it per-piece overhead (a request, a report, a
/// schedule entry) outweighs the faster pipelining.
const MIN_PIECE_SIZE_OVERRIDE: u64 = 256 << 10;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            supernodes: Vec::new(),
            peer_id: None,
            data_dir: PathBuf::from("/var/lib/shoal"),
            cache_size: ByteSize(20 << 30),
            mirror_listen: SocketAddr::from(([127, 0, 0, 1], 65001)),
            p2p_listen: SocketAddr::from(([0, 0, 0, 0], 65002)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 65003)),
            advertise_addr: None,
            labels: BTreeMap::new(),
            upload_rate: ByteRate(0),
            download_rate: ByteRate(0),
            insecure_registries: Vec::new(),
            default_upstream: None,
            registries: BTreeMap::new(),
            verify_blob_access: true,
            blob_access_ttl: Duration::from_secs(60),
            concurrent_pieces: 8,
            piece_memory: ByteSize(96 << 20),
            send_memory: ByteSize(64 << 20),
            piece_size: ByteSize(0),
            piece_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            parent_connect_timeout: Duration::from_secs(2),
            parent_stall_timeout: Duration::from_secs(1),
            parent_min_rate: ByteRate(100 << 10),
            embedded_supernode: shoal_supernode::SupernodeConfig::default(),
            log_level: "info".into(),
            log_format: shoal_runtime::LogFormat::Text,
        }
    }
}

impl PeerConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.cache_size.0 < (16 << 20) {
            return bad(format!(
                "cache_size {} is too small (minimum 16MiB)",
                self.cache_size
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        if !(1..=256).contains(&self.concurrent_pieces) {
            return bad(format!(
                "concurrent_pieces {} must be between 1 and 256",
                self.concurrent_pieces
            ));
        }
        let ps = self.piece_size.0;
        if ps != 0
            && (!ps.is_power_of_two()
                || !(MIN_PIECE_SIZE_OVERRIDE..=shoal_common::piece::MAX_PIECE_SIZE).contains(&ps))
        {
            return bad(format!(
                "piece_size {} must be 0 (automatic) or a power of two from 256 KiB to 16 MiB",
                self.piece_size
            ));
        }
        if self.piece_memory.0 < shoal_common::piece::MAX_PIECE_SIZE {
            return bad(format!(
                "piece_memory {} must be at least the largest piece size (16 MiB)",
                self.piece_memory
            ));
        }
        if self.send_memory.0 < (256 << 10) {
            return bad(format!(
                "send_memory {} must be at least one read chunk (256 KiB)",
                self.send_memory
            ));
        }
        if self.piece_timeout < Duration::from_secs(1) || self.connect_timeout.is_zero() {
            return bad("piece_timeout must be at least 1s and connect_timeout above 0".into());
        }
        if self.parent_connect_timeout.is_zero() {
            return bad("parent_connect_timeout must be above 0".into());
        }
        if self.parent_stall_timeout < Duration::from_millis(100)
            || self.parent_stall_timeout > self.piece_timeout
        {
            return bad(format!(
                "parent_stall_timeout {} must be between 100ms and piece_timeout ({})",
                humantime_serde::re::humantime::format_duration(self.parent_stall_timeout),
                humantime_serde::re::humantime::format_duration(self.piece_timeout)
            ));
        }
        for url in &self.supernodes {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return bad(format!(
                    "supernode {url} must be an http(s) URL with a host"
                ));
            }
        }
        if let Some(id) = &self.peer_id {
            shoal_common::api::validate_peer_id(id).map_err(Error::Config)?;
        }
        if let Some(addr) = &self.advertise_addr {
            parse_advertise(addr, self.p2p_listen.port())?;
        }
        for host in &self.insecure_registries {
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return bad(format!(
                    "insecure registry {host:?} must be a host or host:port"
                ));
            }
        }
        if let Some(host) = &self.default_upstream {
            if !crate::upstream::valid_host(host) {
                return bad(format!(
                    "default_upstream {host:?} must be a host or host:port"
                ));
            }
        }
        for (host, settings) in &self.registries {
            settings.validate(host)?;
        }
        if self.blob_access_ttl > Duration::from_secs(3600) {
            return bad("blob_access_ttl must be at most 1h".into());
        }
        self.embedded_supernode
            .validate()
            .map_err(|e| Error::Config(format!("embedded_supernode: {e}")))?;
        Ok(())
    }
}

/// `IP` or `IP:PORT`; the port defaults to the piece server's.
pub fn parse_advertise(addr: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    addr.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            Error::Config(format!(
                "advertise_addr {addr:?} must be an IP address or IP:port"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        PeerConfig::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_rejects_unknown() {
        let c = PeerConfig::from_toml(
            "cache_size = \"1GiB\"\nupload_rate = \"100Mbit\"\npiece_timeout = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(c.cache_size.0, 1 << 30);
        assert_eq!(c.upload_rate.0, 12_500_000);
        assert_eq!(c.piece_timeout, Duration::from_secs(10));
        let err = PeerConfig::from_toml("cache_sise = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_sise"), "{err}");
        assert!(PeerConfig::from_toml("cache_size = \"lots\"").is_err());
    }

    #[test]
    fn parent_timeouts_read_and_checked() {
        let c = PeerConfig::from_toml(
            "parent_connect_timeout = \"500ms\"\nparent_stall_timeout = \"1s\"\nparent_min_rate = \"1MiB\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.parent_connect_timeout, Duration::from_millis(500));
        assert_eq!(c.parent_stall_timeout, Duration::from_secs(1));
        assert_eq!(c.parent_min_rate.0, 1 << 20);
        let c = PeerConfig {
            parent_stall_timeout: Duration::from_secs(120),
            ..Default::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("parent_stall_timeout"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let c = PeerConfig {
            cache_size: ByteSize(10),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("cache_size"));
        let c = PeerConfig {
            advertise_addr: Some("not-an-ip".into()),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("advertise_addr"));
        let c = PeerConfig::from_toml(
            "[registries.\"r.io\"]\nusername = \"u\"\n[registries.\"a/b\"]\ninsecure = true\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("r.io") || e.contains("a/b"), "{e}");
        for (size, ok) in [
            (0, true),
            (256 << 10, true),
            (3 << 20, false),
            (128 << 10, false),
        ] {
            let c = PeerConfig {
                piece_size: ByteSize(size),
                ..Default::default()
            };
            match c.validate() {
                Ok(()) => assert!(ok, "piece_size {size} accepted"),
                Err(e) => assert!(!ok && e.to_string().contains("piece_size"), "{e}"),
            }
        }
        let c = PeerConfig {
            piece_memory: ByteSize(1 << 20),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("piece_memory"));
        assert_eq!(
            parse_advertise("10.0.0.1", 65002).unwrap(),
            "10.0.0.1:65002".parse().unwrap()
        );
    }
}
