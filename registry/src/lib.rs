//! Shoal's one client of the OCI distribution protocol, used by the peer's mirror, the
//! lazyfs converter and the lazyfs mount. The protocol's pure parts (references, hosts,
//! challenges, tokens) are in `shoal_common::registry`; this crate adds HTTP.
//!
//! - [`client`]: sending a request: credentials, bearer tokens and their cache, retries.
//! - [`retry`]: the one retry policy (5xx, 429 with `Retry-After`, resets, timeouts).
//! - [`repository`]: the distribution API's operations on one repository, direct or
//!   through a peer's mirror.
//! - [`error`]: the crate's error type, with a notion of what is retryable.

pub mod client;
pub mod error;
pub mod repository;
pub mod retry;

pub use client::{
    check, read_limited, Auth, AuthorizedResponse, Client, ClientOptions, Payload, Request,
};
pub use error::{Error, Result};
pub use repository::Repository;
pub use retry::RetryPolicy;
