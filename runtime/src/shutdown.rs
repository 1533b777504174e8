//! The one way a Shoal process is asked to stop: SIGINT or SIGTERM cancels a token that
//! every server and task of the process watches, so shutdown is ordered by the owners of
//! the work rather than by the signal handler.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// SIGINT and SIGTERM, caught from the moment [`Signals::install`] returns (the default
/// action, dying on the spot, no longer applies).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Must be called inside a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. The handlers are in place when this
/// returns, so a signal that arrives right after (say, while a mount is being set up) is a
/// clean stop rather than a kill. Must be called inside a tokio runtime.
pub fn on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    match Signals::install() {
        Ok(mut signals) => {
            let c = cancel.clone();
            tokio::spawn(async move {
                signals.recv().await;
                tracing::info!("shutting down");
                c.cancel();
            });
        }
        // Without handlers the signals keep their default action: the process still stops.
        Err(e) => tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM"),
    }
    cancel
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let cancel = super::on_signal();
        let pid = std::process::id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("SIGTERM did not cancel the token");
    }
}
