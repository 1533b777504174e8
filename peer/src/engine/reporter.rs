//! Sends piece reports to the supernode as soon as possible, batching whatever piles up while
//! a request is in flight. Reports are what let other peers fetch from us, so they must not
//! wait behind a long-poll.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_common::api::{PieceDone, PieceFailed, PieceReport, UploadCut};
use shoal_common::TaskId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::PeerMetrics;
use crate::supernode_client::SupernodeClient;

pub enum ReportItem {
    Done(PieceDone),
    Failed(PieceFailed),
    /// One of our uploads broke off (see [`UploadCut`]).
    UploadCut(UploadCut),
}

#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<(TaskId, ReportItem)>,
}

impl Reporter {
    pub fn spawn(
        client: Arc<SupernodeClient>,
        metrics: PeerMetrics,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(TaskId, ReportItem)>();
        tracker.spawn(async move {
            loop {
                let first = tokio::select! {
                    item = rx.recv() => match item { Some(i) => i, None => break },
                    _ = cancel.cancelled() => break,
                };
                let mut batches: HashMap<TaskId, PieceReport> = HashMap::new();
                let mut add = |(task, item): (TaskId, ReportItem)| {
                    let report = batches.entry(task).or_insert_with(|| PieceReport {
                        peer_id: client.peer_id().to_owned(),
                        done: Vec::new(),
                        failed: Vec::new(),
                        uploads_cut: Vec::new(),
                    });
                    match item {
                        ReportItem::Done(d) => report.done.push(d),
                        ReportItem::Failed(f) => report.failed.push(f),
                        ReportItem::UploadCut(c) => report.uploads_cut.push(c),
                    }
                };
                add(first);
                while let Ok(item) = rx.try_recv() {
                    add(item);
                }
                let sends = batches.into_iter().map(|(task, report)| {
                    let client = client.clone();
                    let metrics = metrics.clone();
                    async move {
                        match client.report(&task, &report).await {
                            Ok(reply) if !reply.rejected.is_empty() => {
                                tracing::warn!(%task, rejected = ?reply.rejected, "supernode rejected piece reports");
                            }
                            Ok(_) => {}
                            Err(e) => {
                                metrics.supernode_errors.inc();
                                tracing::warn!(%task, error = %e, "piece report failed");
                            }
                        }
                    }
                });
                futures::future::join_all(sends).await;
            }
        });
        Reporter { tx }
    }

    pub fn send(&self, task: TaskId, item: ReportItem) {
        // The receiver only goes away at shutdown, when reports no longer matter.
        let _ = self.tx.send((task, item));
    }
}
