//! The peer's HTTP servers. Handlers decode the request, call the engine or storage, and
//! encode the answer; nothing here knows how pieces are fetched.
//!
//! - [`p2p`]: byte ranges for other peers (`--p2p-listen`).
//! - [`local`]: the local download API (`--mirror-listen`).
//! - [`mirror`]: the OCI registry mirror (`--mirror-listen`, same listener as `local`).
//! - [`health`]: metrics and probes (`--metrics-listen`).
//! - [`error`]: the error replies at these edges (Shoal's JSON and the OCI format).
//! - [`range`]: Range header parsing.

pub mod error;
pub mod health;
pub mod local;
pub mod mirror;
pub mod p2p;
pub mod range;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on a bound listener until `cancel` fires.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(server = name, %addr, "listening");
    // Replies are streamed in pieces as they arrive (ranges and pieces in progress):
    // with Nagle on, each short tail segment waits for the client's delayed ACK, which put
    // up to 40 ms on every small range request.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Raises the soft open-files limit to the hard one and returns the limit in force. Every
/// client connection is a file: the usual soft limit (1024) would turn the thousandth
/// client of a crowd into an accept error (axum then pauses accepting) rather than a queued
/// request. Only the soft limit moves, within what the system allows this process.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}
