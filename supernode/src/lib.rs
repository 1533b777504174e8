//! Shoal's supernode: knows the live peers and which pieces of which task each holds, tells
//! each peer whom to fetch each piece from, and lets only a few peers go back to the origin,
//! so the origin sends each byte about once. It never touches piece data. All state is in
//! memory; a restarted supernode relearns it from peers re-announcing.
//!
//! - [`config`]: [`SupernodeConfig`], its defaults and validation.
//! - [`error`]: the crate's [`Error`].
//! - `state`: peers, tasks, and the domain operations behind each API call.
//! - [`schedule`]: the scheduling policy and the [`ParentSelector`] trait.
//! - `api`: the HTTP router, handlers and error replies (protocol: `shoal_common::api`).
//! - [`status`]: the listing endpoints' JSON (`GET /api/v1/peers`, `GET /api/v1/tasks`).
//! - `metrics`: Prometheus metrics (`shoal_supernode_*`).
//! - `supernode`: [`Supernode`], tying it together and serving it.
//! - `ui`: the live status page `GET /ui` and its JSON, `GET /api/v1/status` ([`StatusSummary`]).

mod api;
pub mod config;
pub mod error;
mod metrics;
pub mod schedule;
mod state;
pub mod status;
mod supernode;
mod ui;

pub use api::MAX_BODY_BYTES;
pub use config::SupernodeConfig;
pub use error::Error;
pub use schedule::{Candidate, LeastLoaded, ParentSelector, Requester};
pub use shoal_runtime::LogFormat;
pub use status::BytesBySource;
pub use status::{PeerStatus, TaskPeerStatus, TaskStatus};
pub use supernode::Supernode;
pub use ui::{StatusSummary, TaskSummary};
