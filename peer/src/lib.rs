//! shoal-peer: the node daemon. It is the node's download path (registry mirror and local API),
//! a piece server for other peers, and a verified disk cache.
//!
//! Dependency direction: `server` (handlers) → `engine` (download logic) → `source` (where
//! bytes come from) → `storage` (the cache); never back.
//!
//! - [`config`]: the one configuration struct and its validation.
//! - [`daemon`]: `shoal-peer run`, wiring everything and keeping the peer announced.
//! - [`engine`]: downloads shared among requesters, piece scheduling, streaming readers.
//! - [`source`]: the origin and parent peers as [`source::PieceSource`]s.
//! - [`storage`]: the crash-safe disk cache with quota and LRU eviction.
//! - [`supernode_client`]: the supernode protocol, with several supernodes by hashing.
//! - [`server`]: HTTP servers (piece server, local API, metrics and probes).
//! - [`get`]: the `shoal-peer get` client.
//! - [`upstream`], [`credentials`], [`access`]: upstream registries for the mirror (URL mapping,
//!   configured credentials, bearer-token auth, the blob access check's memory).
//! - [`containerd`]: `shoal-peer containerd-config` (hosts.toml files);
//!   [`containerd_check`]: `shoal-peer containerd-check` (does containerd read them).
//! - [`ratelimit`], [`metrics`], [`error`], [`trim`] (giving freed memory back when idle),
//!   [`singleflight`] (one upstream call shared by concurrent callers).

pub mod access;
pub mod config;
pub mod containerd;
pub mod containerd_check;
pub mod credentials;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod get;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod singleflight;
pub mod source;
pub mod storage;
pub mod supernode_client;
pub mod trim;
pub mod upstream;

pub use config::PeerConfig;
pub use error::{Error, Result};
