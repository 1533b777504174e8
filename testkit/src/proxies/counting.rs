//! A TCP proxy that counts the bytes flowing from its upstream to clients.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{listen, port_of, Stop};

/// Counts what the upstream sends back (for a registry: the origin's egress). It can also
/// stall ([`CountingProxy::set_stall`]) and take the upstream "down" at an exact moment
/// ([`CountingProxy::arm_gate`]).
pub struct CountingProxy {
    /// `127.0.0.1:PORT` to send requests to.
    pub addr: String,
    pub port: u16,
    shared: Arc<Shared>,
    _stop: Stop,
}

#[derive(Default)]
struct Shared {
    down_bytes: AtomicU64,
    /// While set, new connections are accepted and left unanswered, and open ones hold
    /// whatever arrives.
    stall: AtomicBool,
    gate: Gate,
}

/// Once armed with a string, the first request naming it trips the gate; from then on every
/// connection, open or new, is cut before anything more is forwarded.
#[derive(Default)]
struct Gate {
    needle: Mutex<Option<Vec<u8>>>,
    down: AtomicBool,
}

impl CountingProxy {
    /// Proxies to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> CountingProxy {
        let shared = Arc::new(Shared::default());
        let (sh, upstream) = (shared.clone(), upstream.to_string());
        let (addr, stop) = listen(move |client, _| serve(client, &upstream, &sh));
        CountingProxy {
            port: port_of(&addr),
            addr,
            shared,
            _stop: stop,
        }
    }

    /// Bytes sent by the upstream to clients so far.
    pub fn bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }

    /// Holds every connection (open and new) while `on`.
    pub fn set_stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }

    /// From now on, the first request naming `needle` takes the upstream down.
    pub fn arm_gate(&self, needle: &str) {
        *self
            .shared
            .gate
            .needle
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(needle.as_bytes().to_vec());
    }

    /// Whether a request tripped the gate.
    pub fn is_down(&self) -> bool {
        self.shared.gate.down.load(Ordering::SeqCst)
    }
}

fn serve(client: TcpStream, upstream: &str, shared: &Arc<Shared>) {
    if shared.gate.down.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if shared.stall.load(Ordering::SeqCst) {
        // Keep the socket open and silent while stalled (the client sees a hang, not a
        // refusal), then let it go.
        while shared.stall.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return; // dropping `client` closes it: the client sees the origin as down
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let sh = shared.clone();
    std::thread::spawn(move || pipe(c2, s2, &sh, true));
    pipe(server, client, shared, false);
}

/// Copies `from` → `to`; while stalled, holds whatever arrives. `requests` (client → server):
/// bytes naming the armed gate's needle trip it; once it is down the connection is cut. The
/// other direction is counted.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared, requests: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what came before, so a needle split between two reads is still seen.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while shared.stall.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let needle = if requests {
            shared
                .gate
                .needle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        };
        if let Some(needle) = needle {
            carry.extend_from_slice(&buf[..n]);
            if carry.windows(needle.len()).any(|w| w == needle.as_slice()) {
                shared.gate.down.store(true, Ordering::SeqCst);
            }
            let keep = carry.len().saturating_sub(needle.len());
            carry.drain(..keep);
        }
        if shared.gate.down.load(Ordering::SeqCst) {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if !requests {
            shared.down_bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
