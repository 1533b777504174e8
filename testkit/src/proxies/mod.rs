//! Proxies a test puts between a client and a server (a registry, a peer's piece server):
//!
//! - [`CountingProxy`]: plain TCP; counts the bytes the server sends back (the origin's
//!   egress), can stall every connection or take the server "down" at the first request
//!   naming a given string.
//! - [`HttpLog`]: HTTP/1.1-aware; logs every exchange (method, target, `Range`, status,
//!   bytes) so a test can see which ranges a client asked for.
//! - [`FaultProxy`]: HTTP/1.1-aware; answers 503, resets, cuts bodies short, stalls, slows to
//!   a rate or corrupts bytes, on a chosen share of requests or on a schedule.
//!
//! All three are thread-based (usable from plain and async tests alike) and stop accepting
//! when dropped.

mod counting;
mod fault;
mod http;
mod http_log;

pub use counting::CountingProxy;
pub use fault::{Fault, FaultPlan, FaultProxy, Trigger};
pub use http_log::{Exchange, HttpLog};

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A loopback listener whose accept loop runs `serve` on a thread per connection until the
/// returned [`Stop`] is dropped; `serve` gets the flag that says so (connections it holds
/// open watch it).
fn listen(serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> (String, Stop) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy on 127.0.0.1");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (stopped, serve) = (stop.clone(), Arc::new(serve));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            if stopped.load(Ordering::Relaxed) {
                break;
            }
            let Ok(client) = client else { continue };
            let (serve, stopped) = (serve.clone(), stopped.clone());
            std::thread::spawn(move || serve(client, &stopped));
        }
    });
    (
        addr.clone(),
        Stop {
            addr,
            flag: stop.clone(),
        },
    )
}

/// Ends an accept loop when dropped (connections already open end with their sockets).
struct Stop {
    addr: String,
    flag: Arc<AtomicBool>,
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// The port of `127.0.0.1:PORT`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a listener address ends with its port")
}
