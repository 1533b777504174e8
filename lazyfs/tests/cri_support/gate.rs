//! A TCP proxy in front of the registry that can take it "down" at an exact moment: once
//! armed with a string (a blob's digest), the first request naming it trips the gate, and
//! from then on every connection, open or new, is cut before anything more is forwarded.
//! containerd then gets an image's manifest and config while the lazy mount, asking for the
//! index blob right after, finds the registry gone.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct GateProxy {
    pub addr: String,
    down: Arc<AtomicBool>,
    needle: Arc<Mutex<Option<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl GateProxy {
    pub fn start(upstream: &str) -> GateProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(false));
        let needle: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (down2, needle2, stop2, upstream) = (
            down.clone(),
            needle.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                if down2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (d, n) = (down2.clone(), needle2.clone());
                std::thread::spawn(move || pipe(c2, s2, d, Some(n)));
                let d = down2.clone();
                std::thread::spawn(move || pipe(server, client, d, None));
            }
        });
        GateProxy {
            addr,
            down,
            needle,
            stop,
        }
    }

    /// From now on, the first request naming `needle` takes the registry down.
    pub fn arm(&self, needle: &str) {
        *self.needle.lock().unwrap() = Some(needle.as_bytes().to_vec());
    }

    /// Whether a request tripped the gate.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

impl Drop for GateProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` → `to` until either closes or the gate is down; `needle` (client → server
/// only) trips the gate when the bytes sent contain it.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    down: Arc<AtomicBool>,
    needle: Option<Arc<Mutex<Option<Vec<u8>>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what came before, so a needle split between two reads is still seen.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(needle) = needle.as_ref().and_then(|n| n.lock().unwrap().clone()) {
            carry.extend_from_slice(&buf[..n]);
            if carry.windows(needle.len()).any(|w| w == needle.as_slice()) {
                down.store(true, Ordering::SeqCst);
            }
            let keep = carry.len().saturating_sub(needle.len());
            carry.drain(..keep);
        }
        if down.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
