//! Where piece bytes come from. A [`PieceSource`] returns the exact bytes of a byte range, or
//! an error saying why not; verification is the caller's job (the engine checks sha256 before
//! anything is stored), so a source can be as untrusted as a random peer.

mod auth_pool;
pub(crate) mod http;
mod liveness;
mod origin;
mod parent;

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::Result;
pub use auth_pool::AuthPool;
pub use http::HttpFetcher;
pub use liveness::Liveness;
pub use origin::{Origin, OriginAuth};
pub use parent::ParentPeer;

pub trait PieceSource: Send + Sync {
    /// Fetches exactly `range` of the task's blob.
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>>;
}
