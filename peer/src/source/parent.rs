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
use crate::error::{Error, Result};

/// The piece server path for a task's bytes (shared with the server side).
pub fn data_path(task: &TaskId) -> String {
    format!("/api/v1/tasks/{task}/data")
}

pub struct ParentPeer {
    peer_id: PeerId,
    url: String,
    http: HttpFetcher,
    length: u64,
}

impl ParentPeer {
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
        }
    }
}

impl PieceSource for ParentPeer {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            self.http
                .get_range(&self.url, &HeaderMap::new(), range, Some(self.length))
                .await
                .map_err(|f| {
                    let reason = match &f {
                        FetchFailure::Status(404 | 416, _) => FailReason::NotFound,
                        FetchFailure::Transport(m) if m.contains("timed out") => {
                            FailReason::Timeout
                        }
                        FetchFailure::Transport(_) => FailReason::Unreachable,
                        FetchFailure::Status(..) | FetchFailure::Protocol(_) => {
                            FailReason::Unreachable
                        }
                    };
                    Error::Parent {
                        peer: self.peer_id.clone(),
                        message: f.to_string(),
                        reason,
                    }
                })
        })
    }
}
