//! [`Supernode`]: the state, the router over it, and the serving loop with its housekeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SupernodeConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::schedule::{LeastLoaded, ParentSelector};
use crate::state::State;

/// How often silent peers, stale assignments and idle tasks are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A supernode, ready to be served (by [`Supernode::serve`]) or embedded in another server
/// (by [`Supernode::router`] plus [`Supernode::run_sweeper`]).
pub struct Supernode {
    config: SupernodeConfig,
    state: State,
    /// Cancelled when serving stops: long-polls return at once and `/readyz` says 503.
    shutdown: CancellationToken,
}

impl Supernode {
    /// Validates the config and registers the metrics into `registry` (served on `/metrics`).
    pub fn new(
        config: SupernodeConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, Error> {
        Self::with_parent_selector(config, registry, Arc::new(LeastLoaded))
    }

    /// Like [`Supernode::new`] with another parent-ranking policy.
    pub fn with_parent_selector(
        config: SupernodeConfig,
        registry: &prometheus::Registry,
        selector: Arc<dyn ParentSelector>,
    ) -> Result<Arc<Self>, Error> {
        config.validate()?;
        let metrics = Metrics::new(registry)?;
        Ok(Arc::new(Supernode {
            state: State::new(config.clone(), metrics, selector),
            config,
            shutdown: CancellationToken::new(),
        }))
    }

    pub fn config(&self) -> &SupernodeConfig {
        &self.config
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The API routes plus `/metrics`, `/healthz` and `/readyz`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        crate::api::router(self.clone())
    }

    /// Serves on an already-bound listener until `cancel` fires (then finishes the requests in
    /// progress, long-polls ending at once); also runs the expiry sweeper.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "supernode serving");
        }
        let stop = cancel.child_token();
        let tracker = TaskTracker::new();
        tracker.spawn(self.clone().run_sweeper(stop.clone()));
        let shutdown = self.shutdown.clone();
        let stopped = stop.clone();
        tracker.spawn(async move {
            stopped.cancelled().await;
            shutdown.cancel();
        });
        // Small JSON replies: no Nagle delay behind the client's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
            }
        });
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await
            .map_err(Error::Serve);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::info!("supernode stopped");
        result
    }

    /// Expires silent peers, stale assignments and leases, and idle tasks, every second, until
    /// `cancel` fires. [`Supernode::serve`] runs it; embedders of the bare router must.
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.state.sweep(Instant::now()),
            }
        }
    }
}
