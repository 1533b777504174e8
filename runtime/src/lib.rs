//! What every Shoal binary does the same way, so that `shoal-peer`, `shoal-supernode` and
//! `shoal-lazyfs` start, log, stop, expose metrics and fail alike.
//!
//! - [`config`]: file → `SHOAL_*` environment → flags into one config struct ([`Overrides`]).
//! - [`logging`]: one tracing setup; `SHOAL_LOG` (or `RUST_LOG`) and text/json lines.
//! - [`shutdown`]: SIGINT/SIGTERM → a [`CancellationToken`](tokio_util::sync::CancellationToken).
//! - [`metrics`]: one `/metrics` encoder and handler with the standard content type.
//! - [`exit`]: the exit-code table shared by the binaries ([`Exit`]).
//! - [`error`]: the crate's [`Error`].

pub mod config;
pub mod error;
pub mod exit;
pub mod logging;
pub mod metrics;
pub mod shutdown;

pub use config::{Overrides, Switch};
pub use error::Error;
pub use exit::Exit;
pub use logging::LogFormat;
