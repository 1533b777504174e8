//! Free TCP ports on loopback.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// A free port on 127.0.0.1. Picked at random below the kernel's ephemeral range (where
/// outgoing connections take their ports) and checked bindable, and never handed out twice by
/// one process, so tests running in parallel and the connections they make rarely collide
/// with it (a port from `bind(:0)` is often taken again by the next outgoing connection).
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Default::default);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port: u16 = rng.random_range(20_000..32_000);
        // A poisoned lock only means another test panicked while holding it; the set is
        // still a valid set of ports.
        let mut taken = taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    // Fall back to the kernel's choice.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let unique: HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).expect("a free port binds");
        }
    }
}
