//! Another peer's piece server, serving ranges of a task it holds (complete or in progress).

use std::net::SocketAddr;
use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::HeaderMap;
use shoal_common::api::{FailReason, PeerId};
use shoal_common::TaskId;

use super::http::{FetchFailure, HttpFetcher};
use super::PieceSource;
use crate::error::{Error, ParentFault, Result};
use crate::storage::RelayWriter;

/// The piece server path for a task's bytes (shared with the server side).
pub fn data_path(task: &TaskId) -> String {
    format!("/api/v1/tasks/{task}/data")
}

pub struct ParentPeer<'r> {
    peer_id: PeerId,
    url: String,
    http: HttpFetcher,
    length: u64,
    relay: Option<&'r RelayWriter>,
}

impl<'r> ParentPeer<'r> {
    pub fn new(
        peer_id: PeerId,
        addr: SocketAddr,
        task: &TaskId,
        length: u64,
        http: HttpFetcher,
    ) -> Self {
        ParentPeer {
            url: format!("http://{addr}{}", data_path(task)),
            peer_id,
            http,
            length,
            relay: None,
        }
    }

    /// Passes the bytes on to `relay` as they arrive.
    pub fn relaying(mut self, relay: &'r RelayWriter) -> Self {
        self.relay = Some(relay);
        self
    }
}

impl PieceSource for ParentPeer<'_> {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            self.http
                .get_range(
                    &self.url,
                    &HeaderMap::new(),
                    range,
                    Some(self.length),
                    self.relay,
                )
                .await
                .map_err(|f| {
                    let reason = match &f {
                        FetchFailure::Status(404 | 416, ..) => FailReason::NotFound,
                        FetchFailure::Transport(m) if m.contains("timed out") => {
                            FailReason::Timeout
                        }
                        // The relaying parent's own source may be the one that stalled, and
                        // the parent will cut its readers off when it notices: not its fault.
                        FetchFailure::Stalled { relayed: true, .. } => FailReason::Interrupted,
                        FetchFailure::Stalled { .. } => FailReason::Timeout,
                        FetchFailure::Transport(_) | FetchFailure::Connect { .. } => {
                            FailReason::Unreachable
                        }
                        FetchFailure::Interrupted(_) => FailReason::Interrupted,
                        FetchFailure::Status(..) | FetchFailure::Protocol(_) => {
                            FailReason::Unreachable
                        }
                    };
                    Error::Parent {
                        peer: self.peer_id.clone(),
                        message: f.to_string(),
                        reason,
                        fault: match f {
                            FetchFailure::Connect { refused: true, .. } => ParentFault::Refused,
                            FetchFailure::Stalled { relayed: true, .. } => {
                                ParentFault::RelayStalled
                            }
                            _ => ParentFault::Other,
                        },
                    }
                })
        })
    }
}
