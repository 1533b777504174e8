//! The one way a Shoal process is asked to stop: SIGINT or SIGTERM cancels a token that
//! every server and task of the process watches, so shutdown is ordered by the owners of
//! the work rather than by the signal handler.

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT or SIGTERM. A signal that cannot be watched is ignored
/// (the other still works), so this never resolves spuriously.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub fn on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        c.cancel();
    });
    cancel
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let cancel = super::on_signal();
        // Let the task install its handlers before the signal arrives.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
