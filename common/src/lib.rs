//! Types every Shoal crate shares. Kept deliberately small: no servers, no I/O.
//!
//! - [`digest`]: validated `sha256:<hex>` content digests and streaming hashing.
//! - [`task`]: the identity of a download (a blob): its digest, or a hash of its normalised URL.
//! - [`piece`]: how a task is cut into fixed-size pieces, identical on every peer.
//! - [`pieceset`]: a compact set of piece indices (what a peer holds).
//! - [`api`]: the JSON messages exchanged between peers and supernodes.
//! - [`hashring`]: which supernode owns a task when several share the work.
//! - [`registry`]: the OCI distribution protocol's pure parts: image references, registry
//!   hosts and URLs, auth challenges, tokens, Basic credentials (the client is `shoal-registry`).
//! - [`size`]: human byte sizes and rates for configs (`10GiB`, `100Mbit`).
//! - [`error`]: parse errors for all of the above.

pub mod api;
pub mod digest;
pub mod error;
pub mod hashring;
pub mod piece;
pub mod pieceset;
pub mod registry;
pub mod size;
pub mod task;

pub use digest::{Digest, Sha256Hasher};
pub use error::ParseError;
pub use hashring::HashRing;
pub use piece::PieceLayout;
pub use pieceset::PieceSet;
pub use size::{ByteRate, ByteSize};
pub use task::TaskId;

/// Header a peer sets on its requests to other peers and supernodes, naming itself.
pub const PEER_ID_HEADER: &str = "x-shoal-peer-id";

/// Set (to `1`) on a piece server's answer that passes on a piece still arriving from the
/// server's own source: if the bytes stop, the fault may be that source's, not the server's.
pub const RELAY_HEADER: &str = "x-shoal-relay";
